"""The load map: a single file's weights read straight from the mapped file, converted once.

Every tiny family is written in the original single-file layout and loaded twice through
``load_checkpoint``: once through diffusers' ``from_single_file`` (``mapped=False``), once through the
map (the first load traces it, later ones read it). The same bytes cast the same way, so the weights
must be equal exactly, the map must be reused, and it must be traced again when the file changes.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.pipeline_weights import assert_same_weights as _assert_same
from tests.pipeline_weights import load_cpu as _load
from webui.models import load_map
from webui.models.ldm_export import pipeline_to_original, save_state_dict
from webui.models.loader import ModelLoadError

FAMILIES = ["sd15", "sdxl", "sdxl_refiner", "sd3", "sd35_large"]
FIRST = "convert (first load)"


def _maps(cache_dir):
    return sorted((cache_dir / load_map.MAP_DIR).glob("*.json"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_map_gives_the_same_weights_as_from_single_file(tiny_checkpoint, tmp_path, t5_tokenizer_dir, family, dtype):
    path = tiny_checkpoint(family).path
    kwargs = dict(t5_tokenizer_dir=t5_tokenizer_dir)
    standard = _load(path, tmp_path, dtype, mapped=False, **kwargs)
    first = _load(path, tmp_path, dtype, **kwargs)
    assert FIRST in first.times.parts and "read+cast" in first.times.parts
    again = _load(path, tmp_path, dtype, **kwargs)
    assert FIRST not in again.times.parts, "the second load traced the conversion again"
    assert type(again.pipeline) is type(standard.pipeline)
    _assert_same(standard.pipeline, first.pipeline)
    _assert_same(standard.pipeline, again.pipeline)
    assert again.pipeline.scheduler.config == standard.pipeline.scheduler.config
    for name, part in standard.pipeline.components.items():  # the same tokenizers, the same None parts
        assert type(getattr(again.pipeline, name)) is type(part), name
    assert len(_maps(tmp_path)) == 1


def test_most_weights_are_views_of_the_file_and_the_side_file_is_small(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("sd3").path
    _load(path, tmp_path)
    (json_path,) = _maps(tmp_path)
    doc = json.loads(json_path.read_text())
    spans = [s for comp in doc["components"].values() for s in comp.values()]
    in_file = [s for s in spans if not s[4]]
    assert len(in_file) > 0.9 * len(spans)
    assert doc["extra_bytes"] <= load_map.MAX_EXTRA_SHARE * path.stat().st_size
    assert {"transformer", "vae", "text_encoder", "text_encoder_2"} <= set(doc["components"])


def test_a_file_rewritten_with_other_values_is_traced_again_and_loads_its_new_values(tiny_checkpoint, tmp_path):
    pipe = tiny_checkpoint("sd3").pipe
    state = pipeline_to_original(pipe, "sd3")
    path = save_state_dict(state, tmp_path / "model.safetensors")
    cache = tmp_path / "cache"
    _load(path, cache)
    # same names, shapes and offsets (the same header), other values: the side file is stale
    changed = {k: (v + 1 if v.is_floating_point() else v) for k, v in state.items()}
    save_state_dict(changed, path)
    os.utime(path, ns=(1, 1_000_000_000))
    reloaded = _load(path, cache)
    assert FIRST in reloaded.times.parts
    standard = _load(path, tmp_path / "standard", mapped=False)
    _assert_same(standard.pipeline, reloaded.pipeline)
    assert len(_maps(cache)) == 1


def test_components_given_from_elsewhere_are_not_mapped_and_a_later_full_load_traces_them(
    tiny_checkpoint, tmp_path, t5_tokenizer_dir
):
    from webui.models.ldm_export import t5_to_original

    ckpt = tiny_checkpoint("sd3", include=("transformer", "vae", "clip_l", "clip_g"))
    t5_file = save_state_dict(t5_to_original(ckpt.pipe.text_encoder_3), tmp_path / "t5xxl.safetensors")
    with_t5 = _load(ckpt.path, tmp_path, text_encoder_files={"t5xxl": t5_file}, t5_tokenizer_dir=t5_tokenizer_dir)
    assert with_t5.pipeline.text_encoder_3 is not None
    (json_path,) = _maps(tmp_path)
    assert "text_encoder_3" not in json.loads(json_path.read_text())["components"]
    dropped = _load(ckpt.path, tmp_path, load_kwargs={"text_encoder_3": None, "tokenizer_3": None})
    assert dropped.pipeline.text_encoder_3 is None and FIRST not in dropped.times.parts


def test_a_file_of_mixed_dtypes_takes_the_standard_load(tiny_checkpoint, tmp_path):
    state = pipeline_to_original(tiny_checkpoint("sd15").pipe, "sd15")
    first_vae = next(k for k in state if k.startswith("first_stage_model.") and state[k].is_floating_point())
    state[first_vae] = state[first_vae].half()
    path = save_state_dict(state, tmp_path / "mixed.safetensors")
    loaded = _load(path, tmp_path / "cache")
    assert "read+convert+cast" in loaded.times.parts and not _maps(tmp_path / "cache")


def test_nan_weights_are_refused_through_the_map_and_a_clean_file_is_checked_once(tiny_checkpoint, tmp_path):
    state = pipeline_to_original(tiny_checkpoint("sd15").pipe, "sd15")
    key = next(k for k in state if k.startswith("model.diffusion_model.") and k.endswith("weight"))
    bad = dict(state)
    bad[key] = state[key].clone()
    bad[key].view(-1)[0] = float("nan")
    with pytest.raises(ModelLoadError, match="NaN"):
        _load(save_state_dict(bad, tmp_path / "bad.safetensors"), tmp_path / "cache")
    clean = save_state_dict(state, tmp_path / "clean.safetensors")
    first = _load(clean, tmp_path / "cache2")
    assert "finite check" in first.times.parts
    again = _load(clean, tmp_path / "cache2")
    assert "finite check" not in again.times.parts or again.times.parts["finite check"] < 0.005
    (json_path,) = _maps(tmp_path / "cache2")
    assert json.loads(json_path.read_text())["finite"] == {"torch.float32": True}


def test_a_read_only_cache_still_loads_through_the_map(tiny_checkpoint, tmp_path, monkeypatch):
    path = tiny_checkpoint("sdxl").path
    standard = _load(path, tmp_path / "standard", mapped=False)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(load_map, "save", refuse)
    loaded = _load(path, tmp_path / "cache")
    assert FIRST in loaded.times.parts
    _assert_same(standard.pipeline, loaded.pipeline)


def test_a_stored_map_from_another_version_or_damaged_is_not_used(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("sd15").path
    _load(path, tmp_path)
    (json_path,) = _maps(tmp_path)
    json_path.write_text("{not json")
    assert FIRST in _load(path, tmp_path).times.parts
    doc = json.loads(json_path.read_text())
    doc["version"] = load_map.MAP_VERSION + 1
    json_path.write_text(json.dumps(doc))
    assert FIRST in _load(path, tmp_path).times.parts
