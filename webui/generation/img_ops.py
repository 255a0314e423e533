"""Image operations for img2img and inpaint, with A1111's behaviour (PIL + numpy, no torch).

Why here and not in diffusers: A1111 users expect its resize modes, its mask handling (drawn masks,
blur, invert), its "fill" masked content, its "Only masked" crop/paste-back and its final overlay
that keeps every unmasked pixel identical to the input. Diffusers' processors binarise and resize
differently, so the engine prepares images with these functions and hands the pipeline the results.

The two torch helpers at the end import torch inside, so the UI and API can import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from webui.generation.requests import MASKED_CONTENT, RESIZE_MODES

if TYPE_CHECKING:
    from torch import Tensor

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive, as PIL
WHITE = (255, 255, 255)
# A1111 binarises masks at this level (mask_round): values above it repaint.
_MASK_THRESHOLD = 128
# "fill": (blur radius, times composited), coarse to fine; the coarse passes reach the middle of
# large masks, the fine ones keep colours close to the mask's edge.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))
_BOX_PASSES = 3  # three box blurs approximate a Gaussian
_SMOOTH_RADIUS = 2  # wider blurs run on an image shrunk so that their radius becomes about this
_NO_SURROUNDINGS = 127.5  # colour for a mask that covers the whole image: nothing to smear in


# --- resize modes ---------------------------------------------------------------------------------


def resize_image(image: Image.Image, width: int, height: int, mode: int, *, background=WHITE) -> Image.Image:
    """``image`` as an RGB ``width`` x ``height`` image, by A1111 resize mode (see RESIZE_MODES).

    0 "Just resize": stretch. 1 "Crop and resize": cover the target, centre-crop the excess.
    2 "Resize and fill": fit inside, fill the empty bands by stretching the edge rows/columns.
    3 "Just resize (latent upscale)": as 0 here. Transparent pixels are flattened onto ``background``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"target size must be at least 1x1, got {width}x{height}")
    if mode not in _RESIZERS:
        valid = ", ".join(f"{i} {name!r}" for i, name in enumerate(RESIZE_MODES))
        raise ValueError(f"unknown resize mode {mode!r}; valid modes: {valid}")
    return _RESIZERS[mode](to_rgb(image, background), width, height)


def to_rgb(image: Image.Image, background=WHITE) -> Image.Image:
    """RGB copy; images with transparency are composited onto ``background`` (A1111 flattens too)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def _just_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    src_w, src_h = image.size
    scale = max(width / src_w, height / src_h)
    crop_w, crop_h = width / scale, height / scale  # the source area that fills the target
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    src_w, src_h = image.size
    if width / height < src_w / src_h:  # source is wider: fit the width, bands above and below
        fit_w, fit_h = width, max(1, src_h * width // src_w)
    else:
        fit_w, fit_h = max(1, src_w * height // src_h), height
    fitted = image.resize((fit_w, fit_h), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (width, height))
    x0, y0 = (width - fit_w) // 2, (height - fit_h) // 2
    out.paste(fitted, (x0, y0))
    bands = (
        ((0, 0, fit_w, 1), (0, 0), (fit_w, y0)),  # top band from the first row
        ((0, fit_h - 1, fit_w, fit_h), (0, y0 + fit_h), (fit_w, height - y0 - fit_h)),  # bottom
        ((0, 0, 1, fit_h), (0, 0), (x0, fit_h)),  # left band from the first column
        ((fit_w - 1, 0, fit_w, fit_h), (x0 + fit_w, 0), (width - x0 - fit_w, fit_h)),  # right
    )
    for edge, at, size in bands:
        if size[0] > 0 and size[1] > 0:
            out.paste(fitted.crop(edge).resize(size, Image.Resampling.NEAREST), at)
    return out


_RESIZERS: dict[int, Callable[[Image.Image, int, int], Image.Image]] = {
    0: _just_resize,
    1: _crop_and_resize,
    2: _resize_and_fill,
    3: _just_resize,
}


# --- masks ----------------------------------------------------------------------------------------


def prepare_mask(mask: Image.Image, *, invert: bool = False, blur: int = 0, binarize: bool = True) -> Image.Image:
    """Any mask image as "L", white = repaint, then binarised, inverted and blurred in A1111's order.

    A mask with transparency (a drawn layer: strokes on a transparent canvas) is its alpha channel;
    an opaque one is its luminance. ``binarize`` is A1111's "mask_round" (on by default), ``invert``
    its "Inpaint not masked", ``blur`` its mask blur (Gaussian, sigma = blur pixels).
    """
    out = _mask_luminance_or_alpha(mask)
    if binarize:
        out = out.point(lambda v: 255 if v > _MASK_THRESHOLD else 0)
    if invert:
        out = out.point(lambda v: 255 - v)
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return out


def _mask_luminance_or_alpha(mask: Image.Image) -> Image.Image:
    has_alpha = mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info)
    if has_alpha:
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return mask.convert("L")


def mask_is_empty(mask: Image.Image) -> bool:
    """True when nothing would be repainted (an all-black mask): the engine can skip inpainting."""
    return mask.convert("L").getbbox() is None


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 masked content "fill": the masked area becomes colours smeared in from its surroundings.

    Unmasked pixels stay identical. Masked pixels get a coarse-to-fine blend of the surrounding
    colours (blurs of the unmasked pixels, weighted by how much of the blur window is unmasked), so
    the model starts from plausible colours and none of the original content under the mask.
    A partly masked pixel (blurred mask) keeps that part of its own colour.
    """
    rgb = np.asarray(to_rgb(image), dtype=np.float32)
    keep = 1.0 - np.asarray(_sized_mask(mask, image.size), dtype=np.float32) / 255.0
    # premultiplied colour and alpha side by side, so one blur serves both
    layer = np.concatenate([rgb * keep[..., None], keep[..., None]], axis=2)
    canvas = np.zeros_like(layer)  # the layers composited so far, premultiplied
    for radius, repeats in (*_FILL_PASSES, (0, 1)):
        # window averages: the share of unmasked pixels and their (premultiplied) colour
        blurred = _smooth(layer, radius) if radius > 0 else layer
        for _ in range(repeats):  # "over": each layer covers the canvas by its own alpha
            canvas = blurred + canvas * (1.0 - blurred[..., 3:])
    colour, alpha = canvas[..., :3], canvas[..., 3:]
    filled = np.where(alpha > 1e-6, colour / np.maximum(alpha, 1e-6), _NO_SURROUNDINGS)
    filled = np.where(keep[..., None] >= 1.0, rgb, filled)
    return Image.fromarray(np.clip(np.rint(filled), 0, 255).astype(np.uint8), "RGB")


def _sized_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    if mask.size != size:
        raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}; resize it first")
    return mask.convert("L")


def _smooth(layer: np.ndarray, radius: int) -> np.ndarray:
    """Gaussian-like mean of ``layer`` (H, W, K) over ~``radius`` px, ignoring what lies outside.

    Wide blurs run on a proportionally smaller copy and are scaled back up: the result is smooth
    anyway, and a 1024 px image then costs a fraction of a second instead of seconds.
    """
    height, width = layer.shape[:2]
    factor = max(1, radius // _SMOOTH_RADIUS)
    small_size = (max(1, -(-width // factor)), max(1, -(-height // factor)))
    small = _resize_channels(layer, small_size, Image.Resampling.BOX) if factor > 1 else layer
    small_radius = max(1, round(radius / factor))
    window = np.outer(_blur_1d_ones(small.shape[0], small_radius), _blur_1d_ones(small.shape[1], small_radius))
    blurred = _blur(small, small_radius) / window[..., None]
    return _resize_channels(blurred, (width, height), Image.Resampling.BILINEAR) if factor > 1 else blurred


def _resize_channels(values: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    channels = [
        Image.fromarray(np.ascontiguousarray(values[..., c]), "F").resize(size, resample)
        for c in range(values.shape[2])
    ]
    return np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=2)


def _blur(values: np.ndarray, radius: int) -> np.ndarray:
    """Repeated (2r+1)-wide box means over rows and columns (~Gaussian of sigma r); zeros outside.

    Cumulative sums make the cost independent of the radius, which matters for radius 256.
    """
    for _ in range(_BOX_PASSES):
        values = _box_mean(_box_mean(values, radius, axis=0), radius, axis=1)
    return values


def _box_mean(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * values.ndim
    pad[axis] = (radius + 1, radius)
    csum = np.cumsum(np.pad(values, pad), axis=axis)
    width = 2 * radius + 1
    hi = [slice(None)] * values.ndim
    lo = [slice(None)] * values.ndim
    hi[axis], lo[axis] = slice(width, None), slice(None, -width)
    return (csum[tuple(hi)] - csum[tuple(lo)]) / width


def _blur_1d_ones(length: int, radius: int) -> np.ndarray:
    """_blur of an all-ones line: how much of the window lies inside the image, per position.

    The 2-D blur of all ones is the outer product of two of these (the blur is separable).
    """
    line = np.ones(length, dtype=np.float32)
    for _ in range(_BOX_PASSES):
        line = _box_mean(line, radius, axis=0)
    return line


# --- "Only masked": crop, expand, paste back ------------------------------------------------------


def crop_region(mask: Image.Image, padding: int) -> Box:
    """Bounding box of the mask's non-zero pixels grown by ``padding``, clamped to the image.

    An empty mask gives the whole image (there is nothing to crop to; see :func:`mask_is_empty`).
    """
    width, height = mask.size
    bbox = mask.convert("L").getbbox()
    if bbox is None:
        return (0, 0, width, height)
    left, top, right, bottom = bbox
    pad = max(0, int(padding))
    return (max(left - pad, 0), max(top - pad, 0), min(right + pad, width), min(bottom + pad, height))


def expand_to_aspect(box: Box, width: int, height: int, image_size: tuple[int, int]) -> Box:
    """Grow ``box`` to the ``width``:``height`` aspect ratio, staying inside ``image_size``.

    The short side grows equally on both ends; where that crosses the image's edge the box slides
    back inside; where the image is too small the box takes the whole side.
    """
    left, top, right, bottom = box
    img_w, img_h = image_size
    if right <= left or bottom <= top:
        raise ValueError(f"box {box} is empty; compute it with crop_region from a non-empty mask")
    target = width / height
    if (right - left) / (bottom - top) > target:
        top, bottom = _grow_span(top, bottom, round((right - left) / target), img_h)
    else:
        left, right = _grow_span(left, right, round((bottom - top) * target), img_w)
    return (left, top, right, bottom)


def _grow_span(lo: int, hi: int, wanted: int, limit: int) -> tuple[int, int]:
    extra = min(wanted, limit) - (hi - lo)
    if extra <= 0:
        return lo, hi
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, hi


def paste_back(original: Image.Image, generated: Image.Image, mask: Image.Image, box: Box | None = None) -> Image.Image:
    """The final image: ``generated`` shown through the mask, ``original`` everywhere else.

    ``box`` None ("Whole picture"): ``generated`` has the original's size. With a box ("Only
    masked") ``generated`` is resized into the box first. As A1111's overlay, the mask is doubled
    (clipped), so pixels that were at least half masked come fully from the generation and pixels
    outside the mask are exactly the original's.
    """
    base = to_rgb(original)
    mask_l = _sized_mask(mask, base.size)
    if box is None:
        if generated.size != base.size:
            raise ValueError(
                f"generated image is {generated.size[0]}x{generated.size[1]} but the original is "
                f"{base.size[0]}x{base.size[1]}; pass the crop box for 'Only masked', or resize first"
            )
        placed = to_rgb(generated)
    else:
        left, top, right, bottom = box
        placed = base.copy()
        placed.paste(resize_image(generated, right - left, bottom - top, 1), (left, top))
    alpha = mask_l.point([min(255, 2 * v) for v in range(256)])
    return Image.composite(placed, base, alpha)


# --- latent-space masked content (torch) ----------------------------------------------------------


def latent_masked_content(latents: Tensor, latent_mask: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """A1111 ``inpainting_fill`` in latent space: what the masked latents start from.

    0 "fill" and 1 "original" leave the latents unchanged (fill works on the image, before
    encoding); 2 "latent noise" replaces the masked latents by ``noise``; 3 "latent nothing" by
    zeros. ``latent_mask`` is (B or 1, 1, h, w) in [0, 1], 1 = repaint (see :func:`mask_to_latent`).
    """
    if mode not in _LATENT_FILLS:
        valid = ", ".join(f"{i} {name!r}" for i, name in enumerate(MASKED_CONTENT))
        raise ValueError(f"unknown masked content {mode!r}; valid values: {valid}")
    replacement = _LATENT_FILLS[mode]
    if replacement is None:
        return latents
    repaint = latent_mask.to(device=latents.device, dtype=latents.dtype)
    return latents * (1 - repaint) + replacement(latents, noise) * repaint


_LATENT_FILLS: dict[int, Callable[[Tensor, Tensor], Tensor] | None] = {
    0: None,
    1: None,
    2: lambda latents, noise: _noise_like(latents, noise),
    3: lambda latents, noise: latents.new_zeros(latents.shape),
}


def _noise_like(latents: Tensor, noise: Tensor | None) -> Tensor:
    if noise is None or tuple(noise.shape) != tuple(latents.shape):
        got = None if noise is None else tuple(noise.shape)
        raise ValueError(f"'latent noise' needs noise of the latents' shape {tuple(latents.shape)}, got {got}")
    return noise.to(device=latents.device, dtype=latents.dtype)


def mask_to_latent(mask: Image.Image, latent_width: int, latent_height: int, *, binarize: bool = True) -> Tensor:
    """The mask at latent resolution, (1, 1, h, w) float32 in [0, 1] (area-averaged; rounded by default)."""
    import torch

    small = mask.convert("L").resize((latent_width, latent_height), Image.Resampling.BOX)
    values = np.asarray(small, dtype=np.float32) / 255.0
    if binarize:
        values = np.round(values)
    return torch.from_numpy(np.ascontiguousarray(values))[None, None]
