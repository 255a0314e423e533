"""Live preview: a cheap linear latent-to-RGB projection, no VAE.

Why linear: decoding with the VAE every few steps costs as much as a sampling step at full size; a
per-channel linear map of the latents (each family adapter's ``preview_factors``, fitted against VAE
decodes, the numbers ComfyUI also uses) gives a recognisable 1/8-size picture in well under a
millisecond. The engine calls :func:`latents_to_preview` from the step callback on the loop's latents
(the scaled latent space).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from webui.families.base import FamilyAdapter, PreviewFactors
from webui.families.registry import with_channels

if TYPE_CHECKING:
    from torch import Tensor

Factors = PreviewFactors  # (channels x RGB matrix, RGB bias)
LATENT_SCALE = 8  # one latent pixel is 8x8 image pixels


def latent_rgb_factors(family: FamilyAdapter) -> Factors | None:
    """The family's own (matrix, bias) (``FamilyAdapter.preview_factors``), else those of a built-in family
    with as many latent channels (families that share a VAE share factors), else None."""
    channels = family.latent_channels
    for candidate in (family, *with_channels(channels)):
        factors = getattr(candidate, "preview_factors", None)
        if factors is not None and len(factors[0]) == channels:
            return factors
    return None


def latents_to_preview(latents: Tensor, family: FamilyAdapter, max_side: int = 512) -> Image.Image:
    """RGB preview of the first image of ``latents`` ((B, C, h, w) or (C, h, w)).

    Upscaled with nearest neighbour up to 8x (the VAE's factor) and at most ``max_side`` on the
    longer side. Latents whose channels have no factors are shown by their first channels, each
    stretched to its own range, so a preview never stops a generation.
    """
    import torch

    first = latents.detach()[0] if latents.dim() == 4 else latents.detach()
    if first.dim() != 3:
        raise ValueError(f"latents must be (B, C, h, w) or (C, h, w), got shape {tuple(latents.shape)}")
    first = first.float()
    factors = latent_rgb_factors(family)
    if factors is not None and len(factors[0]) == first.shape[0]:
        matrix = torch.tensor(factors[0], dtype=first.dtype, device=first.device)
        bias = torch.tensor(factors[1], dtype=first.dtype, device=first.device)
        rgb = ((torch.einsum("chw,cr->hwr", first, matrix) + bias + 1.0) / 2.0).clamp(0.0, 1.0)
    else:
        rgb = _channels_as_rgb(first)
    pixels = (rgb * 255.0).round().to(torch.uint8).cpu().numpy()
    return _upscale(Image.fromarray(pixels, "RGB"), max_side)


def _channels_as_rgb(latent: Tensor) -> Tensor:
    """Fallback: the first three channels (repeated if fewer), each normalised to [0, 1]; (h, w, 3)."""
    chans = latent[[i % latent.shape[0] for i in range(3)]]
    low = chans.amin(dim=(1, 2), keepdim=True)
    high = chans.amax(dim=(1, 2), keepdim=True)
    return ((chans - low) / (high - low).clamp_min(1e-6)).permute(1, 2, 0)


def _upscale(image: Image.Image, max_side: int) -> Image.Image:
    width, height = image.size
    scale = min(float(LATENT_SCALE), max(1, max_side) / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.NEAREST)
