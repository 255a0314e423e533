"""The ControlNet section of the txt2img, img2img and inpaint tabs (A1111 sd-webui-controlnet's accordion).

``build_section(backend, task, fields, extra)`` runs inside the controls' left column (``build_controls``
calls it through its ``sections``) and lays out the ``control_net_unit_count`` setting's units (A1111: 3),
each in its own tab:

    [control image] [processed image]     (mask, optional, folded away)
    [x] Enable  [x] Pixel Perfect
    Preprocessor [v]  [Run preprocessor]   Model [v] [refresh]
    Control Weight, Starting Control Step, Ending Control Step
    Preprocessor Resolution, Threshold A, Threshold B (labels and ranges follow the preprocessor)
    Control Mode (radio), Resize Mode (radio)

The unit settings join the controls' ``fields`` under ``controlnet_<i>_<field>`` (so "Send to" and the ↙
paste restore them from the infotext's ``ControlNet <i>`` keys); the two images join ``extra``.
``with_units(to_request)`` wraps a tab's request builder: the enabled units go into the request as
``alwayson_scripts["controlnet"]`` (checked units as plain dicts, PIL images inside), which the built-in
extension checks again and applies. The preview button runs the preprocessor as ``POST /controlnet/detect`` does
(``webui.control.api.detect_images``); model lists come from the backend (``models("control")``).
Uploads are images only: Gradio's uploads pass the app's upload guard.

Element ids, ``<t>`` the task and ``<i>`` the unit: ``<t>_controlnet`` (the accordion),
``<t>_controlnet_<i>_<field>`` for each field in ``UNIT_FIELDS``, ``<t>_controlnet_<i>_image``,
``<t>_controlnet_<i>_mask``, ``<t>_controlnet_<i>_processed``, ``<t>_controlnet_<i>_preview``,
``<t>_controlnet_<i>_refresh``, ``<t>_controlnet_<i>_message``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.control.units import CONTROL_MODES, INFOTEXT_FIELDS, RESIZE_MODES

log = logging.getLogger(__name__)

UNIT_COUNT = 3  # A1111's default of ``control_net_unit_count``
MAX_UNITS = 10
NO_MODEL = "None"
SCRIPT = "controlnet"

# The unit settings the page shows (the ControlUnit field names): enabled, then A1111's infotext order.
UNIT_FIELDS = ("enabled", *INFOTEXT_FIELDS)
IMAGE_FIELDS = ("image", "mask")
DEFAULTS: Mapping[str, Any] = {
    "enabled": False,
    "module": "none",
    "model": NO_MODEL,
    "weight": 1.0,
    "resize_mode": "Crop and Resize",
    "processor_res": 512,
    "threshold_a": 100,
    "threshold_b": 200,
    "guidance_start": 0.0,
    "guidance_end": 1.0,
    "pixel_perfect": False,
    "control_mode": "Balanced",
}
RES_SLIDER = {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
THRESHOLD_SLIDER = {"name": "Threshold", "value": 64, "min": 0, "max": 256, "step": 1}


def key(index: int, name: str) -> str:
    return f"{SCRIPT}_{index}_{name}"


def elem(task: str, index: int, name: str) -> str:
    return f"{task}_{key(index, name)}"


# --- plain data: values <-> units -------------------------------------------------------------------


def unit_values(values: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The unit ``index``'s settings and images from the controls' values (missing ones: the defaults)."""
    out = {name: values.get(key(index, name), DEFAULTS[name]) for name in UNIT_FIELDS}
    for name in IMAGE_FIELDS:
        out[name] = values.get(key(index, name))
    return out


def unit_record(values: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The unit ``index`` checked as the API's are (``units.parse_unit``), as plain data (``as_args``: field ->
    value, PIL images): what the request carries to the backend. A unit it refuses is a ``RequestError`` on
    ``alwayson_scripts``, shown next to Generate before anything is queued."""
    from webui.control.units import parse_unit
    from webui.generation.requests import RequestError
    from webui.hooks import JobRefused

    sent = {name: value for name, value in unit_values(values, index).items() if value is not None}
    sent["enabled"] = True
    try:
        return parse_unit(sent, index).as_args()
    except JobRefused as exc:
        raise RequestError("alwayson_scripts", str(exc)) from None


def _unit_count(values: Mapping[str, Any]) -> int:
    """1 + the highest unit index with an ``enabled`` key in ``values`` (0 when there is none)."""
    import re

    found = [re.fullmatch(rf"{SCRIPT}_(\d+)_enabled", str(name)) for name in values]
    return max((int(m.group(1)) + 1 for m in found if m), default=0)


def units_from_values(values: Mapping[str, Any], count: int | None = None) -> list[Any]:
    """The enabled units (plain dicts of ``ControlUnit``'s fields), in unit order; [] when none is enabled.
    ``count``: how many units the page has (default: as many as ``values`` has ``controlnet_<i>_enabled`` keys)."""
    count = _unit_count(values) if count is None else count
    return [unit_record(values, i) for i in range(count) if values.get(key(i, "enabled"))]


def with_units(to_request: Callable[[Mapping[str, Any]], Any], count: int | None = None) -> Callable[..., Any]:
    """``to_request`` that also puts the enabled units into ``alwayson_scripts["controlnet"]``."""

    def build(values: Mapping[str, Any]) -> Any:
        request = to_request(values)
        units = units_from_values(values, count)
        if not units:
            return request
        scripts = dict(getattr(request, "alwayson_scripts", None) or {})
        scripts[SCRIPT] = units
        return request.replace(alwayson_scripts=scripts)

    return build


# --- plain data: infotext -> values ---------------------------------------------------------------


def _fit_model(model: str, titles: list[str]) -> str | None:
    """The installed title for an infotext's ``Model: name [hash]`` (exact, then by name), or None."""
    if not model or model == NO_MODEL:
        return NO_MODEL
    if model in titles:
        return model
    stem = model.rsplit(" [", 1)[0].strip().lower()
    for title in titles:
        if title.rsplit(" [", 1)[0].strip().lower() == stem:
            return title
    return None


def _units_from_fields(fields: Mapping[str, Any]) -> list[dict[str, Any]]:
    from webui.control.units import units_from_infotext

    return list(units_from_infotext(fields))


def values_from_infotext(
    text: str, model_titles: list[str], module_names: list[str], count: int = UNIT_COUNT
) -> tuple[dict[str, Any], list[str]]:
    """(unit values keyed ``controlnet_<i>_<field>``, notes) from an infotext's ``ControlNet <i>`` keys.

    An infotext with parameters but no ControlNet key turns every unit off (the image was made without
    one). A model or preprocessor the page cannot offer is left as it is and named in the notes.
    """
    from webui.outputs.infotext import split_infotext

    if not text or not text.strip():
        return {}, []
    _, _, params = split_infotext(text)
    if not params:
        return {}, []
    units = _units_from_fields(params)
    values: dict[str, Any] = {key(i, "enabled"): False for i in range(count)}
    notes: list[str] = []
    if len(units) > count:
        notes.append(f"The infotext has {len(units)} ControlNet units; the page shows {count}, the rest were left out.")
    for i, unit in enumerate(units[:count]):
        values[key(i, "enabled")] = bool(unit.get("enabled", True))
        for name in UNIT_FIELDS:
            if name == "enabled" or name not in unit:
                continue
            value = unit[name]
            if name == "model":
                fitted = _fit_model(str(value), model_titles)
                if fitted is None:
                    notes.append(f"ControlNet {i}: the model {value} is not installed; pick one in unit {i}.")
                    continue
                value = fitted
            elif name == "module":
                if str(value) not in module_names:
                    notes.append(f"ControlNet {i}: the preprocessor {value} is not available here.")
                    continue
            elif name == "control_mode" and isinstance(value, int) and 0 <= value < len(CONTROL_MODES):
                value = CONTROL_MODES[value]
            elif name == "resize_mode" and isinstance(value, int) and 0 <= value < len(RESIZE_MODES):
                value = RESIZE_MODES[value]
            values[key(i, name)] = value
    return values, notes


# --- plain data: sliders per preprocessor -----------------------------------------------------------


def module_sliders(module: str) -> tuple[dict | None, dict | None, dict | None]:
    """(resolution, threshold A, threshold B) slider specs of a preprocessor; None where it has none."""
    from webui.control.api import module_info

    sliders = list(module_info(module).get("sliders") or [])
    res = None
    if sliders and "resolution" in str(sliders[0].get("name", "")).lower():
        res = sliders.pop(0)
    a = sliders[0] if len(sliders) > 0 else None
    b = sliders[1] if len(sliders) > 1 else None
    return res, a, b


# --- the section ----------------------------------------------------------------------------------


@dataclass
class ControlSection:
    """The built section: its components by key, and the infotext reader the paste flow calls."""

    task: str
    backend: Any
    count: int
    components: dict[str, Any] = field(default_factory=dict)
    cache: Any = None  # the depth models the preview loaded (a ControlCache)

    def model_titles(self) -> list[str]:
        from webui.control.api import model_list

        try:
            return model_list(self.backend)
        except Exception:
            log.exception("listing the control models failed")
            return []

    def read_infotext(self, text: str) -> tuple[dict[str, Any], list[str]]:
        """Values for the paste flow: a pasted preprocessor brings its sliders (label, range, shown)."""
        from webui.control.api import preprocessor_module

        values, notes = values_from_infotext(
            text, self.model_titles(), list(preprocessor_module().module_names()), self.count
        )
        for i in range(self.count):
            module = values.get(key(i, "module"))
            if module is None:
                continue
            specs = dict(zip(("processor_res", "threshold_a", "threshold_b"), module_sliders(module)))
            fallbacks = {"processor_res": RES_SLIDER, "threshold_a": THRESHOLD_SLIDER, "threshold_b": THRESHOLD_SLIDER}
            for name, spec in specs.items():
                update = _slider_update(spec, fallbacks[name])
                pasted = values.get(key(i, name))
                if spec is not None and isinstance(pasted, (int, float)) and not isinstance(pasted, bool):
                    low, high = float(spec.get("min", pasted)), float(spec.get("max", pasted))
                    update["value"] = pasted if low <= pasted <= high else spec.get("value", pasted)
                values[key(i, name)] = update
        return values, notes


def _modules() -> list[tuple[str, str]]:
    """(label, name) choices of the preprocessor dropdown."""
    from webui.control.api import module_label, preprocessor_module

    return [(module_label(name), name) for name in preprocessor_module().module_names()]


def _pixel_perfect(image: Any, width: int, height: int, resize_mode: str) -> int:
    from webui.control.api import preprocessor_module

    return int(preprocessor_module().pixel_perfect_resolution(image, width, height, resize_mode or "Crop and Resize"))


def _slider_update(spec: dict | None, fallback: dict) -> Any:
    import gradio as gr

    if spec is None:
        return gr.update(visible=False)
    return gr.update(
        visible=True,
        label=str(spec.get("name", fallback["name"])),
        minimum=float(spec.get("min", fallback["min"])),
        maximum=float(spec.get("max", fallback["max"])),
        step=float(spec.get("step", fallback["step"])),
        value=spec.get("value", fallback["value"]),
    )


def _build_unit(section: ControlSection, index: int, fields: dict[str, Any], extra: dict[str, Any]) -> None:
    import gradio as gr

    from webui.control.api import DetectError, detect_images, model_list

    task, backend = section.task, section.backend
    c: dict[str, Any] = {}
    with gr.Row():
        c["image"] = gr.Image(
            label="Control image",
            type="pil",
            image_mode="RGB",
            sources=["upload", "clipboard"],
            height=240,
            elem_id=elem(task, index, "image"),
        )
        processed = gr.Image(
            label="Preprocessor preview",
            type="pil",
            interactive=False,
            height=240,
            elem_id=elem(task, index, "processed"),
        )
    with gr.Accordion("Mask (optional; white = the area the unit acts on)", open=False):
        c["mask"] = gr.Image(
            label="Mask",
            type="pil",
            image_mode="L",
            sources=["upload", "clipboard"],
            height=200,
            elem_id=elem(task, index, "mask"),
        )
    with gr.Row():
        c["enabled"] = gr.Checkbox(label="Enable", value=DEFAULTS["enabled"], elem_id=elem(task, index, "enabled"))
        c["pixel_perfect"] = gr.Checkbox(
            label="Pixel Perfect", value=DEFAULTS["pixel_perfect"], elem_id=elem(task, index, "pixel_perfect")
        )
    with gr.Row():
        c["module"] = gr.Dropdown(
            label="Preprocessor", choices=_modules(), value="none", elem_id=elem(task, index, "module"), scale=3
        )
        preview = gr.Button("Run preprocessor", size="sm", elem_id=elem(task, index, "preview"), scale=1)
        try:
            titles = model_list(backend)
        except Exception:
            log.exception("listing the control models failed")
            titles = []
        c["model"] = gr.Dropdown(
            label="Model",
            choices=[NO_MODEL, *titles],
            value=NO_MODEL,
            allow_custom_value=True,  # a pasted model that is not installed stays visible; the job says why
            elem_id=elem(task, index, "model"),
            scale=3,
        )
        refresh = gr.Button("🔄", size="sm", elem_id=elem(task, index, "refresh"), scale=0, min_width=40)
    with gr.Row():
        c["weight"] = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight", elem_id=elem(task, index, "weight"))
        c["guidance_start"] = gr.Slider(
            0, 1, value=0.0, step=0.01, label="Starting Control Step", elem_id=elem(task, index, "guidance_start")
        )
        c["guidance_end"] = gr.Slider(
            0, 1, value=1.0, step=0.01, label="Ending Control Step", elem_id=elem(task, index, "guidance_end")
        )
    res_spec, a_spec, b_spec = module_sliders("none")
    with gr.Row():
        c["processor_res"] = gr.Slider(
            64,
            2048,
            value=512,
            step=8,
            label="Preprocessor Resolution",
            visible=res_spec is not None,
            elem_id=elem(task, index, "processor_res"),
        )
        c["threshold_a"] = gr.Slider(
            1,
            255,
            value=DEFAULTS["threshold_a"],
            step=1,
            label="Threshold A",
            visible=a_spec is not None,
            elem_id=elem(task, index, "threshold_a"),
        )
        c["threshold_b"] = gr.Slider(
            1,
            255,
            value=DEFAULTS["threshold_b"],
            step=1,
            label="Threshold B",
            visible=b_spec is not None,
            elem_id=elem(task, index, "threshold_b"),
        )
    c["control_mode"] = gr.Radio(
        label="Control Mode", choices=list(CONTROL_MODES), value="Balanced", elem_id=elem(task, index, "control_mode")
    )
    c["resize_mode"] = gr.Radio(
        label="Resize Mode",
        choices=list(RESIZE_MODES),
        value="Crop and Resize",
        elem_id=elem(task, index, "resize_mode"),
    )
    message = gr.Markdown("", elem_id=elem(task, index, "message"))

    size_inputs = [fields[name] if name in fields else gr.State(None) for name in ("width", "height")]
    for name in UNIT_FIELDS:
        fields[key(index, name)] = c[name]
    for name in IMAGE_FIELDS:
        extra[key(index, name)] = c[name]
    section.components.update({key(index, name): comp for name, comp in c.items()})
    section.components[key(index, "processed")] = processed

    def sliders(module: str) -> tuple[Any, Any, Any]:
        res, a, b = module_sliders(module or "none")
        return (
            _slider_update(res, RES_SLIDER),
            _slider_update(a, THRESHOLD_SLIDER),
            _slider_update(b, THRESHOLD_SLIDER),
        )

    # ``input``: only when the user picks one; a paste sets the module and its thresholds in one response.
    c["module"].input(
        sliders,
        inputs=[c["module"]],
        outputs=[c["processor_res"], c["threshold_a"], c["threshold_b"]],
        queue=False,
        show_progress="hidden",
    )

    def run(image: Any, mask: Any, module: str, res: float, a: float, b: float, *size: Any) -> tuple[Any, str]:
        if image is None:
            return gr.update(), "Upload a control image first, then run the preprocessor."
        pixel_perfect, resize_mode, width, height = size
        if pixel_perfect and width and height:  # the resolution that matches the pass's size (A1111)
            res = _pixel_perfect(image, int(width), int(height), resize_mode)
        try:
            masks = [mask] if mask else None
            out = detect_images(backend, module or "none", [image], res, a, b, masks=masks, cache=section.cache)
        except DetectError as exc:
            return gr.update(), f"**Preprocessor:** {exc.message}"
        return out[0], ""

    preview.click(
        run,
        inputs=[
            c["image"],
            c["mask"],
            c["module"],
            c["processor_res"],
            c["threshold_a"],
            c["threshold_b"],
            c["pixel_perfect"],
            c["resize_mode"],
            *size_inputs,
        ],
        outputs=[processed, message],
        concurrency_limit=2,
        show_progress="minimal",
    )

    def refreshed(current: str) -> Any:
        titles = model_list(backend, update=True)
        return gr.update(choices=[NO_MODEL, *titles], value=current if current in titles else NO_MODEL)

    refresh.click(refreshed, inputs=[c["model"]], outputs=[c["model"]], show_progress="hidden")


def unit_count(backend: Any) -> int:
    """The ``control_net_unit_count`` setting (A1111's; 1 to 10, default 3): read when the page is built."""
    try:
        value = int(backend.setting_values().get("control_net_unit_count", UNIT_COUNT))
    except Exception:  # noqa: BLE001 - a backend without it: A1111's default
        return UNIT_COUNT
    return min(max(value, 1), MAX_UNITS)


def section_for(backend: Any, count: int | None = None) -> Callable[[str, dict, dict], Any]:
    """The ``sections`` entry for ``build_controls``: the ControlNet section, or a line saying why it is
    missing (the rest of the tab still works). ``count``: default the ``control_net_unit_count`` setting."""

    def section(task: str, fields: dict[str, Any], extra: dict[str, Any]) -> ControlSection | None:
        import gradio as gr

        nonlocal count
        count = unit_count(backend) if count is None else count
        try:
            return build_section(backend, task, fields, extra, count)
        except Exception as exc:
            log.exception("the ControlNet section of %s could not be built", task)
            for i in range(count):  # what a half-built section added would break Generate
                for name in (*UNIT_FIELDS, *IMAGE_FIELDS):
                    fields.pop(key(i, name), None)
                    extra.pop(key(i, name), None)
            gr.Markdown(f"**ControlNet is not available:** {type(exc).__name__}: {exc}")
            return None

    return section


def build_section(
    backend: Any, task: str, fields: dict[str, Any], extra: dict[str, Any], count: int = UNIT_COUNT
) -> ControlSection:
    """The accordion with ``count`` units, inside the controls' left column; adds its components to
    ``fields`` (unit settings) and ``extra`` (the images)."""
    import gradio as gr

    from webui.control.depth import CACHE_ENTRIES
    from webui.control.loading import ControlCache

    section = ControlSection(task, backend, count, cache=ControlCache(CACHE_ENTRIES))
    with gr.Accordion("ControlNet", open=False, elem_id=f"{task}_{SCRIPT}"), gr.Tabs():
        for i in range(count):
            with gr.Tab(f"ControlNet Unit {i}", elem_id=f"{task}_{SCRIPT}_unit_{i}"):
                _build_unit(section, i, fields, extra)
    return section
