"""The API side of the X/Y/Z plot: A1111's ``script_name``/``script_args``, ``GET /scripts`` and ``/script-info``."""

from __future__ import annotations

from typing import Any

from webui.generation.requests import GenerationRequest
from webui.xyz.axes import axis_list
from webui.xyz.grid import SCRIPT_NAME, GridRequest, from_script_args

ARG_NAMES = (
    "x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
    "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
    "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode",
)  # fmt: skip
ARG_DEFAULTS = (1, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False)


def is_xyz(script_name: str) -> bool:
    """A1111 matches script names in lower case; "x/y/z plot" (and its old "x/y plot" name with no Z)."""
    return str(script_name).strip().lower() in (SCRIPT_NAME, "xyz plot", "x/y plot")


def grid_from_api(request: GenerationRequest, script_args: Any) -> GridRequest:
    return from_script_args(request, script_args if script_args is not None else [])


def scripts() -> dict[str, list[str]]:
    """``GET /sdapi/v1/scripts``: the selectable scripts per tab (A1111 lists them in lower case)."""
    return {"txt2img": [SCRIPT_NAME], "img2img": [SCRIPT_NAME]}


def script_info() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/script-info``: each script's arguments, as A1111 describes them."""
    out = []
    for task in ("txt2img", "img2img"):
        names = [a.name for a in axis_list(task)]
        args = []
        for i, (name, default) in enumerate(zip(ARG_NAMES, ARG_DEFAULTS)):
            arg: dict[str, Any] = {"label": name, "value": default, "minimum": None, "maximum": None, "step": None}
            arg["choices"] = names if name.endswith("_type") else None
            args.append(arg)
        out.append({"name": SCRIPT_NAME, "is_alwayson": False, "is_img2img": task == "img2img", "args": args})
    return out
