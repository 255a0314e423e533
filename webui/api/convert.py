"""A1111 API JSON <-> GenerationRequest, and base64 images in and out.

Precedence when building a request, lowest first (as A1111):
  1. the API's options defaults (set with ``POST /sdapi/v1/options``) and A1111's API sampler (Euler),
  2. the ``infotext`` field, parsed, for the fields the client did not send,
  3. the fields the client sent (and A1111's API defaults for those it did not),
  4. ``override_settings`` (model, VAE, clip skip, RNG ...).
Fields we cannot honour are accepted and ignored with a warning (logged and returned in
``info["warnings"]``); a ``script_name`` is refused, because running without the script
would silently give a different result.

Pure python plus PIL: no torch, so the API module imports without loading the engine.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.api import sd_upscale_api
from webui.generation.requests import REQUEST_FIELDS, GenerationRequest, Limits, RequestError

log = logging.getLogger(__name__)

# API field -> GenerationRequest field of the same meaning (None values mean "not given").
DIRECT_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "subseed",
    "subseed_strength",
    "scheduler",
    "batch_size",
    "n_iter",
    "steps",
    "cfg_scale",
    "denoising_strength",
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_prompt",
    "hr_negative_prompt",
    "refiner_switch_at",
    "rng",
    "use_t5",
    "shift",
    "original_width",
    "original_height",
    "crop_left",
    "crop_top",
    "target_width",
    "target_height",
    "resize_mode",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
)
# A1111's API default sampler (its ``sampler_index`` field defaults to it; its UI's is DPM++ 2M), with
# schedule type Automatic. Flow-matching families (SD3) have an Euler too, as A1111 runs SD3 with Euler.
API_DEFAULT_SAMPLER = "Euler"
# A1111 placeholder values meaning "same as the first pass" / "none".
_SAME_AS_FIRST = {
    "hr_sampler_name": ("Use same sampler", ""),
    "hr_scheduler": ("Use same scheduler", ""),
    "refiner_checkpoint": ("None", ""),
}
# override_settings key -> (request field, converter). Anything else is ignored with a warning.
OVERRIDE_SETTINGS: Mapping[str, tuple[str, Callable[[Any], Any]]] = {
    "sd_model_checkpoint": ("sd_model_checkpoint", str),
    "sd_vae": ("sd_vae", str),
    "CLIP_stop_at_last_layers": ("clip_skip", int),
    "randn_source": ("rng", str),
    "sd3_enable_t5": ("use_t5", bool),
    "samples_format": ("output_format", str),
}
# Accepted A1111 fields we do not implement: a warning unless the value is one of the harmless ones.
IGNORED_FIELDS: Mapping[str, tuple[Any, ...]] = {
    "seed_resize_from_h": (None, -1, 0),
    "seed_resize_from_w": (None, -1, 0),
    "restore_faces": (None, False),
    "tiling": (None, False),
    "eta": (None,),
    "s_min_uncond": (None,),
    "s_churn": (None,),
    "s_tmax": (None,),
    "s_tmin": (None,),
    "s_noise": (None,),
    "disable_extra_networks": (None, False),
    "firstpass_image": (None, ""),
    "firstphase_width": (None, 0),
    "firstphase_height": (None, 0),
    "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "script_args": (None, []),
    "image_cfg_scale": (None,),
    "initial_noise_multiplier": (None, 1.0),
    "latent_mask": (None, ""),
    "mask_round": (None, True),
}
# Request fields an infotext may fill, and the API fields that, when sent, win over it.
_INFOTEXT_OWNERS: Mapping[str, tuple[str, ...]] = {
    "sampler_name": ("sampler_name", "sampler_index"),
    "mask_blur": ("mask_blur", "mask_blur_x"),
    "width": ("width",),
    "height": ("height",),
    "hr_sampler_name": ("hr_sampler_name",),
    "hr_scheduler": ("hr_scheduler",),
    "refiner_checkpoint": ("refiner_checkpoint",),
    "clip_skip": (),
    "sd_model_checkpoint": (),
    "sd_vae": (),
}
_NOT_FROM_INFOTEXT = (
    "task",
    "init_image",
    "mask",
    "save_images",
    "output_format",
    "extra_generation_params",
    "alwayson_scripts",
)
IMAGE_PAYLOADS = ("init_images", "mask", "firstpass_image", "latent_mask")
MAX_IMAGE_PIXELS = 4096 * 4096  # uploads (img2img uses the hires limit squared)
DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


@dataclass
class ApiDefaults:
    """Defaults that ``POST /options`` changes for later API jobs (one per router, not global)."""

    clip_skip: int = 1
    sd_vae: str = "Automatic"
    rng: str = "GPU"
    use_t5: bool = True
    output_format: str = "png"

    def as_fields(self) -> dict[str, Any]:
        return {
            "clip_skip": self.clip_skip,
            "sd_vae": self.sd_vae,
            "rng": self.rng,
            "use_t5": self.use_t5,
            "output_format": self.output_format,
        }


@dataclass
class ApiCall:
    """A converted API request: what to run, what to echo, and what we could not honour."""

    request: GenerationRequest
    parameters: dict[str, Any]
    send_images: bool = True
    warnings: list[str] = field(default_factory=list)
    received_at: float = field(default_factory=time.time)
    styles: list[str] = field(default_factory=list)  # the prompt styles applied (webui.api.styles_api)


InfotextReader = Callable[[str], Mapping[str, Any]]


def default_infotext_reader(text: str) -> Mapping[str, Any]:
    """Infotext -> GenerationRequest fields, with the app's parser and field map."""
    from webui.generation.infotext_map import request_fields_from_infotext
    from webui.outputs.infotext import parse_infotext

    return request_fields_from_infotext(parse_infotext(text))


# --- images ----------------------------------------------------------------------------------


def decode_image(value: Any, field_name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """A base64 image (with or without a ``data:image/...;base64,`` prefix) -> a loaded PIL image.

    Only PNG, JPEG and WebP are decoded (``webui.security.images``: an EPS would reach Ghostscript). The
    size is read from the header first: an image over ``max_pixels`` is refused before it is decoded (a
    small PNG can declare a huge image).
    """
    from webui.security.images import NotAnImage, open_image

    if not isinstance(value, str) or not value.strip():
        raise RequestError(field_name, "must be a base64-encoded image (PNG, JPEG or WebP)")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        raise RequestError(field_name, "image URLs are not fetched; send the image itself as base64")
    text = DATA_URL.sub("", text)
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field_name, "is not valid base64; send the image file's bytes base64-encoded") from None
    try:
        return open_image(raw, max_pixels)  # PNG, JPEG or WebP only: no other decoder sees request data
    except NotAnImage as exc:
        raise RequestError(field_name, f"is base64, but {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken data
        raise RequestError(field_name, f"is base64 but not an image PIL can read ({type(exc).__name__})") from None


def to_rgb(image: Any) -> Any:
    """Flatten transparency onto white, as A1111 does with img2img inputs."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def to_mask(image: Any, size: tuple[int, int]) -> Any:
    """An "L" mask the size of the init image; a partly transparent RGBA mask uses its alpha (A1111)."""
    from PIL import Image

    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        mask = image.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    else:
        mask = image.convert("L")
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.LANCZOS)
    return mask


def image_to_base64(image: Any, infotext: str | None = None) -> str:
    """A PNG as base64 (no data: prefix, as A1111), with the infotext in its ``parameters`` chunk."""
    if infotext:
        from webui.outputs.writer import encode_image

        return base64.b64encode(encode_image(image, infotext, "png")).decode("ascii")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- request ---------------------------------------------------------------------------------


def request_from_api(
    body: Any,
    task: str,
    defaults: ApiDefaults | None = None,
    limits: Limits | None = None,
    read_infotext: InfotextReader | None = None,
    validate: bool = True,
) -> ApiCall:
    """A GenerationRequest from a ``Txt2ImgRequest``/``Img2ImgRequest``; raises RequestError.

    ``validate``: check the request alone (``webui.generation.requests.check_fields``); the router
    passes False and has the backend validate it, names included.
    """
    sent = set(body.model_fields_set)
    warnings: list[str] = []
    _refuse_scripts(body)
    values: dict[str, Any] = {"sampler_name": API_DEFAULT_SAMPLER, **(defaults or ApiDefaults()).as_fields()}
    if body.infotext:
        values.update(_from_infotext(body.infotext, sent, read_infotext or default_infotext_reader, warnings))
    values.update(_direct_fields(body, sent, values))
    values["save_images"] = bool(body.save_images) and not body.do_not_save_samples
    values.update(_override_settings(body.override_settings or {}, warnings))
    if body.alwayson_scripts:
        values["alwayson_scripts"] = alwayson_scripts(body.alwayson_scripts)
    values.update(sd_upscale_api.fields(body, task))  # script_name "sd upscale"
    _note_ignored(body, warnings)
    limits = limits or Limits()
    if task == "img2img":
        values.update(_images(body, warnings, limits.max_hires_side**2))
    else:
        values["task"] = "txt2img"
    request = GenerationRequest(**values)
    from webui.xyz.api import is_xyz

    if body.script_name and is_xyz(body.script_name):  # a grid over this request ("sd upscale": fields above)
        from webui.xyz.api import grid_from_api

        request = grid_from_api(request, body.script_args)  # type: ignore[assignment]
    if validate:
        from webui.generation.requests import check_fields

        check_fields(request, limits)
    for message in warnings:
        log.warning("API %s: %s", task, message)
    return ApiCall(request, echo_parameters(body), send_images=body.send_images is not False, warnings=warnings)


def alwayson_scripts(sent: Any) -> dict[str, Any]:
    """A1111's ``alwayson_scripts``: ``{"ControlNet": {"args": [...]}}`` -> ``{"controlnet": [...]}``.

    Script names are matched in lower case, as A1111 does; the extension that owns a script checks its
    args when the request is checked (an unknown script is refused there).
    """
    if not isinstance(sent, Mapping):
        raise RequestError("alwayson_scripts", 'must be an object: {"<script name>": {"args": [...]}}')
    out: dict[str, Any] = {}
    for name, value in sent.items():
        if isinstance(value, Mapping):
            value = value.get("args", [])
        if not isinstance(value, (list, tuple)):
            raise RequestError(f"alwayson_scripts.{name}", 'must be {"args": [...]} (a list of the script\'s args)')
        out[str(name).strip().lower()] = list(value)
    return out


def _refuse_scripts(body: Any) -> None:
    from webui.xyz.api import is_xyz

    if body.script_name and not is_xyz(body.script_name) and not sd_upscale_api.handles(body.script_name):
        raise RequestError(
            "script_name",
            f"scripts are not supported by this app, so {body.script_name!r} cannot run; "
            "remove script_name and script_args (hires fix, refiner and inpaint are built in; "
            "the one script is 'x/y/z plot')",
        )


def _from_infotext(text: str, sent: set[str], reader: InfotextReader, warnings: list[str]) -> dict[str, Any]:
    try:
        parsed = dict(reader(text))
    except Exception as exc:  # noqa: BLE001 - a bad infotext must not hide the explicit fields
        warnings.append(f"infotext could not be read and was ignored ({exc})")
        return {}
    out = {}
    for name, value in parsed.items():
        if name not in REQUEST_FIELDS or name in _NOT_FROM_INFOTEXT or value is None:
            continue
        owners = _INFOTEXT_OWNERS.get(name, (name,))
        if not sent.intersection(owners):
            out[name] = value
    return out


def _direct_fields(body: Any, sent: set[str], base: Mapping[str, Any]) -> dict[str, Any]:
    """The body's values; a field an infotext filled keeps that value unless the client sent it."""
    out: dict[str, Any] = {}
    fields = type(body).model_fields
    for name in DIRECT_FIELDS:
        value = getattr(body, name, None)
        if name in fields and value is not None and (name in sent or name not in base):
            out[name] = value
    sampler = body.sampler_name or body.sampler_index
    if sampler:
        out["sampler_name"] = sampler
    for name in ("width", "height"):
        if getattr(body, name) is not None and (name in sent or name not in base):
            out[name] = getattr(body, name)
    for name, placeholders in _SAME_AS_FIRST.items():
        value = getattr(body, name)
        if value is not None and (name in sent or name not in base):
            out[name] = "" if value in placeholders else value
    blur = body.mask_blur if getattr(body, "mask_blur", None) is not None else getattr(body, "mask_blur_x", None)
    if blur is not None and "mask_blur" in fields and (sent & {"mask_blur", "mask_blur_x"} or "mask_blur" not in base):
        out["mask_blur"] = blur
    return out


def _override_settings(overrides: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    out = {}
    for key, value in overrides.items():
        if key in OVERRIDE_SETTINGS:
            name, convert = OVERRIDE_SETTINGS[key]
            try:
                out[name] = convert(value)
            except (TypeError, ValueError, OverflowError):
                raise RequestError(f"override_settings.{key}", f"has the wrong type: {value!r}") from None
        elif key == "eta_noise_seed_delta":
            if value not in (0, None):
                warnings.append("override_settings.eta_noise_seed_delta (ENSD) is ignored: our noise does not use it")
        else:
            warnings.append(
                f"override_settings.{key} is not supported and was ignored; supported: {', '.join(OVERRIDE_SETTINGS)}"
            )
    if out.get("rng") == "NV":
        warnings.append("randn_source NV is not available; GPU noise was used (seeds give other images)")
        out["rng"] = "GPU"
    return out


def _note_ignored(body: Any, warnings: list[str]) -> None:
    for name, harmless in IGNORED_FIELDS.items():
        value = getattr(body, name, None)
        if value not in harmless and not (name == "script_args" and body.script_name):
            warnings.append(f"{name} is not supported and was ignored")
    if getattr(body, "mask_blur", None) is None and getattr(body, "mask_blur_y", None) not in (
        None,
        getattr(body, "mask_blur_x", None),
    ):
        warnings.append("mask_blur_y differs from mask_blur_x; one blur (mask_blur_x) was used for both")
    for name in sorted(body.model_extra or {}):
        warnings.append(f"unknown field {name!r} was ignored")


def _images(body: Any, warnings: list[str], max_pixels: int) -> dict[str, Any]:
    images = body.init_images or []
    if not images:
        raise RequestError("init_images", "img2img needs at least one base64 image in init_images")
    if len(images) > 1:
        warnings.append(f"init_images has {len(images)} images; only the first was used")
    init = to_rgb(decode_image(images[0], "init_images[0]", max_pixels))
    out: dict[str, Any] = {"init_image": init, "task": "img2img"}
    if body.mask:
        out["mask"] = to_mask(decode_image(body.mask, "mask", max_pixels), init.size)
        out["task"] = "inpaint"  # an empty mask is refused with the request's other checks
    return out


def echo_parameters(body: Any) -> dict[str, Any]:
    """The request as received, for the response's ``parameters``: no image payloads (unless asked)."""
    keep_images = bool(getattr(body, "include_init_images", False))
    exclude = set() if keep_images else {name for name in IMAGE_PAYLOADS if name in type(body).model_fields}
    return body.model_dump(exclude=exclude)


# --- response --------------------------------------------------------------------------------


def build_info(call: ApiCall, result: Any, version: str = "", model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A1111's ``Processed.js()`` fields: the engine's ``result.info``, gaps filled from the request."""
    req = call.request
    info = dict(result.info or {})
    n = len(result.images) or req.total_images
    seeds = list(result.seeds) or [req.seed]
    subseeds = list(result.subseeds) or [req.subseed]
    fill = {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * n,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * n,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": req.subseed_strength,
        "width": result.images[0].width if result.images else req.width,
        "height": result.images[0].height if result.images else req.height,
        "sampler_name": req.sampler_name,
        "scheduler": req.scheduler,
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "denoising_strength": req.denoising_strength if req.task != "txt2img" or req.enable_hr else None,
        "infotexts": list(result.infotexts),
        "styles": list(call.styles),
        "extra_generation_params": dict(req.extra_generation_params),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(call.received_at)),
        "clip_skip": req.clip_skip,
        "index_of_first_image": 0,
        "restore_faces": False,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "sd_model_name": None,
        "sd_model_hash": None,
        **dict(model or {}),
    }
    for key, value in fill.items():
        if info.get(key) in (None, ""):
            info[key] = value
    if call.styles:
        info["styles"] = list(call.styles)
    info["version"] = info.get("version") or version
    info["interrupted"] = bool(result.interrupted)
    warnings = list(dict.fromkeys([*call.warnings, *(info.get("warnings") or [])]))  # + the engine's fallbacks
    if warnings:
        info["warnings"] = warnings
    return info


def build_response(call: ApiCall, result: Any, info: Mapping[str, Any]) -> dict[str, Any]:
    """``{"images": [...], "parameters": {...}, "info": "<JSON>"}`` as A1111 answers."""
    images: list[str] = []
    if call.send_images:
        texts = list(result.infotexts) + [None] * len(result.images)
        images = [image_to_base64(image, text) for image, text in zip(result.images, texts)]
    return {"images": images, "parameters": call.parameters, "info": json.dumps(info, default=str)}
