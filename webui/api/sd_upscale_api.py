"""A1111's ``script_name: "sd upscale"`` on ``/sdapi/v1/img2img``: its ``script_args`` as request fields.

A1111's script takes ``script_args = [info, overlap, upscaler_index, scale_factor]`` (the first is its
page's help text, ignored); ``upscaler_index`` indexes ``GET /sdapi/v1/upscalers``, resolved when the
request is checked. Defaults for args left out: overlap 64, upscaler 0 ("None"), scale factor 2.
Pure python: no torch.
"""

from __future__ import annotations

from typing import Any

from webui.generation.requests import RequestError, SdUpscale

SCRIPT_NAME = "sd upscale"


def handles(script_name: Any) -> bool:
    return isinstance(script_name, str) and script_name.strip().lower() == SCRIPT_NAME


def fields(body: Any, task: str) -> dict[str, Any]:
    """``{"sd_upscale": SdUpscale(...)}`` for an "sd upscale" script, else ``{}``; ``RequestError`` for bad args."""
    if not handles(getattr(body, "script_name", None)):
        return {}
    if task != "img2img":
        raise RequestError("script_name", "the SD upscale script runs on img2img only; POST to /sdapi/v1/img2img")
    args = list(getattr(body, "script_args", None) or [])
    overlap, index, scale = (args[1:4] + [64, 0, 2.0][len(args[1:4]) :])[:3]
    try:
        overlap, index, scale = int(overlap), int(index), float(scale)
    except (TypeError, ValueError):
        raise RequestError(
            "script_args",
            "SD upscale takes [_, overlap, upscaler_index, scale_factor]: whole numbers for overlap and the index, "
            f"a number for the scale; got {args!r}",
        ) from None
    return {"sd_upscale": SdUpscale(upscaler_index=index, scale_factor=scale, overlap=overlap)}
