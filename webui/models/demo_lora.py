"""A tiny LoRA for each demo model, so the LoRA panel and ``<lora:...>`` can be tried before any download.

``write_demo_lora(pipe, family, path)`` writes a rank-4 LoRA in the diffusers layout
(``unet.<module>.lora_A.weight`` / ``lora_B.weight``, ``text_encoder.``, ``text_encoder_2.``,
``transformer.``) over the attention and MLP linears of the tiny pipeline it is given, so its shapes
fit the demo checkpoint of that family and it loads through the app's real LoRA loader
(``webui.models.lora`` identifies it from the header, ``lora_manager`` attaches it). Random weights:
it changes the noise a demo model makes, nothing more. The file is marked ``webui.demo`` like the
demo checkpoints and written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from webui.families.registry import BUILTIN

LORA_FOLDER = "Lora"
# family -> the pipeline components its demo LoRA targets (the text encoders too, as most LoRAs do)
COMPONENTS: dict[str, tuple[str, ...]] = {f.id: f.demo_lora_components for f in BUILTIN if f.demo_lora_components}
RANK = 4
SCALE = 0.1  # small next to the tiny models' weights: a visible change, not a different model


def demo_lora_name(family: str) -> str:
    return f"demo-{family}-lora.safetensors"


def demo_lora_path(models_dir: Path, family: str) -> Path:
    return Path(models_dir) / LORA_FOLDER / demo_lora_name(family)


def _targets(model: Any, component: str) -> list[tuple[str, Any]]:
    import torch

    inside = "layers" if component.startswith("text_encoder") else "transformer_blocks"
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and inside in name and "lora_" not in name
    ]


def write_demo_lora(pipe: Any, family: str, path: Path, seed: int = 0) -> Path:
    """Write the demo LoRA of ``family`` for ``pipe`` (its tiny pipeline) to ``path``; returns ``path``."""
    import torch
    from safetensors.torch import save_file

    from webui.models.demo import DEMO_METADATA_KEY

    if family not in COMPONENTS:
        raise ValueError(f"no demo LoRA for {family!r}; choose one of {', '.join(COMPONENTS)}")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for component in COMPONENTS[family]:
        for name, linear in _targets(getattr(pipe, component), component):
            key = f"{component}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, linear.in_features, generator=generator) * SCALE
            tensors[f"{key}.lora_B.weight"] = torch.randn(linear.out_features, RANK, generator=generator) * SCALE
    meta = {DEMO_METADATA_KEY: "true", "modelspec.title": f"Demo {family} LoRA (random weights)"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
