"""Attention kernels: PyTorch's SDPA by default; xformers on CUDA only when it measures faster.

diffusers already computes attention with ``scaled_dot_product_attention`` (``AttnProcessor2_0``
and its relatives), which picks flash / memory-efficient kernels on CUDA and a fused kernel on the
CPU. xformers is tried only where it can win (CUDA, package installed) and only kept when one
attention call at the model's size is faster with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from webui.speed.timing import best_ms, cuda_sync

ROUNDS = 5
MIN_GAIN = 1.05


def _xformers_installed() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken xformers build raises anything at import
        return False
    return True


def processors(pipe: Any) -> list[str]:
    """The attention processor classes the denoiser uses, e.g. ['AttnProcessor2_0']."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    found = getattr(model, "attn_processors", None) or {}
    return sorted({type(p).__name__ for p in found.values()})


def time_kernels(device: str, dtype: Any, tokens: int = 4096, heads: int = 10, dim: int = 64) -> tuple[float, float]:
    """(SDPA ms, xformers ms) for one self-attention of ``tokens`` tokens (a 1024px SDXL UNet's first level)."""
    import torch
    import torch.nn.functional as F
    import xformers.ops as xops

    q, k, v = (torch.randn(2, tokens, heads, dim, device=device, dtype=dtype) for _ in range(3))
    ms = best_ms(
        {
            "sdpa": lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
            "xformers": lambda: xops.memory_efficient_attention(q, k, v),
        },
        ROUNDS,
        sync=cuda_sync(device),
    )
    return ms["sdpa"], ms["xformers"]


def choose_attention(
    pipe: Any,
    device: str,
    dtype: Any,
    *,
    xformers_installed: Callable[[], bool] = _xformers_installed,
    measure: Callable[[str, Any], tuple[float, float]] = time_kernels,
) -> str:
    """Keep SDPA, or switch the pipeline to xformers when it is installed, on CUDA, and faster. Returns a note."""
    if device != "cuda":
        return f"attention: SDPA ({', '.join(processors(pipe)) or 'no attention layers'})"
    if not xformers_installed():
        return "attention: SDPA (xformers not installed)"
    sdpa_ms, xf_ms = measure(device, dtype)
    if xf_ms * MIN_GAIN <= sdpa_ms:
        pipe.enable_xformers_memory_efficient_attention()
        return f"attention: xformers (measured {xf_ms:.2f} ms vs SDPA {sdpa_ms:.2f} ms)"
    return f"attention: SDPA (measured {sdpa_ms:.2f} ms vs xformers {xf_ms:.2f} ms)"
