"""channels_last memory layout for the convolution-heavy modules (UNet, VAE), chosen by measurement.

``auto`` times one of the model's own ResNet blocks at a UNet-sized input in both layouts
(interleaved, best of a few rounds: well under a second on a CPU) and keeps channels_last only
when it is clearly faster. The MMDiT of SD3 is made of linear layers; layout does not apply to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHANNELS_LAST_CHOICES = ("auto", "on", "off")
CONV_MODULES = ("unet", "vae")
ROUNDS = 5
MIN_GAIN = 1.03  # channels_last must be at least 3% faster to be kept


@dataclass(frozen=True)
class LayoutDecision:
    channels_last: bool
    reason: str
    contiguous_ms: float = 0.0
    channels_last_ms: float = 0.0


def _first_resnet(module: Any) -> Any:
    from diffusers.models.resnet import ResnetBlock2D

    found = [m for m in module.modules() if isinstance(m, ResnetBlock2D) and m.conv1.in_channels >= 64]
    # a block of the second resolution level: the size most of a UNet's time is spent at
    return found[min(2, len(found) - 1)] if found else None


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def time_resnet(block: Any, size: int = 32, batch: int = 2, rounds: int = ROUNDS) -> tuple[float, float]:
    """(contiguous ms, channels_last ms) for one ResNet block; leaves the block contiguous."""
    import torch

    param = next(block.parameters())
    x = torch.randn(batch, block.conv1.in_channels, size, size, device=param.device, dtype=param.dtype)
    temb = None
    if getattr(block, "time_emb_proj", None) is not None:
        temb = torch.randn(batch, block.time_emb_proj.in_features, device=param.device, dtype=param.dtype)
    formats = (torch.contiguous_format, torch.channels_last)
    best = {f: float("inf") for f in formats}
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0 warms up
            for fmt in formats:
                block.to(memory_format=fmt)
                xx = x.contiguous(memory_format=fmt)
                _sync(param.device)
                start = time.perf_counter()
                block(xx, temb)
                _sync(param.device)
                if r:
                    best[fmt] = min(best[fmt], time.perf_counter() - start)
    block.to(memory_format=torch.contiguous_format)
    return best[torch.contiguous_format] * 1e3, best[torch.channels_last] * 1e3


def decide_channels_last(
    pipe: Any, choice: str = "auto", measure: Callable[[Any], tuple[float, float]] = time_resnet
) -> LayoutDecision:
    if choice not in CHANNELS_LAST_CHOICES:
        raise ValueError(f"channels_last must be one of {', '.join(CHANNELS_LAST_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return LayoutDecision(choice == "on", f"channels_last {choice} (setting)")
    unet = getattr(pipe, "unet", None)
    block = _first_resnet(unet) if unet is not None else None
    if block is None:
        return LayoutDecision(False, "no UNet: memory layout does not matter for a transformer")
    plain, last = measure(block)
    faster = last * MIN_GAIN <= plain
    verdict = "faster" if faster else "not faster"
    reason = f"channels_last {verdict} (measured {last:.1f} vs {plain:.1f} ms per ResNet block)"
    return LayoutDecision(faster, reason, plain, last)


def apply_layout(pipe: Any, channels_last: bool) -> list[str]:
    """Put the UNet and VAE in channels_last (or back to contiguous); returns the modules changed."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    changed = []
    for name in CONV_MODULES:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=fmt)
            changed.append(name)
    return changed
