"""Converted copies: the weights a mapped load cast are kept in ``cache/converted/`` and mapped by the next load.

The tiny checkpoints are fp32 files loaded in bf16 (a cast, as a fp16 file computed in bf16 or fp32 on a CPU
is). The copy holds the same bytes the cast made, so the weights must equal ``from_single_file``'s exactly;
a load from the copy must view it (no new memory), never change it, and a changed file or a damaged copy
must not be used.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.pipeline_weights import assert_same_weights as _assert_same
from tests.pipeline_weights import load_cpu
from tests.pipeline_weights import weights as _weights
from webui.models import converted_copy, load_map
from webui.models.ldm_export import pipeline_to_original, save_state_dict
from webui.models.mapped_load import read_weights
from webui.models.safetensors_header import read_header

GIB = 1 << 30
WROTE = "write converted copy"


def _load(path, cache_dir, dtype=torch.bfloat16, **kwargs):
    return load_cpu(path, cache_dir, dtype, **kwargs)


def _copies(cache_dir):
    return sorted((cache_dir / converted_copy.COPY_DIR).glob("*.safetensors"))


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_the_next_load_maps_the_copy_and_gives_the_same_weights(tiny_checkpoint, tmp_path, family):
    path = tiny_checkpoint(family).path
    standard = _load(path, tmp_path / "standard", mapped=False)
    first = _load(path, tmp_path, copy_budget=GIB)
    assert WROTE in first.times.parts
    (copy,) = _copies(tmp_path)
    again = _load(path, tmp_path, copy_budget=GIB)
    assert WROTE not in again.times.parts
    _assert_same(standard.pipeline, again.pipeline)
    size = copy.stat().st_size
    for name, weights in _weights(again.pipeline).items():
        for key, t in weights.items():
            if t.is_floating_point():  # a view of the mapped copy, not a tensor of its own
                assert t.untyped_storage().nbytes() == size, (name, key)


def test_writing_into_a_mapped_weight_changes_neither_the_copy_nor_the_next_load(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("sd15").path
    standard = _load(path, tmp_path / "standard", mapped=False)
    _load(path, tmp_path, copy_budget=GIB)
    (copy,) = _copies(tmp_path)
    before = copy.read_bytes()
    mapped = _load(path, tmp_path, copy_budget=GIB)
    with torch.no_grad():
        for p in mapped.pipeline.unet.parameters():
            p.add_(1)
    del mapped
    assert copy.read_bytes() == before
    _assert_same(standard.pipeline, _load(path, tmp_path, copy_budget=GIB).pipeline)


def test_a_changed_file_gets_a_new_copy_with_its_new_values(tiny_checkpoint, tmp_path):
    state = pipeline_to_original(tiny_checkpoint("sd15").pipe, "sd15")
    path = save_state_dict(state, tmp_path / "model.safetensors")
    cache = tmp_path / "cache"
    _load(path, cache, copy_budget=GIB)
    save_state_dict({k: (v + 1 if v.is_floating_point() else v) for k, v in state.items()}, path)
    os.utime(path, ns=(1, 1_000_000_000))
    reloaded = _load(path, cache, copy_budget=GIB)
    assert WROTE in reloaded.times.parts
    _assert_same(_load(path, tmp_path / "standard", mapped=False).pipeline, reloaded.pipeline)
    assert len(_copies(cache)) == 1


def test_a_damaged_copy_is_not_used_and_is_made_again(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("sd15").path
    _load(path, tmp_path, copy_budget=GIB)
    (copy,) = _copies(tmp_path)
    copy.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    loaded = _load(path, tmp_path, copy_budget=GIB)
    assert WROTE in loaded.times.parts
    _assert_same(_load(path, tmp_path / "standard", mapped=False).pipeline, loaded.pipeline)


def test_the_copies_keep_to_their_budget_and_only_idle_ones_make_room(tiny_checkpoint, tmp_path):
    state = pipeline_to_original(tiny_checkpoint("sd15").pipe, "sd15")
    a = save_state_dict(state, tmp_path / "a.safetensors")
    b = save_state_dict(state, tmp_path / "b.safetensors")
    cache = tmp_path / "cache"
    _load(a, cache, copy_budget=GIB)
    (copy_a,) = _copies(cache)
    one = copy_a.stat().st_size
    room_for_one = int(1.5 * one)
    # a was used just now: b's copy is not kept (models used in turn would push each other out)
    assert WROTE not in _load(b, cache, copy_budget=room_for_one).times.parts
    assert _copies(cache) == [copy_a]
    # a unused for two days: it makes room for b
    old = copy_a.stat().st_mtime - 2 * 24 * 3600
    os.utime(copy_a, (old, old))
    assert WROTE in _load(b, cache, copy_budget=room_for_one).times.parts
    (copy_b,) = _copies(cache)
    assert copy_b != copy_a
    small = _load(a, cache, copy_budget=one // 2)  # a copy would not fit at all: none is written
    assert WROTE not in small.times.parts and _copies(cache) == [copy_b]
    assert WROTE not in _load(a, tmp_path / "none").times.parts  # the default: no budget, no copies
    assert not _copies(tmp_path / "none")


def test_the_auto_budget_is_half_the_free_disk(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    assert abs(converted_copy.budget_bytes(-1, tmp_path) - free // 2) < 64 << 20
    assert converted_copy.budget_bytes(0, tmp_path) == 0
    assert converted_copy.budget_bytes(2, tmp_path) == 2 * GIB


@pytest.mark.parametrize("view_file", [True, False])
def test_weights_in_their_final_dtype_are_views_of_the_file_only_when_asked(tmp_path, view_file):
    path = save_state_dict({"a": torch.randn(64, 32), "b": torch.randn(128)}, tmp_path / "w.safetensors")
    header = read_header(path)
    mapped = load_map.MappedFile(path, header)
    spans = {
        name: load_map.Span(
            "float32", info.shape, load_map.contiguous_stride(info.shape), header.data_start + info.start
        )
        for name, info in header.tensors.items()
    }
    result = read_weights(mapped, spans, None, "x", torch.float32, (), view_file=view_file)
    base = mapped.bytes.untyped_storage().data_ptr()
    mapped.close()
    shares = {n: t.untyped_storage().data_ptr() == base for n, t in result.weights.items()}
    assert shares == {"a": view_file, "b": view_file}
    assert (not result.computed) == view_file
    for name, t in result.weights.items():  # the views outlive the closed MappedFile
        assert torch.equal(t, mapped_value(path, name))


def mapped_value(path, name):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)
