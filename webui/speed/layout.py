"""channels_last memory layout for the convolution-heavy modules (UNet, VAE), chosen by measurement.

``auto`` decides for each module on its own: it times one of the UNet's ResNet blocks at a
UNet-sized input, and one of the VAE decoder's full-resolution ResNet blocks at a decode-sized
input, in both layouts (interleaved, best of a few rounds: about a second on a CPU), and keeps
channels_last only where it is clearly faster. On a CPU it can pay off for the VAE (large
activations) and not for the UNet. The MMDiT of SD3 is made of linear layers: only its VAE is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.speed.timing import best_ms, cuda_sync

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


def _full_resolution_resnet(module: Any) -> Any:
    """A ResNet block of the decoder's full-resolution level (its narrowest blocks), where most of a
    decode's time goes. Not simply the last one found: the mid block registers after the up blocks."""
    from diffusers.models.resnet import ResnetBlock2D

    found = [
        m for m in module.modules() if isinstance(m, ResnetBlock2D) and m.conv1.in_channels == m.conv2.out_channels
    ]
    return min(found, key=lambda m: m.conv1.in_channels) if found else None


# module -> (how to find the block to time, input side, batch, what the timing is of)
_PROBES: dict[str, tuple[Callable[[Any], Any], int, int, str]] = {
    "unet": (_first_resnet, 32, 2, "UNet ResNet block"),
    "vae": (lambda vae: _full_resolution_resnet(getattr(vae, "decoder", vae)), 128, 1, "VAE decoder block"),
}


def time_resnet(block: Any, size: int = 32, batch: int = 2, rounds: int = ROUNDS) -> tuple[float, float]:
    """(contiguous ms, channels_last ms) for one ResNet block; leaves the block contiguous."""
    import torch

    param = next(block.parameters())
    x = torch.randn(batch, block.conv1.in_channels, size, size, device=param.device, dtype=param.dtype)
    temb = None
    if getattr(block, "time_emb_proj", None) is not None:
        temb = torch.randn(batch, block.time_emb_proj.in_features, device=param.device, dtype=param.dtype)
    inputs = {fmt: x.contiguous(memory_format=fmt) for fmt in (torch.contiguous_format, torch.channels_last)}
    with torch.inference_mode():
        ms = best_ms(
            {fmt: (lambda xx=xx: block(xx, temb)) for fmt, xx in inputs.items()},
            rounds,
            before=lambda fmt: block.to(memory_format=fmt),
            sync=cuda_sync(param.device),
        )
    block.to(memory_format=torch.contiguous_format)
    return ms[torch.contiguous_format], ms[torch.channels_last]


def decide_channels_last(
    pipe: Any, choice: str = "auto", measure: Callable[..., tuple[float, float]] = time_resnet
) -> dict[str, LayoutDecision]:
    """For each convolution module the pipeline has (``unet``, ``vae``): channels_last or not, and why.

    ``measure(block, size=, batch=)`` gives (contiguous ms, channels_last ms) for one block.
    """
    if choice not in CHANNELS_LAST_CHOICES:
        raise ValueError(f"channels_last must be one of {', '.join(CHANNELS_LAST_CHOICES)}, got {choice!r}")
    decisions = {}
    for name in CONV_MODULES:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        if choice != "auto":
            decisions[name] = LayoutDecision(choice == "on", f"channels_last {choice} (setting)")
            continue
        find, size, batch, what = _PROBES[name]
        block = find(module)
        if block is None:
            continue
        plain, last = measure(block, size=size, batch=batch)
        faster = last * MIN_GAIN <= plain
        verdict = "faster" if faster else "not faster"
        decisions[name] = LayoutDecision(
            faster, f"{verdict} (measured {last:.1f} vs {plain:.1f} ms per {what})", plain, last
        )
    return decisions


def describe_layout(decisions: dict[str, LayoutDecision]) -> str:
    """One line for the load message, e.g. "channels_last: unet not faster (...), vae faster (...)"."""
    reasons = {d.reason for d in decisions.values()}
    if len(reasons) == 1 and next(iter(reasons)).startswith("channels_last"):
        return next(iter(reasons))  # the setting: the same for every module
    if not decisions:
        return "channels_last: no convolution module to lay out"
    return "channels_last: " + ", ".join(f"{name} {d.reason}" for name, d in decisions.items())


def apply_layout(pipe: Any, channels_last: bool, modules: tuple[str, ...] = CONV_MODULES) -> list[str]:
    """Put these modules (default: the UNet and VAE) in channels_last or back to contiguous; returns those changed."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    changed = []
    for name in modules:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=fmt)
            changed.append(name)
    return changed
