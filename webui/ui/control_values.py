"""UI values <-> request fields, as plain data (no gradio): the part of the controls that tests call directly.

A "values" dict is keyed by request field names (``prompt``, ``sampler_name``, ``n_iter`` ...) and
holds what the components show: numbers as sliders give them, dropdown labels ("Use same sampler",
"None", "Only masked" ...). ``request_from_values`` turns it into a ``GenerationRequest``;
``values_from_infotext`` reads an A1111 infotext into the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webui.generation.infotext_map import (
    INPAINT_AREAS,
    MASK_MODES,
    USE_SAME_SAMPLER,
    USE_SAME_SCHEDULER,
    request_fields_from_infotext,
)
from webui.generation.requests import (
    MASKED_CONTENT,
    REQUEST_FIELDS,
    RESIZE_MODES,
    GenerationRequest,
    RequestError,
)

NO_REFINER = "None"


@dataclass(frozen=True)
class NumberSpec:
    label: str
    minimum: float
    maximum: float
    step: float
    default: float


# Sliders: label, range, step and default (A1111's labels and ranges).
NUMBERS: Mapping[str, NumberSpec] = {
    "steps": NumberSpec("Sampling steps", 1, 150, 1, 20),
    "width": NumberSpec("Width", 64, 2048, 8, 512),
    "height": NumberSpec("Height", 64, 2048, 8, 512),
    "cfg_scale": NumberSpec("CFG Scale", 1, 30, 0.5, 7.0),
    "n_iter": NumberSpec("Batch count", 1, 100, 1, 1),
    "batch_size": NumberSpec("Batch size", 1, 8, 1, 1),
    "clip_skip": NumberSpec("Clip skip", 1, 12, 1, 1),
    "denoising_strength": NumberSpec("Denoising strength", 0.01, 1, 0.01, 0.75),
    "subseed_strength": NumberSpec("Variation strength", 0, 1, 0.01, 0),
    "hr_scale": NumberSpec("Upscale by", 1, 4, 0.05, 2),
    "hr_second_pass_steps": NumberSpec("Hires steps (0 = same as sampling steps)", 0, 150, 1, 0),
    "hr_resize_x": NumberSpec("Resize width to", 0, 4096, 8, 0),
    "hr_resize_y": NumberSpec("Resize height to", 0, 4096, 8, 0),
    "refiner_switch_at": NumberSpec("Switch at", 0.01, 0.99, 0.01, 0.8),
    "shift": NumberSpec("Shift (0 = the model's own)", 0, 12, 0.1, 0),
    "mask_blur": NumberSpec("Mask blur", 0, 64, 1, 4),
    "inpaint_full_res_padding": NumberSpec("Only masked padding, pixels", 0, 256, 4, 32),
}
INT_FIELDS = frozenset(
    ("steps", "width", "height", "n_iter", "batch_size", "clip_skip", "seed", "subseed", "hr_second_pass_steps")
    + ("hr_resize_x", "hr_resize_y", "mask_blur", "inpaint_full_res_padding")
)
FLOAT_FIELDS = frozenset(
    ("cfg_scale", "denoising_strength", "subseed_strength", "hr_scale", "refiner_switch_at", "shift")
)
# Dropdown/radio label lists for fields the request keeps as numbers or booleans.
MASK_MODE_LABELS = tuple(MASK_MODES)
INPAINT_AREA_LABELS = tuple(INPAINT_AREAS)
LABEL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "resize_mode": RESIZE_MODES,
    "inpainting_fill": MASKED_CONTENT,
    "inpainting_mask_invert": MASK_MODE_LABELS,
}
# Words for the fields a message can name (RequestError.field -> what the page calls it).
FIELD_LABELS: Mapping[str, str] = {
    **{name: spec.label for name, spec in NUMBERS.items()},
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "sampler_name": "Sampling method",
    "scheduler": "Schedule type",
    "seed": "Seed",
    "subseed": "Variation seed",
    "hr_sampler_name": "Hires sampling method",
    "hr_scheduler": "Hires schedule type",
    "hr_upscaler": "Upscaler",
    "enable_hr": "Hires. fix",
    "refiner_checkpoint": "Refiner checkpoint",
    "sd_model_checkpoint": "Stable Diffusion checkpoint",
    "sd_vae": "SD VAE",
    "init_image": "Image",
    "mask": "Mask",
    "resize_mode": "Resize mode",
    "inpainting_fill": "Masked content",
    "inpainting_mask_invert": "Mask mode",
    "inpaint_full_res": "Inpaint area",
    "use_t5": "Use T5",
    "rng": "Random number source",
    "alwayson_scripts": "ControlNet",  # the one always-on script the page sends
}


def field_label(name: str) -> str:
    return FIELD_LABELS.get(name, name.replace("_", " ").capitalize())


def error_text(exc: RequestError) -> str:
    """``**Sampling steps:** 0 is ...``: the control's label, then what to do."""
    return f"**{field_label(exc.field)}:** {exc.message}"


def _number(name: str, value: Any) -> int | float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RequestError(name, "is empty; enter a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(name, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise RequestError(name, f"{value!r} is not a number")
    if name in INT_FIELDS:
        if not number.is_integer():
            raise RequestError(name, f"{value} is not a whole number")
        return int(number)
    return number


def _label_index(name: str, value: Any, labels: tuple[str, ...]) -> int:
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    if value not in labels:
        raise RequestError(name, f"{value!r} is not one of: {', '.join(labels)}")
    return labels.index(value)


def _convert(name: str, value: Any) -> Any:
    if name in INT_FIELDS or name in FLOAT_FIELDS:
        return _number(name, value)
    if name in LABEL_FIELDS:
        return _label_index(name, value, LABEL_FIELDS[name])
    if name == "inpaint_full_res":
        return INPAINT_AREAS.get(value, bool(value)) if isinstance(value, str) else bool(value)
    if name == "hr_sampler_name":
        return "" if value in (None, USE_SAME_SAMPLER) else str(value)
    if name == "hr_scheduler":
        return "" if value in (None, USE_SAME_SCHEDULER) else str(value)
    if name == "refiner_checkpoint":
        return "" if value in (None, NO_REFINER) else str(value)
    if name in ("sampler_name", "sd_model_checkpoint", "sd_vae"):
        return "" if value is None else str(value)
    if name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        return "" if value is None else str(value)
    if name == "scheduler":
        return "Automatic" if not value else str(value)
    return value


def request_from_values(task: str, values: Mapping[str, Any]) -> GenerationRequest:
    """A ``GenerationRequest`` for ``task`` from component values keyed by request field names.

    Keys that are not request fields (a size preset, an editor's raw value) are ignored. A value
    that cannot be converted raises ``RequestError`` naming the field. Not validated against limits
    here (``validate_request`` and the engine do that).
    """
    fields = {name: _convert(name, value) for name, value in values.items() if name in REQUEST_FIELDS}
    fields.pop("task", None)
    return GenerationRequest(task=task, **fields)


def values_from_infotext(text: str) -> dict[str, Any]:
    """Component values (keyed by request field) from an A1111 infotext; {} when it has no parameters.

    Only keys the infotext states or whose A1111 default applies are returned (``enable_hr`` is
    always there: pasting an infotext without hires keys turns hires fix off, as in A1111).
    """
    from webui.outputs.infotext import parse_infotext, split_infotext

    if not text or not text.strip():
        return {}
    fields = request_fields_from_infotext(parse_infotext(text))
    _, _, params = split_infotext(text)
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "hr_sampler_name":
            value = value or USE_SAME_SAMPLER
        elif name == "hr_scheduler":
            value = value or USE_SAME_SCHEDULER
        elif name == "refiner_checkpoint":
            value = value or NO_REFINER
        elif name in LABEL_FIELDS:
            value = LABEL_FIELDS[name][value]
        elif name == "inpaint_full_res":
            value = INPAINT_AREA_LABELS[1] if value else INPAINT_AREA_LABELS[0]
        values[name] = value
    if not params:  # a bare prompt: only the prompt text is meant
        return {k: v for k, v in values.items() if k in ("prompt", "negative_prompt")}
    return values


def has_parameters(text: str) -> bool:
    """True when ``text`` ends with an A1111 parameter line (``Steps: 20, Sampler: ...``)."""
    from webui.outputs.infotext import split_infotext

    return bool(text and text.strip() and split_infotext(text)[2])


def clamp(name: str, value: Any) -> Any:
    """A pasted number kept inside its slider's range (a slider refuses values outside it)."""
    spec = NUMBERS.get(name)
    if spec is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    return min(max(value, spec.minimum), spec.maximum)


def token_counter_text(used: int, limit: int) -> str:
    """A1111's counter: ``12/75``, the limit growing by 75 per chunk."""
    return f"{used}/{limit}"
