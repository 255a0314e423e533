"""Typed generation requests: one frozen dataclass for txt2img, img2img and inpaint.

Field names are A1111's (``sampler_name``, ``cfg_scale``, ``n_iter``, ``denoising_strength``,
``inpainting_fill`` ...), so the UI, the ``/sdapi/v1`` API and the infotext parser all fill
the same fields. ``validate_request`` checks what can be checked without a model; the checks
that need the loaded family (which samplers are valid) live with the sampler table.

No torch here: a request is plain data plus PIL images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webui.generation.prompts import weight_problem

TASKS = ("txt2img", "img2img", "inpaint")

# A1111 resize modes (img2img "Resize mode" radio and the API's ``resize_mode``).
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111 ``inpainting_fill``: what the masked area starts from.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
# A1111 ``inpaint_full_res``: False = "Whole picture", True = "Only masked".
INPAINT_AREAS = ("Whole picture", "Only masked")
# Hires fix upscalers we run: latent interpolation modes and image resampling.
HR_UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "None",  # A1111 lists its image upscalers None first (clients such as SillyTavern rely on it)
    "Lanczos",
    "Nearest",
)
RNG_SOURCES = ("GPU", "CPU")


class RequestError(ValueError):
    """A request field has a value the app cannot use. ``field`` names it for the UI and API.

    ``valid``: the values the field may take, when the message lists them (the API's ``valid``).
    """

    def __init__(self, field_name: str, message: str, valid: Sequence[str] | None = None) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.valid = tuple(valid) if valid is not None else None


_CHOOSE = "choose one of: "


def listed_choices(exc: BaseException) -> tuple[str, ...] | None:
    """The names an error lists as valid: its ``valid``, else what follows "choose one of: " in its message.

    The sampler table's errors (``SamplerError``) end with that phrase and the comma-separated names.
    """
    valid = getattr(exc, "valid", None)
    if valid is not None:
        return tuple(valid)
    _, found, names = str(exc).rpartition(_CHOOSE)
    listed = tuple(n.strip() for n in names.split(", ") if n.strip()) if found else ()
    return listed if listed and listed != ("(none)",) else None


@dataclass(frozen=True)
class Limits:
    """Bounds a request must stay within (from the settings)."""

    max_side: int = 2048  # width/height of the first pass
    max_hires_side: int = 4096  # width/height after hires fix
    # A1111's API has no cap (its slider stops at 150): this one only refuses absurd values (setting max_steps).
    max_steps: int = 1000
    max_batch_size: int = 8
    max_n_iter: int = 100
    max_prompt_chars: int = 10_000
    # upscaler model names (models/ESRGAN ...) hires fix may use besides HR_UPSCALERS (webui.upscale)
    hr_model_upscalers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SdUpscale:
    """img2img "SD upscale" options (``webui.generation.sd_upscale``): A1111's ``script_args``
    ``[_, overlap, upscaler_index, scale_factor]``; the tile size is the request's width x height."""

    upscaler: str = "None"  # a name from GET /sdapi/v1/upscalers
    upscaler_index: int | None = None  # or its index in that list (A1111 clients); resolved when checked
    scale_factor: float = 2.0
    overlap: int = 64


@dataclass(frozen=True)
class GenerationRequest:
    task: str = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    # Empty sampler/scheduler or steps/cfg of None: the loaded family's defaults.
    sampler_name: str = ""
    scheduler: str = "Automatic"
    steps: int | None = None
    cfg_scale: float | None = None
    # Width/height 0: the family's default size.
    width: int = 0
    height: int = 0
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    rng: str = "GPU"  # "CPU": noise drawn on the CPU so a seed gives the same image on any device
    # img2img / inpaint
    init_image: Any = None  # PIL.Image
    denoising_strength: float = 0.75
    resize_mode: int = 0
    # inpaint (white = repaint)
    mask: Any = None  # PIL.Image
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0 = same as steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str = ""  # "" = same as the first pass
    hr_scheduler: str = ""
    hr_prompt: str = ""  # "" = same prompt
    hr_negative_prompt: str = ""
    # SDXL refiner hand-off
    refiner_checkpoint: str = ""
    refiner_switch_at: float = 0.8
    # SDXL size and crop conditioning (0 = A1111's defaults: the image size, no crop)
    original_width: int = 0
    original_height: int = 0
    crop_left: int = 0
    crop_top: int = 0
    target_width: int = 0
    target_height: int = 0
    # SD3
    use_t5: bool = True
    shift: float = 0.0  # 0 = the checkpoint's own shift
    # Checkpoint / VAE for this job ("" = whatever is loaded)
    sd_model_checkpoint: str = ""
    sd_vae: str = ""
    # output
    save_images: bool = True
    output_format: str = "png"
    # extra infotext fields (extensions)
    extra_generation_params: Mapping[str, Any] = field(default_factory=dict)
    # A1111's alwayson_scripts: script name (lower case) -> its args, as the extension that owns the script
    # checked them (``webui_script_args``: plain data, images decoded); "controlnet" -> its units.
    alwayson_scripts: Mapping[str, Any] = field(default_factory=dict)
    # img2img "SD upscale" (``SdUpscale``, run by ``webui.generation.sd_upscale``; None: a plain img2img)
    sd_upscale: SdUpscale | None = None

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter


REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest))


def request_from_mapping(values: Mapping[str, Any], **overrides: Any) -> GenerationRequest:
    """A request from a dict of field values; unknown keys raise a RequestError naming them."""
    merged = {**values, **overrides}
    unknown = sorted(k for k in merged if k not in REQUEST_FIELDS)
    if unknown:
        raise RequestError(unknown[0], f"unknown field; valid fields: {', '.join(REQUEST_FIELDS)}", REQUEST_FIELDS)
    return GenerationRequest(**merged)


def _check(cond: bool, name: str, message: str, valid: Sequence[str] | None = None) -> None:
    if not cond:
        raise RequestError(name, message, valid)


def _check_size(name: str, value: int, limit: int) -> None:
    _check(isinstance(value, int), name, f"must be a whole number of pixels, got {value!r}")
    if value == 0:
        return  # family default
    _check(value >= 64, name, f"{value} is too small; use at least 64")
    _check(value % 8 == 0, name, f"{value} is not a multiple of 8; use {value // 8 * 8} or {value // 8 * 8 + 8}")
    _check(value <= limit, name, f"{value} is above the limit of {limit}; use {limit} or less")


def validate_request(req: GenerationRequest, limits: Limits = Limits(), *, weights: bool = True) -> GenerationRequest:
    """Raise RequestError for the first field a user must change; return the request unchanged.

    ``weights``: check the prompts' attention and LoRA weights here (``check_request`` checks them where
    it splits the prompts, so each prompt is parsed once)."""
    _check(req.task in TASKS, "task", f"unknown task {req.task!r}; valid: {', '.join(TASKS)}", TASKS)
    for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        value = getattr(req, name)
        _check(isinstance(value, str), name, "must be text")
        _check(
            len(value) <= limits.max_prompt_chars,
            name,
            f"is {len(value)} characters long; the limit is {limits.max_prompt_chars}",
        )
        _check(
            _is_unicode(value),
            name,
            "contains characters that are not valid Unicode (a lone surrogate such as \\ud800); retype or paste it",
        )
        if weights:
            _check(not (problem := weight_problem(value)), name, problem)
    _check_size("width", req.width, limits.max_side)
    _check_size("height", req.height, limits.max_side)
    if req.steps is not None:
        _check(isinstance(req.steps, int) and req.steps >= 1, "steps", f"must be at least 1, got {req.steps!r}")
        _check(req.steps <= limits.max_steps, "steps", f"{req.steps} is above the limit of {limits.max_steps}")
    if req.cfg_scale is not None:
        _check(0.0 <= req.cfg_scale <= 30.0, "cfg_scale", f"must be between 0 and 30, got {req.cfg_scale}")
    _check(
        1 <= req.batch_size <= limits.max_batch_size,
        "batch_size",
        f"must be between 1 and {limits.max_batch_size}, got {req.batch_size}",
    )
    _check(
        1 <= req.n_iter <= limits.max_n_iter, "n_iter", f"must be between 1 and {limits.max_n_iter}, got {req.n_iter}"
    )
    _check(-1 <= req.seed < 2**32, "seed", f"must be -1 (random) or between 0 and {2**32 - 1}, got {req.seed}")
    _check(-1 <= req.subseed < 2**32, "subseed", f"must be -1 (random) or between 0 and {2**32 - 1}, got {req.subseed}")
    _check(
        0.0 <= req.subseed_strength <= 1.0,
        "subseed_strength",
        f"must be between 0 and 1, got {req.subseed_strength}",
    )
    _check(1 <= req.clip_skip <= 12, "clip_skip", f"must be between 1 and 12, got {req.clip_skip}")
    _check(req.rng in RNG_SOURCES, "rng", f"must be one of {', '.join(RNG_SOURCES)}, got {req.rng!r}", RNG_SOURCES)
    _check(
        req.output_format in ("png", "jpg", "jpeg", "webp"),
        "output_format",
        f"must be png, jpg or webp, got {req.output_format!r}",
        ("png", "jpg", "webp"),
    )
    if req.task in ("img2img", "inpaint"):
        _validate_img2img(req)
    if req.task == "inpaint":
        _validate_inpaint(req)
    if req.enable_hr:
        _validate_hires(req, limits)
    if req.refiner_checkpoint:
        _check(
            0.0 < req.refiner_switch_at < 1.0,
            "refiner_switch_at",
            f"must be between 0 and 1 (the fraction of steps before the refiner takes over), got {req.refiner_switch_at}",
        )
    _check(req.shift >= 0.0, "shift", f"must be 0 (the model's own) or positive, got {req.shift}")
    _validate_derived_limits(req, limits)
    return req


def _is_unicode(text: str) -> bool:
    """False for a lone UTF-16 surrogate (JSON's "\\ud800"): the tokenizer and the PNG text chunk fail on it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MIN_IMAGE_SIDE = 8  # a size taken from the init image (one latent pixel)
MIN_DENOISING = 0.01  # the UI slider's smallest step; 1 / strength steps are scheduled (passes.steps_for_strength)


def _validate_derived_limits(req: GenerationRequest, limits: Limits) -> None:
    """Limits on what follows from the fields: the init image's size, hires fix's size, the steps scheduled."""
    if req.task != "txt2img" and req.init_image is not None and not (req.width and req.height):
        w, h = (side // 8 * 8 for side in req.init_image.size)
        _check(
            MIN_IMAGE_SIDE <= min(w, h) and max(w, h) <= limits.max_side,
            "init_image",
            f"is {req.init_image.size[0]}x{req.init_image.size[1]}; without width and height the result "
            f"takes the image's size, which must be between {MIN_IMAGE_SIDE} and {limits.max_side} per side: "
            "send width and height, or an image of a size in that range",
        )
    if req.task != "txt2img" or req.enable_hr:
        _check(
            req.denoising_strength >= MIN_DENOISING,
            "denoising_strength",
            f"{req.denoising_strength} is too small to change anything; use at least {MIN_DENOISING}",
        )
    if not req.enable_hr:
        return
    for name in ("hr_resize_x", "hr_resize_y"):
        value = getattr(req, name)
        _check(value == 0 or value >= 64, name, f"must be 0 (use the scale) or at least 64, got {value}")
    if req.width and req.height:
        w, h = hires_size(req.width, req.height, req)
        _check(
            max(w, h) <= limits.max_hires_side,
            "hr_resize_x" if req.hr_resize_x or req.hr_resize_y else "hr_scale",
            f"hires fix would make {w}x{h}; each side must be at most {limits.max_hires_side}: "
            "use a smaller scale or size",
        )


def _validate_img2img(req: GenerationRequest) -> None:
    _check(req.init_image is not None, "init_image", f"{req.task} needs an input image")
    _check(
        0.0 < req.denoising_strength <= 1.0,
        "denoising_strength",
        f"must be above 0 and at most 1, got {req.denoising_strength}",
    )
    _check(
        req.resize_mode in range(len(RESIZE_MODES)),
        "resize_mode",
        f"must be 0-{len(RESIZE_MODES) - 1} ({', '.join(RESIZE_MODES)}), got {req.resize_mode!r}",
        [str(i) for i in range(len(RESIZE_MODES))],
    )


def _validate_inpaint(req: GenerationRequest) -> None:
    _check(req.mask is not None, "mask", "inpaint needs a mask (white = the area to repaint)")
    _check(
        tuple(req.mask.size) == tuple(req.init_image.size),
        "mask",
        f"is {req.mask.size[0]}x{req.mask.size[1]} but the image is "
        f"{req.init_image.size[0]}x{req.init_image.size[1]}; use a mask of the same size",
    )
    _check(0 <= req.mask_blur <= 64, "mask_blur", f"must be between 0 and 64, got {req.mask_blur}")
    _check(
        req.inpainting_fill in range(len(MASKED_CONTENT)),
        "inpainting_fill",
        f"must be 0-3 ({', '.join(MASKED_CONTENT)}), got {req.inpainting_fill!r}",
        [str(i) for i in range(len(MASKED_CONTENT))],
    )
    _check(
        0 <= req.inpaint_full_res_padding <= 256,
        "inpaint_full_res_padding",
        f"must be between 0 and 256, got {req.inpaint_full_res_padding}",
    )
    _check(
        req.inpainting_mask_invert in (0, 1),
        "inpainting_mask_invert",
        "must be 0 (repaint white) or 1 (repaint black)",
        ("0", "1"),
    )


def _validate_hires(req: GenerationRequest, limits: Limits) -> None:
    _check(req.task == "txt2img", "enable_hr", "hires fix is for txt2img; use img2img to upscale an existing image")
    upscalers = HR_UPSCALERS + tuple(limits.hr_model_upscalers)
    _check(
        req.hr_upscaler in upscalers,
        "hr_upscaler",
        f"unknown upscaler {req.hr_upscaler!r}; valid: {', '.join(upscalers)}",
        upscalers,
    )
    _check(1.0 <= req.hr_scale <= 4.0, "hr_scale", f"must be between 1 and 4, got {req.hr_scale}")
    _check(
        0.0 < req.denoising_strength <= 1.0,
        "denoising_strength",
        f"hires fix needs a strength above 0 and at most 1, got {req.denoising_strength}",
    )
    _check(
        0 <= req.hr_second_pass_steps <= limits.max_steps,
        "hr_second_pass_steps",
        f"must be between 0 (same as steps) and {limits.max_steps}",
    )
    for name in ("hr_resize_x", "hr_resize_y"):
        value = getattr(req, name)
        _check(value == 0 or value % 8 == 0, name, f"{value} is not a multiple of 8")
        _check(value <= limits.max_hires_side, name, f"{value} is above the limit of {limits.max_hires_side}")


def hires_size(width: int, height: int, req: GenerationRequest) -> tuple[int, int]:
    """Target size of the hires pass, as A1111: explicit resize-to wins, else the scale; multiples of 8."""
    if req.hr_resize_x or req.hr_resize_y:
        if req.hr_resize_x and req.hr_resize_y:
            return req.hr_resize_x, req.hr_resize_y
        if req.hr_resize_x:
            w = req.hr_resize_x
            return w, max(64, round(height * w / width / 8) * 8)
        h = req.hr_resize_y
        return max(64, round(width * h / height / 8) * 8), h
    return int(width * req.hr_scale) // 8 * 8, int(height * req.hr_scale) // 8 * 8


def check_fields(request: GenerationRequest, limits: Limits, *, weights: bool = True) -> GenerationRequest:
    """The checks of the request alone, without the catalog or a model: ``validate_request`` and an inpaint
    mask with something to repaint. ``webui.generation.check.check_request`` makes them first."""
    validate_request(request, limits, weights=weights)
    if request.task == "inpaint":
        from webui.generation.img_ops import prepare_mask

        if prepare_mask(request.mask, invert=bool(request.inpainting_mask_invert), blur=0).getbbox() is None:
            raise RequestError("mask", "the mask is empty; paint (white) the area to repaint")
    return request
