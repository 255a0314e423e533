"""Tiny upscaler models in layouts spandrel recognises, built here with seeded random weights.

``compact``: Real-ESRGAN's SRVGGNetCompact (keys ``body.N.weight``); ``esrgan``: an RRDB net
(ESRGAN's old ``model.N`` layout). A few channels each, so that they run in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _seeded(module: Any, seed: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    return {k: (torch.randn(v.shape, generator=generator) * 0.2).contiguous() for k, v in state.items()}


def compact_state(scale: int = 2, feat: int = 4, convs: int = 2, seed: int = 0) -> dict[str, Any]:
    from webui.upscale.loading import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    return _seeded(Compact(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=convs, upscale=scale), seed)


def esrgan_state(scale: int = 2, filters: int = 4, blocks: int = 1, seed: int = 0) -> dict[str, Any]:
    from webui.upscale.loading import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet

    return _seeded(RRDBNet(in_nc=3, out_nc=3, num_filters=filters, num_blocks=blocks, scale=scale), seed)


def save_safetensors(state: dict[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def save_pth(state: Any, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


class _RunsCode:
    """A pickle payload that would call a function when loaded (here a harmless one that leaves a mark)."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.mark,))


def save_code_pickle(state: dict[str, Any], path: Path, mark: Path) -> Path:
    """A .pth whose pickle runs ``Path(mark).touch()`` when unpickled by a loader that runs code."""
    return save_pth({"params": state, "payload": _RunsCode(mark)}, path)
