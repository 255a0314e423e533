"""Latents -> images exactly as the diffusers pipelines decode them, with a NaN/inf guard.

The pipelines' own decode (``output_type="pil"``):

* SD 1.x/2.x: ``vae.decode(latents / scaling_factor)``, then ``image_processor.postprocess``.
* SDXL: fp16 VAEs with ``force_upcast`` decode in fp32; ``latents_mean``/``latents_std`` when the
  VAE config has both, else ``/ scaling_factor``; the invisible watermark when the pipeline has one.
* SD3: ``latents / scaling_factor + shift_factor``.

``decode_latents`` does all of that for any pipeline (the config decides, not the class). A decode
in reduced precision that gives NaN or inf (an fp16 VAE overflowing: a black image) is retried in
fp32, and that VAE decodes in fp32 from then on, with a warning in the log. Upcasting is for the
call only: the weights stay in the pipeline's dtype, because the pipelines' own VAE encode (img2img,
inpaint) casts its input to the denoiser's dtype and would fail against an fp32 VAE. NaN already in the
latents is the denoiser's overflow, not the VAE's, and raises ``NonFiniteLatentsError``; a VAE
that gives NaN even in fp32 is damaged and raises ``VaeDecodeError``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

DECODE_FP32 = "_webui_decode_fp32"  # attribute on a VAE module: decode it in fp32


class NonFiniteLatentsError(RuntimeError):
    """The sampler produced NaN/inf latents; nothing the VAE does can make an image of them."""


class VaeDecodeError(RuntimeError):
    """The VAE itself is broken: NaN/inf even in fp32."""


def _cfg(vae: Any, name: str) -> Any:
    return getattr(vae.config, name, None)


def unscale_latents(vae: Any, latents: Any) -> Any:
    """Loop-space latents -> the VAE's latent space (mean/std, or scale and shift), in ``latents``' dtype."""
    import torch

    scale = vae.config.scaling_factor
    mean, std = _cfg(vae, "latents_mean"), _cfg(vae, "latents_std")
    if mean is not None and std is not None:
        channels = latents.shape[1]
        mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
        return latents * std_t / scale + mean_t
    shift = _cfg(vae, "shift_factor")
    return latents / scale + shift if shift is not None else latents / scale


def _execution_device(vae: Any) -> Any:
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(vae)


def _vae_dtype(vae: Any) -> Any:
    """The dtype the VAE computes in (its post_quant_conv when it has one, as SDXL's pipeline asks)."""
    conv = getattr(vae, "post_quant_conv", None)
    if conv is not None:
        for p in conv.parameters():
            return p.dtype
    return vae.dtype


def _decode_raw(vae: Any, latents: Any) -> Any:
    import torch

    z = unscale_latents(vae, latents.to(_vae_dtype(vae)))
    with torch.inference_mode():
        return vae.decode(z.to(_execution_device(vae)), return_dict=False)[0]


def _finite(t: Any) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


def mark_decode_fp32(vae: Any, on: bool = True) -> None:
    """Make every later decode of this VAE run in fp32 (its weights stay in their dtype)."""
    setattr(vae, DECODE_FP32, on)


def decodes_in_fp32(vae: Any) -> bool:
    import torch

    if _vae_dtype(vae) == torch.float32:
        return True
    force = vae.dtype == torch.float16 and bool(_cfg(vae, "force_upcast"))
    return force or bool(getattr(vae, DECODE_FP32, False))


def _cast(vae: Any, dtype: Any) -> None:
    """``float()`` / ``half()`` / ``bfloat16()``: the same cast as ``to(dtype=...)``, without the warning
    diffusers 0.42 logs on every ``to(dtype=...)`` of a model (it would repeat for each image)."""
    import torch

    casts = {torch.float32: vae.float, torch.float16: vae.half, torch.bfloat16: vae.bfloat16}
    cast = casts.get(dtype)
    if cast is None:
        vae.to(dtype=dtype)
    else:
        cast()


def _decode_fp32(vae: Any, latents: Any) -> Any:
    """Decode with the VAE cast to fp32 for the call, then cast back (a lossless round trip)."""
    import torch

    stored = vae.dtype
    if stored == torch.float32:
        return _decode_raw(vae, latents)
    _cast(vae, torch.float32)
    try:
        return _decode_raw(vae, latents)
    finally:
        _cast(vae, stored)


def decode_tensor(vae: Any, latents: Any) -> Any:
    """Latents (loop space) -> the VAE's output tensor in [-1, 1], never NaN/inf.

    Decodes in fp32 when the VAE is fp32, when an fp16 VAE says ``force_upcast`` (as SDXL's
    pipeline does) or when it was marked (``mark_decode_fp32``); in the VAE's dtype otherwise.
    A non-finite result in reduced precision is decoded again in fp32 and the VAE is marked.
    The weights keep their dtype, so the pipelines' own VAE encode (img2img) still matches them.
    """
    if not _finite(latents):
        raise NonFiniteLatentsError(
            "the sampler produced NaN or infinite values: the model overflowed in "
            f"{str(latents.dtype).removeprefix('torch.')}; use --precision fp32 or bf16, or another sampler"
        )
    fp32 = decodes_in_fp32(vae)
    decoded = _decode_fp32(vae, latents) if fp32 else _decode_raw(vae, latents)
    if _finite(decoded):
        return decoded
    if not fp32:
        log.warning(
            "the VAE gave NaN/inf in %s (a black image); decoding again in fp32, and from now on",
            str(_vae_dtype(vae)).removeprefix("torch."),
        )
        mark_decode_fp32(vae)
        decoded = _decode_fp32(vae, latents)
        if _finite(decoded):
            return decoded
    raise VaeDecodeError(
        "the VAE gives NaN/inf even in fp32 for finite latents; its weights are likely damaged:"
        " pick another VAE or download the checkpoint again"
    )


def decode_latents(pipe: Any, latents: Any, output_type: str = "pil") -> Any:
    """Latents of the loop (scaled space) -> images, as ``pipe(..., output_type=output_type)`` returns them."""
    decoded = decode_tensor(pipe.vae, latents)
    watermark = getattr(pipe, "watermark", None)
    if watermark is not None:
        decoded = watermark.apply_watermark(decoded)
    return pipe.image_processor.postprocess(decoded, output_type=output_type)
