"""Loading a checkpoint on the CPU and comparing two pipelines' weights exactly (the same bytes cast the same way)."""

from __future__ import annotations

import torch

from webui.models.loader import load_checkpoint


def load_cpu(path, cache_dir, dtype=torch.float32, **kwargs):
    return load_checkpoint(path, device="cpu", dtype=dtype, cache_dir=cache_dir, **kwargs)


def weights(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {n: m.state_dict() for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].keys() == wb[name].keys(), name
        for key, t in wa[name].items():
            other = wb[name][key]
            assert t.dtype == other.dtype and t.shape == other.shape, (name, key)
            assert torch.equal(t, other), (name, key)
