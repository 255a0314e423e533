"""The img2img tab's "SD upscale" accordion: enable, upscaler, scale factor, tile overlap.

A ``section`` for ``build_controls`` (its components go into the controls' fields under ``KEYS``, which
are not request fields) and ``with_sd_upscale``, the request builder that puts the options on the
request when the box is ticked. A pasted infotext with A1111's ``SD upscale upscaler`` /
``SD upscale overlap`` keys ticks the box and fills them. The tile size is the tab's width x height.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webui.generation.requests import SdUpscale

log = logging.getLogger(__name__)

ENABLED, UPSCALER, SCALE, OVERLAP = (
    "sd_upscale_enabled",
    "sd_upscale_upscaler",
    "sd_upscale_scale",
    "sd_upscale_overlap",
)
KEYS = (ENABLED, UPSCALER, SCALE, OVERLAP)
DEFAULT_UPSCALER = "Lanczos"


@dataclass
class SdUpscaleSection:
    """The built accordion; ``read_infotext`` is what the paste flow calls."""

    def read_infotext(self, text: str) -> tuple[dict[str, Any], list[str]]:
        from webui.outputs.infotext import parse_infotext

        fields = parse_infotext(text or "") if text else {}
        if "SD upscale upscaler" not in fields and "SD upscale overlap" not in fields:
            return {ENABLED: False}, []
        values: dict[str, Any] = {ENABLED: True}
        if fields.get("SD upscale upscaler"):
            values[UPSCALER] = str(fields["SD upscale upscaler"])
        try:
            values[OVERLAP] = int(fields.get("SD upscale overlap", 64))
        except (TypeError, ValueError):
            pass
        return values, []


def upscaler_names(backend: Any) -> list[str]:
    try:
        return [u.name for u in backend.upscalers()]
    except Exception:  # the page still works: the resampling ones
        log.exception("listing the upscalers failed")
        return ["None", "Lanczos", "Nearest"]


def section_for(backend: Any) -> Callable[[str, dict, dict], Any]:
    """The ``sections`` entry for ``build_controls`` (img2img only)."""

    def section(task: str, fields: dict[str, Any], extra: dict[str, Any]) -> SdUpscaleSection | None:
        import gradio as gr

        if task != "img2img":
            return None
        names = upscaler_names(backend)
        with gr.Accordion("SD upscale", open=False, elem_id=f"{task}_sd_upscale"):
            gr.Markdown(
                "Upscales the image by the scale factor, then redraws it in tiles of Width x Height with this"
                " prompt, sampler and denoising strength (one job; seed + n for tile n)."
            )
            fields[ENABLED] = gr.Checkbox(label="Enable SD upscale", value=False, elem_id=f"{task}_sd_upscale_enabled")
            with gr.Row():
                fields[UPSCALER] = gr.Dropdown(
                    choices=names,
                    value=DEFAULT_UPSCALER if DEFAULT_UPSCALER in names else names[0],
                    label="Upscaler",
                    elem_id=f"{task}_sd_upscale_upscaler",
                )
                fields[SCALE] = gr.Slider(
                    1.0, 4.0, value=2.0, step=0.05, label="Scale factor", elem_id=f"{task}_sd_upscale_scale"
                )
                fields[OVERLAP] = gr.Slider(
                    0, 256, value=64, step=16, label="Tile overlap", elem_id=f"{task}_sd_upscale_overlap"
                )
        return SdUpscaleSection()

    return section


def options_from_values(values: Mapping[str, Any]) -> SdUpscale | None:
    """The options when the box is ticked, else None."""
    if not values.get(ENABLED):
        return None
    return SdUpscale(
        upscaler=str(values.get(UPSCALER) or "None"),
        scale_factor=float(values.get(SCALE) or 2.0),
        overlap=int(values.get(OVERLAP) or 0),
    )


def with_sd_upscale(to_request: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
    """``to_request`` that also puts the SD upscale options on the request when enabled."""

    def build(values: Mapping[str, Any]) -> Any:
        request = to_request(values)
        options = options_from_values(values)
        return request if options is None else request.replace(sd_upscale=options)

    return build
