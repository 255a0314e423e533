"""The page's "Script" dropdown with "X/Y/Z plot": three axes (type + values, a dropdown for named choices)
and A1111's options, inside the controls' left column of txt2img and img2img.

``xyz_section(backend)`` is a ``build_controls`` section: it adds its components to ``extra`` under
``xyz_*`` keys (a paste leaves them alone). ``with_xyz(to_request)`` turns the tab's request into a
``GridRequest`` when the script is chosen; the grid then runs as one job, like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from webui.generation.requests import HR_UPSCALERS
from webui.xyz.axes import AxisType, supported
from webui.xyz.grid import SCRIPT_TITLE, from_script_args

log = logging.getLogger(__name__)

NONE = "None"
DEFAULT_TYPES = ("Seed", "Nothing", "Nothing")


class XyzSection:
    """What ``Controls.sections`` expects of a section: its infotext keys (none to paste)."""

    def read_infotext(self, text: str) -> tuple[dict[str, Any], list[str]]:
        return {}, []


def choices_for(backend: Any, kind: str) -> list[str]:
    """The dropdown's names for an axis with choices; [] when the backend cannot say."""
    try:
        if kind == "sampler":
            return [s.name for s in backend.samplers(None)]
        if kind == "schedule":
            return [s.label for s in backend.schedules()]
        if kind == "checkpoint":
            return [m.name for m in backend.models("checkpoint")]
        if kind == "vae":
            return ["Automatic", "None", *[m.name for m in backend.models("vae")]]
        if kind == "upscaler":
            return list(HR_UPSCALERS)
    except Exception:  # a list the page cannot fill must not break the tab
        log.debug("no %s choices for the X/Y/Z plot", kind, exc_info=True)
    return []


def _axis_row(backend: Any, task: str, letter: str, axes: list[AxisType], default: str, extra: dict) -> None:
    import gradio as gr

    names = [a.name for a in axes]
    by_name = {a.name: a for a in axes}
    with gr.Row():
        kind = gr.Dropdown(names, value=default, label=f"{letter.upper()} type", elem_id=f"{task}_xyz_{letter}_type")
        text = gr.Textbox(label=f"{letter.upper()} values", elem_id=f"{task}_xyz_{letter}_values", lines=1)
        drop = gr.Dropdown([], value=[], multiselect=True, visible=False, label=f"{letter.upper()} values",
                           elem_id=f"{task}_xyz_{letter}_dropdown")  # fmt: skip

    def switch(name: str) -> tuple[Any, Any]:
        axis = by_name.get(name)
        if axis is None or not axis.choices:
            return gr.update(visible=True), gr.update(visible=False, value=[])
        return gr.update(visible=False), gr.update(visible=True, choices=choices_for(backend, axis.choices), value=[])

    kind.change(switch, inputs=[kind], outputs=[text, drop], queue=False, show_progress="hidden")
    extra[f"xyz_{letter}_type"], extra[f"xyz_{letter}_values"], extra[f"xyz_{letter}_dropdown"] = kind, text, drop


def xyz_section(backend: Any) -> Callable[[str, dict, dict], XyzSection | None]:
    """The ``sections`` entry for ``build_controls`` (txt2img and img2img)."""

    def section(task: str, fields: dict[str, Any], extra: dict[str, Any]) -> XyzSection | None:
        import gradio as gr

        if task not in ("txt2img", "img2img"):
            return None
        axes = supported(task)
        script = gr.Dropdown([NONE, SCRIPT_TITLE], value=NONE, label="Script", elem_id=f"{task}_script")
        with gr.Group(visible=False, elem_id=f"{task}_xyz") as group:
            for letter, default in zip("xyz", DEFAULT_TYPES):
                _axis_row(backend, task, letter, axes, default, extra)
            with gr.Row():
                legend = gr.Checkbox(True, label="Draw legend", elem_id=f"{task}_xyz_draw_legend")
                lone = gr.Checkbox(True, label="Include Sub Images", elem_id=f"{task}_xyz_include_lone_images")
                subs = gr.Checkbox(False, label="Include Sub Grids", elem_id=f"{task}_xyz_include_sub_grids")
                keep = gr.Checkbox(False, label="Keep -1 for seeds", elem_id=f"{task}_xyz_no_fixed_seeds")
            margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)", elem_id=f"{task}_xyz_margin_size")
        script.change(lambda s: gr.update(visible=s == SCRIPT_TITLE), inputs=[script], outputs=[group], queue=False)
        extra.update(xyz_script=script, xyz_draw_legend=legend, xyz_include_lone_images=lone,
                     xyz_include_sub_grids=subs, xyz_no_fixed_seeds=keep, xyz_margin_size=margin)  # fmt: skip
        return XyzSection()

    return section


def script_args_from_values(values: Mapping[str, Any]) -> list[Any]:
    """A1111's 18 positional arguments from the section's values (types by name)."""
    args: list[Any] = []
    for letter in "xyz":
        args += [values.get(f"xyz_{letter}_type") or "Nothing", values.get(f"xyz_{letter}_values") or "",
                 list(values.get(f"xyz_{letter}_dropdown") or [])]  # fmt: skip
    args += [values.get("xyz_draw_legend", True), values.get("xyz_include_lone_images", True),
             values.get("xyz_include_sub_grids", False), values.get("xyz_no_fixed_seeds", False),
             False, False, False, int(values.get("xyz_margin_size") or 0), False]  # fmt: skip
    return args


def with_xyz(to_request: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
    """``to_request`` that returns a grid over the tab's request when the Script dropdown says X/Y/Z plot."""

    def build(values: Mapping[str, Any]) -> Any:
        request = to_request(values)
        if values.get("xyz_script") != SCRIPT_TITLE:
            return request
        return from_script_args(request, script_args_from_values(values))

    return build
