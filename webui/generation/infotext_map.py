"""GenerationRequest <-> A1111 infotext keys: what to write for a job, and request fields from a paste.

Writing follows A1111 1.10's ``create_infotext`` key order and its rules for when a key is written
(Clip skip only above 1, RNG only when not GPU, hires keys only with hires fix, inpaint keys only
when they differ from A1111's defaults ...). Reading maps the keys of ``parse_infotext`` back to
request field names and types. Pure python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from webui.generation.requests import MASKED_CONTENT, RNG_SOURCES, GenerationRequest, RequestError
from webui.outputs.infotext import format_infotext

AUTOMATIC = "Automatic"

# A1111 1.10 samplers that have their own schedule: with Schedule type "Automatic" A1111 runs and
# writes this one (``DPM++ 2M`` + Automatic is written ``Schedule type: Karras``). Samplers not
# listed (Euler a, Euler, LMS, Heun, DPM fast/adaptive, DDIM, PLMS, UniPC, LCM ...) write "Automatic".
A1111_DEFAULT_SCHEDULES = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 2S a": "Karras",
    "DPM++ 3M SDE": "Exponential",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "Restart": "Karras",
}

# A1111 schedule types: label first, then the other spellings found as sampler-name suffixes in
# pre-1.9 infotexts ("DPM++ 2M Karras") and in A1111's own aliases.
SCHEDULE_NAMES: tuple[tuple[str, ...], ...] = (
    ("Automatic", "automatic"),
    ("Uniform", "uniform"),
    ("Karras", "karras"),
    ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"),
    ("SGM Uniform", "sgm_uniform", "SGMUniform"),
    ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"),
    ("Align Your Steps GITS", "align_your_steps_GITS"),
    ("Align Your Steps 11", "align_your_steps_11"),
    ("Align Your Steps 32", "align_your_steps_32"),
    ("Simple", "simple"),
    ("Normal", "normal"),
    ("DDIM", "ddim"),
    ("Beta", "beta"),
)

USE_SAME_SAMPLER = "Use same sampler"
USE_SAME_SCHEDULER = "Use same scheduler"
INPAINT_AREAS = {"Whole picture": False, "Only masked": True}
MASK_MODES = {"Inpaint masked": 0, "Inpaint not masked": 1}
T5_STATES = {"on": True, "off": False}
# Keys whose presence means the image was made with hires fix.
HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")


def split_schedule_suffix(sampler: str) -> tuple[str, str]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; no known suffix -> ``(sampler, "")``."""
    text = sampler.strip()
    spellings = sorted(((alias, names[0]) for names in SCHEDULE_NAMES for alias in names), key=lambda p: -len(p[0]))
    for alias, label in spellings:
        if len(text) > len(alias) + 1 and text.lower().endswith(" " + alias.lower()):
            return text[: -len(alias) - 1].rstrip(), label
    return text, ""


def written_schedule(sampler_name: str, schedule: str) -> str:
    """The ``Schedule type`` A1111 1.10 writes: "Automatic" becomes the sampler's own schedule if any."""
    if schedule and schedule != AUTOMATIC:
        return schedule
    return A1111_DEFAULT_SCHEDULES.get(sampler_name, AUTOMATIC)


def _num(value: float) -> float:
    """Numbers as A1111's UI writes them: ``7`` not ``7.0``; other floats unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _hashes(hashes: Mapping[str, str] | None) -> str | None:
    """``"name: hash, ..."``; ``:`` and ``,`` removed from names as A1111's Lora extension does."""
    if not hashes:
        return None
    drop = str.maketrans("", "", ":,")
    return ", ".join(f"{name.translate(drop)}: {digest}" for name, digest in hashes.items())


def _uses_denoising(request: GenerationRequest) -> bool:
    return request.task in ("img2img", "inpaint") or (request.task == "txt2img" and request.enable_hr)


def _hires_schedule(request: GenerationRequest, hr_sampler: str, schedule: str, first_schedule: str) -> str | None:
    """A1111 writes the hires pass's schedule only when it resolves to one that differs."""
    chosen = request.hr_scheduler or schedule
    label = chosen if chosen and chosen != AUTOMATIC else A1111_DEFAULT_SCHEDULES.get(hr_sampler)
    return label if label and label != first_schedule else None


def _hires_params(request: GenerationRequest, sampler_name: str, schedule: str) -> dict[str, Any]:
    """A1111 1.10 order: sampler, prompts, schedule type, upscale|resize, steps, upscaler."""
    hr_sampler = request.hr_sampler_name or sampler_name
    params: dict[str, Any] = {
        "Hires sampler": hr_sampler if hr_sampler != sampler_name else None,
        "Hires prompt": request.hr_prompt if request.hr_prompt and request.hr_prompt != request.prompt else None,
        "Hires negative prompt": (
            request.hr_negative_prompt
            if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt
            else None
        ),
        "Hires schedule type": _hires_schedule(request, hr_sampler, schedule, written_schedule(sampler_name, schedule)),
    }
    if request.hr_resize_x == 0 and request.hr_resize_y == 0:
        params["Hires upscale"] = _num(request.hr_scale)
    else:
        params["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
    params["Hires steps"] = request.hr_second_pass_steps or None
    params["Hires upscaler"] = request.hr_upscaler or None
    return params


def _inpaint_params(request: GenerationRequest) -> dict[str, Any]:
    """A1111 writes each only when it is not the default (the parser fills the defaults back in)."""
    return {
        "Mask mode": "Inpaint not masked" if request.inpainting_mask_invert else None,
        "Mask blur": request.mask_blur if request.mask_blur > 0 else None,
        "Inpaint area": "Only masked" if request.inpaint_full_res else None,
        "Masked area padding": request.inpaint_full_res_padding if request.inpaint_full_res else None,
        "Masked content": MASKED_CONTENT[request.inpainting_fill] if request.inpainting_fill != 1 else None,
    }


def _own_params(request: GenerationRequest) -> dict[str, Any]:
    """Our keys (not A1111's), written only when not the default: SD3 without T5, a custom shift."""
    return {
        "T5": "off" if not request.use_t5 else None,
        "Shift": _num(request.shift) if request.shift > 0 else None,
    }


def infotext_params(
    request: GenerationRequest,
    *,
    seed: int,
    subseed: int,
    width: int,
    height: int,
    sampler_name: str,
    schedule: str,
    steps: int,
    cfg_scale: float,
    model_name: str = "",
    model_hash: str = "",
    vae_name: str = "",
    vae_hash: str = "",
    lora_hashes: Mapping[str, str] | None = None,
    version: str = "",
    ti_hashes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The parameter line of one image, in A1111 1.10's key order; keys that are not written left out.

    Pass the values the job actually used (resolved seed/subseed, first-pass size, sampler, steps)
    and ``schedule`` as the user chose it: "Automatic" (or "") is written as A1111 does, the
    sampler's own schedule from ``A1111_DEFAULT_SCHEDULES`` (Karras for DPM++ 2M) or "Automatic";
    the hires pass (``hr_scheduler`` "" = this schedule) is resolved the same way.
    ``request.extra_generation_params`` come last before ``Version``; a key already present keeps
    its place and takes the extension's value, as in A1111.
    """
    first_schedule = written_schedule(sampler_name, schedule)
    varied = bool(request.subseed_strength)
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler_name,
        "Schedule type": first_schedule,
        "CFG scale": _num(cfg_scale),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash or None,
        "Model": model_name or None,
        "VAE hash": vae_hash or None,
        "VAE": vae_name or None,
        "Variation seed": subseed if varied else None,
        "Variation seed strength": _num(request.subseed_strength) if varied else None,
        "Denoising strength": _num(request.denoising_strength) if _uses_denoising(request) else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "RNG": request.rng if request.rng != "GPU" else None,
    }
    if request.task == "txt2img" and request.enable_hr:
        params.update(_hires_params(request, sampler_name, schedule))
    if request.task == "inpaint":
        params.update(_inpaint_params(request))
    params["Lora hashes"] = _hashes(lora_hashes)
    params["TI hashes"] = _hashes(ti_hashes)
    if request.refiner_checkpoint:
        params["Refiner"] = request.refiner_checkpoint
        params["Refiner switch at"] = _num(request.refiner_switch_at)
    params.update(_own_params(request))
    params.update(request.extra_generation_params)
    params.pop("Version", None)
    params["Version"] = version or None
    return {key: value for key, value in params.items() if value is not None}


def infotext_for(request: GenerationRequest, prompt: str, negative_prompt: str, **params_kwargs: Any) -> str:
    """The full infotext of one image (``params_kwargs``: those of ``infotext_params``)."""
    return format_infotext(prompt, negative_prompt, infotext_params(request, **params_kwargs))


# --- reading ---------------------------------------------------------------------------------------


def _to_int(value: Any) -> int:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"{text!r} is not a whole number") from None
        return int(number)


def _to_float(value: Any) -> float:
    return float(str(value).strip())


def _to_str(value: Any) -> str:
    return str(value)


def _choice(table: Mapping[str, Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        text = str(value).strip()
        if text not in table:
            raise ValueError(f"{text!r} is not one of {', '.join(map(str, table))}")
        return table[text]

    return convert


# A1111 infotext key -> (request field, converter). The sampler, hires sampler, hires switch and
# checkpoint need more than one key and are read by the functions below.
FIELD_KEYS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Prompt", "prompt", _to_str),
    ("Negative prompt", "negative_prompt", _to_str),
    ("Steps", "steps", _to_int),
    ("CFG scale", "cfg_scale", _to_float),
    ("Seed", "seed", _to_int),
    ("Size-1", "width", _to_int),
    ("Size-2", "height", _to_int),
    ("Variation seed", "subseed", _to_int),
    ("Variation seed strength", "subseed_strength", _to_float),
    ("Denoising strength", "denoising_strength", _to_float),
    ("Clip skip", "clip_skip", _to_int),
    ("RNG", "rng", _choice({name: name for name in RNG_SOURCES})),
    ("Hires upscale", "hr_scale", _to_float),
    ("Hires upscaler", "hr_upscaler", _to_str),
    ("Hires steps", "hr_second_pass_steps", _to_int),
    ("Hires resize-1", "hr_resize_x", _to_int),
    ("Hires resize-2", "hr_resize_y", _to_int),
    ("Hires prompt", "hr_prompt", _to_str),
    ("Hires negative prompt", "hr_negative_prompt", _to_str),
    ("Refiner", "refiner_checkpoint", _to_str),
    ("Refiner switch at", "refiner_switch_at", _to_float),
    ("Mask blur", "mask_blur", _to_int),
    ("Mask mode", "inpainting_mask_invert", _choice(MASK_MODES)),
    ("Inpaint area", "inpaint_full_res", _choice(INPAINT_AREAS)),
    ("Masked area padding", "inpaint_full_res_padding", _to_int),
    ("Masked content", "inpainting_fill", _choice({name: i for i, name in enumerate(MASKED_CONTENT)})),
    ("VAE", "sd_vae", _to_str),
    ("T5", "use_t5", _choice(T5_STATES)),
    ("Shift", "shift", _to_float),
)


def _sampler_fields(parsed: Mapping[str, Any], split: Callable[[str], tuple[str, str]]) -> dict[str, Any]:
    """Both spellings: ``Sampler: DPM++ 2M Karras`` and ``Sampler: DPM++ 2M, Schedule type: Karras``."""
    fields: dict[str, Any] = {}
    if "Sampler" in parsed:
        name, suffix = split(str(parsed["Sampler"]))
        fields["sampler_name"] = name
        fields["scheduler"] = suffix or str(parsed.get("Schedule type", AUTOMATIC))
    elif "Schedule type" in parsed:
        fields["scheduler"] = str(parsed["Schedule type"])
    if "Hires sampler" in parsed or "Hires schedule type" in parsed:
        hr_sampler = str(parsed.get("Hires sampler", USE_SAME_SAMPLER))
        hr_schedule = str(parsed.get("Hires schedule type", USE_SAME_SCHEDULER))
        hr_schedule = "" if hr_schedule == USE_SAME_SCHEDULER else hr_schedule
        if hr_sampler != USE_SAME_SAMPLER:
            hr_sampler, suffix = split(hr_sampler)
            hr_schedule = suffix or hr_schedule
        fields["hr_sampler_name"] = "" if hr_sampler == USE_SAME_SAMPLER else hr_sampler
        fields["hr_scheduler"] = hr_schedule
    return fields


def _uses_hires(parsed: Mapping[str, Any]) -> bool:
    if any(key in parsed for key in HIRES_KEYS):
        return True
    try:
        return any(_to_int(parsed.get(key, 0)) > 0 for key in ("Hires resize-1", "Hires resize-2"))
    except ValueError:
        return False


def request_fields_from_infotext(
    parsed: Mapping[str, Any],
    *,
    split_sampler: Callable[[str], tuple[str, str]] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Request field values (A1111 names and our types) from ``parse_infotext``'s dict.

    ``split_sampler(name) -> (sampler, schedule or "")`` separates a pre-1.9 schedule suffix; the
    default knows A1111's schedule names. ``sd_model_checkpoint`` is the ``Model`` name, else the
    ``Model hash``. Keys we do not map are ignored (they stay in ``parsed``). A value that does not
    convert is skipped, or with ``strict`` raises RequestError naming the field.
    """
    fields = _sampler_fields(parsed, split_sampler or split_schedule_suffix)
    for key, name, convert in FIELD_KEYS:
        if key not in parsed:
            continue
        try:
            fields[name] = convert(parsed[key])
        except ValueError as exc:
            if strict:
                raise RequestError(name, f"infotext {key}: {exc}; correct it or leave the key out") from None
    fields["enable_hr"] = _uses_hires(parsed)
    checkpoint = parsed.get("Model") or parsed.get("Model hash")
    if checkpoint:
        fields["sd_model_checkpoint"] = str(checkpoint)
    return fields
