"""The catalog finds models in A1111 and ComfyUI layouts and never fails on a bad file."""

from __future__ import annotations

import json
import os

import pytest

from tests import headers as H
from webui.models.catalog import ModelCatalog


def test_a1111_layout(tmp_path):
    H.write_safetensors(tmp_path / "Stable-diffusion" / "sd15.safetensors", H.SD15)
    H.write_safetensors(tmp_path / "Stable-diffusion" / "xl" / "base.safetensors", H.SDXL)
    H.write_safetensors(tmp_path / "Lora" / "style.safetensors", H.KOHYA_LORA)
    H.write_safetensors(tmp_path / "VAE" / "vae.safetensors", H.VAE)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    assert [(e.name, e.family) for e in cat.entries()] == [("sd15.safetensors", "sd15"), ("xl/base.safetensors", "sdxl")]
    assert [e.name for e in cat.entries("lora")] == ["style.safetensors"]
    assert [e.info["latent_channels"] for e in cat.entries("vae")] == [4]


def test_comfyui_layout(tmp_path):
    H.write_safetensors(tmp_path / "checkpoints" / "sd3.safetensors", H.SD3_MEDIUM)
    H.write_safetensors(tmp_path / "loras" / "l.safetensors", H.KOHYA_LORA)
    H.write_safetensors(tmp_path / "text_encoders" / "t5xxl_fp16.safetensors", H.T5_FILE)
    H.write_safetensors(tmp_path / "clip" / "clip_l.safetensors", H.CLIP_L_FILE)
    cat = ModelCatalog(tmp_path)
    cat.ensure_folders()  # must not add A1111 folders beside ComfyUI's
    assert not (tmp_path / "Stable-diffusion").exists() and not (tmp_path / "Lora").exists()
    cat.refresh()
    assert [e.family for e in cat.entries()] == ["sd3"]
    assert {e.info["slot"] for e in cat.entries("text_encoder")} == {"t5xxl", "clip_l"}


def test_ensure_folders_creates_a1111_names(tmp_path):
    ModelCatalog(tmp_path).ensure_folders()
    assert {p.name for p in tmp_path.iterdir()} == {
        "Stable-diffusion", "Lora", "VAE", "text_encoder", "ControlNet", "clip_vision"
    }


def test_bad_files_become_entries_with_reasons(tmp_path):
    ckpts = tmp_path / "Stable-diffusion"
    H.write_safetensors(ckpts / "good.safetensors", H.SD15)
    H.write_safetensors(ckpts / "a_lora.safetensors", H.KOHYA_LORA)
    H.write_safetensors(ckpts / "flux.safetensors", H.FLUX)
    (ckpts / "empty.safetensors").write_bytes(b"")
    (ckpts / "notes.safetensors").write_text("<html>404</html>" * 10)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    by_name = {e.name: e for e in cat.entries()}
    assert by_name["good.safetensors"].usable
    assert "LoRA" in by_name["a_lora.safetensors"].error
    assert "Flux" in by_name["flux.safetensors"].error
    assert "too small" in by_name["empty.safetensors"].error
    assert "HTML" in by_name["notes.safetensors"].error
    assert [e.name for e in cat.usable()] == ["good.safetensors"]


def test_lora_in_vae_folder_is_explained(tmp_path):
    H.write_safetensors(tmp_path / "VAE" / "x.safetensors", H.KOHYA_LORA)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    assert "move it to models/Lora" in cat.entries("vae")[0].error


def test_ckpt_listed_without_unpickling(tmp_path):
    canary = tmp_path / "canary"
    ckpt = tmp_path / "Stable-diffusion" / "old.ckpt"
    ckpt.parent.mkdir(parents=True)
    # Not even a valid pickle: the scan must not open it at all.
    ckpt.write_bytes(b"\x80\x04garbage" + str(canary).encode())
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    (entry,) = cat.entries()
    assert entry.format == "ckpt" and entry.usable and not canary.exists()


def test_diffusers_folder_entry(tmp_path):
    folder = tmp_path / "Stable-diffusion" / "my-sdxl"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionXLPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        )
    )
    (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": 4, "projection_class_embeddings_input_dim": 2816}))
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    (entry,) = cat.entries()
    assert (entry.name, entry.format, entry.family) == ("my-sdxl", "diffusers", "sdxl")
    assert set(entry.record.components) == {"unet", "vae", "clip_l", "clip_g"}


def test_refresh_sees_new_changed_and_removed_files_and_rereads_only_changed(tmp_path, monkeypatch):
    ckpts = tmp_path / "Stable-diffusion"
    a = H.write_safetensors(ckpts / "a.safetensors", H.SD15)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    import webui.models.identify as identify_module  # the catalog's one detector reads the headers

    reads = []
    real = identify_module.read_header
    monkeypatch.setattr(identify_module, "read_header", lambda p: reads.append(p.name) or real(p))
    H.write_safetensors(ckpts / "b.safetensors", H.SDXL)
    cat.refresh()
    assert [e.family for e in cat.entries()] == ["sd15", "sdxl"]
    assert reads == ["b.safetensors"]
    H.write_safetensors(a, H.SD3_MEDIUM)
    os.utime(a, ns=(1, 1))
    cat.refresh()
    assert cat.find("a").family == "sd3"
    b = ckpts / "b.safetensors"
    b.unlink()
    cat.refresh()
    assert [e.name for e in cat.entries()] == ["a.safetensors"]


def test_find_by_name_stem_title_or_hash(tmp_path):
    H.write_safetensors(tmp_path / "Stable-diffusion" / "sub" / "m.safetensors", H.SD15)
    cat = ModelCatalog(tmp_path, hash_of=lambda p: "abcdef1234" + "0" * 54)
    cat.refresh()
    for query in ("sub/m.safetensors", "sub/m", "sub/m.safetensors [abcdef1234]", "m.safetensors", "abcdef1234"):
        assert cat.find(query).name == "sub/m.safetensors"
    with pytest.raises(KeyError, match="available: sub/m.safetensors"):
        cat.find("nope")
