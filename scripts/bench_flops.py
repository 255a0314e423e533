"""FLOPs of one denoising step and the peak of the device, for the "share of peak" column of bench_speed.

The FLOPs are counted by ``torch.utils.flop_counter`` on a full-size model built on the meta device (no
weights, no computation: about a second), for one step with CFG (batch 2). The peaks are measured on a
CPU (a large matrix product per dtype) and looked up for known GPUs (dense tensor-core figures from the
vendors' data sheets; fp32 is the non-tensor-core rate, as torch runs fp32 matmuls by default).
"""

from __future__ import annotations

import time

# GPU name fragment -> (fp16/bf16 dense tensor TFLOP/s, fp32 TFLOP/s). First match wins: longer names first.
GPU_PEAKS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("H100 PCIe", (756.0, 51.0)),
    ("H100", (989.0, 67.0)),  # SXM
    ("H200", (989.0, 67.0)),
    ("A100", (312.0, 19.5)),
    ("L40S", (362.0, 91.6)),
    ("L4", (121.0, 30.3)),
    ("RTX 4090", (165.2, 82.6)),  # fp32 accumulate
    ("RTX 3090", (71.0, 35.6)),
)

# SD3's text sequence: 77 CLIP tokens + 256 T5 tokens (zeros when T5 is not loaded, same shape).
_SD3_TOKENS = 77 + 256


def _denoiser_and_inputs(family: str, size: int):
    import torch
    from bench_models import _parts

    parts = dict(_parts(family))
    lat = size // 8
    if family == "sd3":
        model = parts["transformer"]()
        kwargs = {
            "hidden_states": torch.randn(2, 16, lat, lat),
            "encoder_hidden_states": torch.randn(2, _SD3_TOKENS, 4096),
            "pooled_projections": torch.randn(2, 2048),
            "timestep": torch.tensor([500.0, 500.0]),
        }
        return model, (), kwargs
    model = parts["unet"]()
    width = 2048 if family == "sdxl" else 768
    args = (torch.randn(2, 4, lat, lat), torch.tensor([500, 500]), torch.randn(2, 77, width))
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)}
    return model, args, kwargs


def step_flops(family: str, size: int) -> float:
    """FLOPs of one denoiser call with CFG (batch 2) at ``size`` x ``size`` pixels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, args, kwargs = _denoiser_and_inputs(family, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*args, **kwargs)
    return float(counter.get_total_flops())


def cpu_matmul_peak(dtype_name: str, n: int = 2048, rounds: int = 5) -> float:
    """FLOP/s of the best of ``rounds`` n x n matrix products in this dtype on the CPU (oneDNN's kernels)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def gpu_peak(name: str, precision: str) -> float | None:
    """Data-sheet FLOP/s of a known GPU for this precision, or None."""
    for fragment, (half, single) in GPU_PEAKS:
        if fragment in name:
            return (single if precision == "fp32" else half) * 1e12
    return None
