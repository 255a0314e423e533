"""The checks a request gets before it is queued: ``check_request`` (the backend's ``validate`` calls it).

``validate_request`` (``webui.generation.requests``) plus the rules the engine applies later that it
does not make yet (an empty mask, the size an init image implies, the size hires fix reaches, the
steps a tiny denoising strength schedules), so a request the engine would refuse, or that would run
far beyond the limits, is refused before anything is queued. When the engine's single check
function arrives ("validate once"), ``check_request`` becomes a call to it. PIL and numpy only, no torch.
"""

from __future__ import annotations

from typing import Any

from webui.generation.requests import GenerationRequest, Limits, RequestError, validate_request

MIN_SIDE = 64  # an explicit size (as validate_request)
MIN_IMAGE_SIDE = 8  # a size taken from the init image (one latent pixel)
MIN_DENOISING = 0.01  # the UI slider's smallest step; 1 / strength steps are scheduled


def check_request(req: GenerationRequest, limits: Limits) -> GenerationRequest:
    """Every check of the request alone, in the order the API has always made them; returns the request."""
    if req.task == "inpaint" and req.mask is not None:
        check_mask_not_empty(req.mask, bool(req.inpainting_mask_invert))
    validate_request(req, limits)
    check_derived_limits(req, limits)
    return req


def check_mask_not_empty(mask: Any, invert: bool) -> None:
    """The engine's rule (webui.generation.inpaint), before queueing: something must be repainted."""
    from webui.generation.img_ops import prepare_mask

    if prepare_mask(mask, invert=invert).getbbox() is None:
        raise RequestError("mask", "the mask is empty; paint (white) the area to repaint")


def check_derived_limits(req: GenerationRequest, limits: Limits) -> None:
    """The limits ``validate_request`` does not see: sizes and step counts that follow from other fields.

    Without width and height an img2img result has the init image's size (rounded down to a
    multiple of 8); hires fix multiplies the first pass by ``hr_scale`` or resizes to
    ``hr_resize_x/y``. Both must stay within the limits, as an explicit width and height must.
    A denoising strength near 0 makes the sampler schedule ``1 / strength`` steps to run one
    (``passes.steps_for_strength``): 1e-10 would ask numpy for ten billion timesteps.
    """
    from webui.generation.requests import hires_size

    if req.task != "txt2img" and req.init_image is not None and not (req.width and req.height):
        w, h = (side // 8 * 8 for side in req.init_image.size)
        if min(w, h) < MIN_IMAGE_SIDE or max(w, h) > limits.max_side:
            raise RequestError(
                "init_image",
                f"is {req.init_image.size[0]}x{req.init_image.size[1]}; without width and height the result "
                f"takes the image's size, which must be between {MIN_IMAGE_SIDE} and {limits.max_side} per side: "
                "send width and height, or an image of a size in that range",
            )
    if (req.task != "txt2img" or req.enable_hr) and req.denoising_strength < MIN_DENOISING:
        raise RequestError(
            "denoising_strength",
            f"{req.denoising_strength} is too small to change anything; use at least {MIN_DENOISING}",
        )
    if not req.enable_hr:
        return
    for name in ("hr_resize_x", "hr_resize_y"):
        value = getattr(req, name)
        if value and not MIN_SIDE <= value:
            raise RequestError(name, f"must be 0 (use hr_scale) or at least {MIN_SIDE}, got {value}")
    if req.width and req.height:
        w, h = hires_size(req.width, req.height, req)
        if max(w, h) > limits.max_hires_side or min(w, h) < MIN_SIDE:
            field_name = "hr_resize_x" if req.hr_resize_x or req.hr_resize_y else "hr_scale"
            raise RequestError(
                field_name,
                f"hires fix would make {w}x{h}; each side must be between {MIN_SIDE} and {limits.max_hires_side}: "
                "use a smaller scale or size",
            )
