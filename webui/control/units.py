"""ControlNet units: A1111 sd-webui-controlnet's unit fields, checked once, and their infotext.

A unit arrives as a dict in ``alwayson_scripts["controlnet"]`` (the API: A1111's field names and the
legacy aliases; the page sends the same), or as a ``ControlUnit`` already checked (the request is
checked at the API's answer and again at job start: ``parse_units`` returns a ``ControlUnit`` as is).

* ``parse_units(args, max_pixels)``: the units, images decoded with ``webui.security.images``; a bad
  unit raises ``JobRefused(message, field="alwayson_scripts")`` naming the unit and the field;
* ``unit_infotext(unit, model_label)``: ``Module: canny, Model: x [abcd1234], Weight: 1.0, ...`` (A1111's
  11 fields in its order);
* ``units_from_infotext(fields)``: ``ControlNet 0``.. (and the older formats) -> unit dicts, for PNG Info.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from webui.hooks import JobRefused

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
HR_OPTIONS = ("Both", "Low res only", "High res only")
# ControlNet-Union / ProMax control types (xinsir's index order = A1111's ControlNetUnionControlType)
UNION_CONTROL_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")
FIELD = "alwayson_scripts"

_RESIZE_ALIASES = {
    "just resize": "Just Resize",
    "just resize (latent upscale)": "Just Resize",
    "crop and resize": "Crop and Resize",
    "inner fit (scale to fit)": "Crop and Resize",
    "scale to fit (inner fit)": "Crop and Resize",
    "inner fit": "Crop and Resize",
    "resize and fill": "Resize and Fill",
    "outer fit (shrink to fit)": "Resize and Fill",
    "envelope (outer fit)": "Resize and Fill",
    "outer fit": "Resize and Fill",
}
_CONTROL_ALIASES = {m.lower(): m for m in CONTROL_MODES}
_CONTROL_ALIASES.update(
    {"balance": "Balanced", "prompt": "My prompt is more important", "controlnet": "ControlNet is more important"}
)


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet / T2I-Adapter / IP-Adapter unit (A1111's fields and API defaults)."""

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Any = None  # PIL RGB (or RGBA) image
    mask: Any = None  # PIL L image, white = repaint / the region
    resize_mode: str = "Crop and Resize"
    processor_res: int = 512
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    pixel_perfect: bool = False
    # beyond the contract's fields (A1111 has them too)
    union_control_type: str = "Unknown"
    hr_option: str = "Both"
    save_detected_map: bool = True

    def as_args(self) -> dict:
        """The unit as plain data (field -> value; the images stay PIL images): what ``webui_script_args`` hands
        back, and what ``parse_units`` takes again unchanged."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def plain(self) -> dict:
        """The unit as a dict without its images (for logs and the UI)."""
        data = asdict(self)
        data["image"] = None if self.image is None else list(self.image.size)
        data["mask"] = None if self.mask is None else list(self.mask.size)
        return data


_FIELDS = {f.name for f in fields(ControlUnit)}
_ALIASES = {
    "input_image": "image",
    "guidance": "guidance_end",
    "mask_image": "mask",
    "lowvram": "low_vram",
    "controlnet_images": "image",
}


def _refuse(index: int, name: str, why: str) -> JobRefused:
    return JobRefused(f"ControlNet unit {index}: {name} {why}", field=FIELD)


def _decode_image(value: Any, index: int, name: str, max_pixels: int) -> Any:
    """A PIL image from a PIL image, a numpy array, base64 text or a data: URL; None for "" / None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if hasattr(value, "size") and hasattr(value, "mode") and hasattr(value, "convert"):
        width, height = value.size
        if width * height > max_pixels:
            raise _refuse(index, name, f"is {width}x{height}; the largest accepted has {max_pixels} pixels")
        return value
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            from PIL import Image

            return _decode_image(Image.fromarray(value.astype(np.uint8)), index, name, max_pixels)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.match(r"^https?://", text, re.IGNORECASE):
            raise _refuse(index, name, "is a URL; images are not fetched, send the image itself as base64")
        text = re.sub(r"^data:image/[\w.+-]+;base64,", "", text, flags=re.IGNORECASE)
        try:
            raw = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
        except ValueError:
            raise _refuse(index, name, "is not valid base64; send a PNG, JPEG or WebP image base64-encoded") from None
    else:
        raise _refuse(index, name, f"must be a base64-encoded image, not {type(value).__name__}")
    from webui.security.images import NotAnImage, open_image

    try:
        return open_image(io.BytesIO(raw), max_pixels=max_pixels)
    except NotAnImage as exc:
        raise _refuse(index, name, f"is base64, but {exc}") from None


def _number(value: Any, index: int, name: str, kind=float) -> Any:
    if isinstance(value, bool):
        raise _refuse(index, name, f"must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _refuse(index, name, f"must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise _refuse(index, name, "must be a finite number")
    return round(number) if kind is int else float(number)


def _bool(value: Any, index: int, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise _refuse(index, name, f"must be true or false, not {value!r}")


def _choice(value: Any, choices: Sequence[str], aliases: Mapping[str, str], index: int, name: str) -> str:
    if isinstance(value, bool):
        raise _refuse(index, name, f"must be one of {', '.join(choices)}")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(float(value))
        if name == "resize_mode" and number == 3:  # "Just Resize (Latent upscale)"
            number = 0
        if 0 <= number < len(choices):
            return choices[number]
        raise _refuse(index, name, f"must be one of {', '.join(choices)} (or 0..{len(choices) - 1}), not {value!r}")
    text = str(value).strip()
    if text in choices:
        return text
    if text.lower() in aliases:
        return aliases[text.lower()]
    # enum-style names: "ResizeMode.INNER_FIT", "INNER_FIT", "BALANCED"
    tail = text.split(".")[-1].upper()
    enum = {
        "RESIZE": "Just Resize",
        "INNER_FIT": "Crop and Resize",
        "OUTER_FIT": "Resize and Fill",
        "BALANCED": "Balanced",
        "PROMPT": "My prompt is more important",
        "CONTROL": "ControlNet is more important",
    }
    if tail in enum and enum[tail] in choices:
        return enum[tail]
    raise _refuse(index, name, f"must be one of {', '.join(choices)}, not {value!r}")


def _union_type(value: Any, index: int) -> str:
    if value is None or value == "" or str(value).strip().lower() == "unknown":
        return "Unknown"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(UNION_CONTROL_TYPES):
        return UNION_CONTROL_TYPES[value]
    text = str(value).strip().replace("_", " ").lower()
    for name in UNION_CONTROL_TYPES:
        if text in (name.lower(), name.lower().replace(" ", "")):
            return name
    extra = {
        "openpose": "OpenPose",
        "canny": "Hard Edge",
        "lineart": "Hard Edge",
        "mlsd": "Hard Edge",
        "hed": "Soft Edge",
        "scribble": "Soft Edge",
        "normal": "Normal Map",
        "seg": "Segmentation",
        "repaint": "Inpaint",
        "blur": "Tile",
    }
    if text in extra:
        return extra[text]
    raise _refuse(index, "union_control_type", f"must be one of {', '.join(UNION_CONTROL_TYPES)}, not {value!r}")


def _split_image(value: Any) -> tuple[Any, Any]:
    """A1111's image shapes: b64 / PIL, {"image": .., "mask": ..}, [image, mask], or a list of such dicts."""
    if isinstance(value, Mapping):
        return value.get("image"), value.get("mask", value.get("mask_image"))
    if isinstance(value, (list, tuple)):
        if not value:
            return None, None
        if isinstance(value[0], Mapping):  # several inputs (IP-Adapter multi-input): the first one
            return _split_image(value[0])
        if len(value) == 2:
            return value[0], value[1]
        return value[0], None
    return value, None


def parse_unit(sent: Any, index: int = 0, max_pixels: int | None = None) -> ControlUnit:
    from webui.control.preprocessors import get_module, resolve_module, slider_defaults
    from webui.security.images import MAX_PIXELS

    max_pixels = max_pixels or MAX_PIXELS
    if isinstance(sent, ControlUnit):
        return sent
    if not isinstance(sent, Mapping):
        raise JobRefused(
            f"ControlNet unit {index} must be an object with A1111's unit fields (module, model, image, ...), "
            f"not {type(sent).__name__}",
            field=FIELD,
        )
    data: dict[str, Any] = {_ALIASES[k]: v for k, v in sent.items() if k in _ALIASES and v not in (None, "")}
    data.update({k: v for k, v in sent.items() if k in _FIELDS and not (k in data and v in (None, ""))})
    if "ipadapter_input" in sent and sent["ipadapter_input"] not in (None, "", []):
        raise _refuse(index, "ipadapter_input", "is not accepted (it is a pickled tensor); send the image instead")
    values: dict[str, Any] = {}
    values["enabled"] = _bool(data.get("enabled", True), index, "enabled")
    module = data.get("module", "none")
    resolved = resolve_module(module)
    if resolved is None:
        from webui.control.preprocessors import module_names

        raise _refuse(index, "module", f"{module!r} is not a known preprocessor; known: {', '.join(module_names())}")
    values["module"] = resolved
    model = data.get("model", "None")
    values["model"] = "None" if model in (None, "") else str(model).strip()
    weight = _number(data.get("weight", 1.0), index, "weight")
    if not 0.0 <= weight <= 2.0:
        raise _refuse(index, "weight", f"must be between 0 and 2, not {weight:g}")
    values["weight"] = weight
    image, mask = _split_image(data.get("image"))
    if data.get("mask") not in (None, ""):
        mask = data["mask"]
    values["image"] = _decode_image(image, index, "image", max_pixels)
    values["mask"] = _decode_image(mask, index, "mask", max_pixels)
    if values["image"] is not None and values["image"].mode not in ("RGB", "RGBA"):
        values["image"] = values["image"].convert("RGBA" if "A" in values["image"].getbands() else "RGB")
    if values["mask"] is not None:
        m = values["mask"]
        values["mask"] = m.getchannel("A") if m.mode == "RGBA" and m.getextrema()[3][0] < 255 else m.convert("L")
    values["resize_mode"] = _choice(
        data.get("resize_mode", "Crop and Resize"), RESIZE_MODES, _RESIZE_ALIASES, index, "resize_mode"
    )
    values["control_mode"] = _choice(
        data.get("control_mode", "Balanced"), CONTROL_MODES, _CONTROL_ALIASES, index, "control_mode"
    )
    start = _number(data.get("guidance_start", 0.0), index, "guidance_start")
    end = _number(data.get("guidance_end", 1.0), index, "guidance_end")
    for name, value in (("guidance_start", start), ("guidance_end", end)):
        if not 0.0 <= value <= 1.0:
            raise _refuse(index, name, f"must be between 0 and 1, not {value:g}")
    if start > end:
        raise _refuse(index, "guidance_start", f"({start:g}) must not be after guidance_end ({end:g})")
    values["guidance_start"], values["guidance_end"] = start, end
    values["pixel_perfect"] = _bool(data.get("pixel_perfect", False), index, "pixel_perfect")
    res = _number(data.get("processor_res", -1), index, "processor_res", int)
    a = _number(data.get("threshold_a", -1), index, "threshold_a")
    b = _number(data.get("threshold_b", -1), index, "threshold_b")
    values["processor_res"], values["threshold_a"], values["threshold_b"] = slider_defaults(resolved, res, a, b)
    if get_module(resolved).resolution is None and values["processor_res"] == -1:
        values["processor_res"] = 512
    values["union_control_type"] = _union_type(data.get("union_control_type"), index)
    hr = data.get("hr_option", "Both")
    values["hr_option"] = _choice(hr, HR_OPTIONS, {h.lower(): h for h in HR_OPTIONS}, index, "hr_option")
    values["save_detected_map"] = _bool(data.get("save_detected_map", True), index, "save_detected_map")
    return ControlUnit(**values)


def parse_units(
    args: Sequence[Any] | Mapping[str, Any] | None, max_pixels: int | None = None
) -> tuple[ControlUnit, ...]:
    """The units of ``alwayson_scripts["controlnet"]`` (a list; ``{"args": [...]}`` and one unit dict are taken too)."""
    if args is None:
        return ()
    if isinstance(args, ControlUnit):
        return (args,)
    if isinstance(args, Mapping):
        args = args.get("args", [args])
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise JobRefused("ControlNet: the script's args must be a list of units", field=FIELD)
    return tuple(parse_unit(unit, index, max_pixels) for index, unit in enumerate(args))


# --- infotext ----------------------------------------------------------------------------------------

INFOTEXT_FIELDS = (
    "module",
    "model",
    "weight",
    "resize_mode",
    "processor_res",
    "threshold_a",
    "threshold_b",
    "guidance_start",
    "guidance_end",
    "pixel_perfect",
    "control_mode",
)


def _display(name: str) -> str:
    return " ".join(word.capitalize() for word in name.split("_"))


_BY_DISPLAY = {_display(n): n for n in INFOTEXT_FIELDS}
_BY_DISPLAY.update(
    {
        "Low Vram": "low_vram",
        "Hr Option": "hr_option",
        "Save Detected Map": "save_detected_map",
        "Union Control Type": "union_control_type",
    }
)


def _clean(text: str) -> str:
    return re.sub(r"[,:\n]", " ", text).strip()


def unit_infotext(unit: ControlUnit, model_label: str) -> str:
    """``Module: canny, Model: name [hash], Weight: 1.0, Resize Mode: Crop and Resize, ...`` (A1111's order)."""
    values = {
        "module": unit.module,
        "model": model_label or unit.model,
        "weight": float(unit.weight),
        "resize_mode": unit.resize_mode,
        "processor_res": int(unit.processor_res),
        "threshold_a": float(unit.threshold_a),
        "threshold_b": float(unit.threshold_b),
        "guidance_start": float(unit.guidance_start),
        "guidance_end": float(unit.guidance_end),
        "pixel_perfect": bool(unit.pixel_perfect),
        "control_mode": unit.control_mode,
    }
    parts = [f"{_display(name)}: {_clean(str(values[name]))}" for name in INFOTEXT_FIELDS]
    if unit.union_control_type != "Unknown":
        parts.append(f"Union Control Type: {unit.union_control_type}")
    return ", ".join(parts)


def _value(text: str) -> Any:
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses (the older format has tuples: ``starting/ending: (0, 1)``)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _tuple(text: str) -> list[Any]:
    return [_value(x) for x in text.strip().strip("()").split(",") if x.strip()]


def parse_unit_infotext(text: str) -> dict:
    """One unit's infotext value (current or older A1111 format) -> a unit dict with ``enabled: True``."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        import json

        try:
            text = json.loads(text)
        except ValueError:
            text = text[1:-1]
    unit: dict[str, Any] = {"enabled": True}
    for item in _split_top(text):
        if ":" not in item:
            continue
        key, value = (p.strip() for p in item.split(":", 1))
        if key in _BY_DISPLAY:
            unit[_BY_DISPLAY[key]] = _value(value)
            continue
        lower = key.lower()  # the format before 2023-08
        if lower == "preprocessor":
            unit["module"] = value
        elif lower in ("model", "weight"):
            unit[lower] = _value(value)
        elif lower == "starting/ending":
            numbers = _tuple(value)
            if len(numbers) == 2:
                unit["guidance_start"], unit["guidance_end"] = float(numbers[0]), float(numbers[1])
        elif lower == "resize mode":
            unit["resize_mode"] = value
        elif lower == "pixel perfect":
            unit["pixel_perfect"] = _value(value)
        elif lower == "control mode":
            unit["control_mode"] = value
        elif lower == "preprocessor params":
            numbers = _tuple(value)
            for name, number in zip(("processor_res", "threshold_a", "threshold_b"), numbers, strict=False):
                unit[name] = number
    return unit


def units_from_infotext(fields: Mapping[str, str]) -> list[dict]:
    """``ControlNet 0``, ``ControlNet 1``, .. (or the old single ``ControlNet``) -> unit dicts, in order."""
    found: list[tuple[int, dict]] = []
    for key, value in fields.items():
        match = re.fullmatch(r"ControlNet(?: (\d+))?", str(key).strip())
        if match and isinstance(value, str) and value.strip():
            found.append((int(match.group(1) or 0), parse_unit_infotext(value)))
    return [unit for _, unit in sorted(found, key=lambda pair: pair[0])]


def enabled_units(units: Sequence[ControlUnit]) -> list[ControlUnit]:
    return [u for u in units if u.enabled]


__all__ = [
    "CONTROL_MODES",
    "RESIZE_MODES",
    "UNION_CONTROL_TYPES",
    "ControlUnit",
    "enabled_units",
    "parse_unit",
    "parse_unit_infotext",
    "parse_units",
    "replace",
    "unit_infotext",
    "units_from_infotext",
]
