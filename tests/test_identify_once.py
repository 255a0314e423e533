"""Identify once: what the catalog (the checkpoint list) says a model is, is what the manager loads.

The detector disagreements of issue 14, each with tiny random-weight diffusers folders in the real on-disk
layout (``save_pretrained``): an SDXL base folder whose ``model_index.json`` says
``requires_aesthetics_score: true``, one without ``text_encoder``, and a ``StableDiffusionControlNetPipeline``
folder. Before, the catalog and the loader each had a detector and disagreed about all three.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from webui.families.registry import default_families
from webui.models.catalog import ModelCatalog
from webui.models.devices import DeviceChoice
from webui.models.loader import ModelLoadError
from webui.models.manager import ModelManager


def _folder(models_dir, name, pipe):
    folder = models_dir / "Stable-diffusion" / name
    pipe.save_pretrained(folder)
    return folder


def _edit_index(folder, **changes):
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def _catalog_and_manager(models_dir, tmp_path):
    catalog = ModelCatalog(models_dir)
    catalog.ensure_folders()
    catalog.refresh()
    manager = ModelManager(catalog, DeviceChoice("cpu", "fp32", "test"), tmp_path / "cache", default_families())
    return catalog, manager


def _generates(manager) -> np.ndarray:
    pipe = manager.pipeline("txt2img")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        image = pipe(
            "a cat", num_inference_steps=1, height=64, width=64, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip
    assert np.isfinite(image).all()
    return image


def test_sdxl_base_folder_with_requires_aesthetics_score_is_sdxl_in_the_list_and_when_loaded(
    tiny_checkpoint, tmp_path
):
    folder = _folder(tmp_path / "models", "xl-base", tiny_checkpoint("sdxl").pipe)
    _edit_index(folder, requires_aesthetics_score=True)  # as some converters write it for base models
    catalog, manager = _catalog_and_manager(tmp_path / "models", tmp_path)
    (entry,) = catalog.usable()
    assert entry.family == "sdxl"
    report = manager.load(entry.name)
    assert report.family == "sdxl" and manager.family.id == "sdxl"
    assert type(manager.loaded.pipeline).__name__ == "StableDiffusionXLPipeline"
    _generates(manager)


def test_sdxl_base_folder_without_text_encoder_is_sdxl_and_asks_for_clip_l(tiny_checkpoint, tmp_path):
    models = tmp_path / "models"
    pipe = tiny_checkpoint("sdxl").pipe
    folder = _folder(models, "xl-no-clip-l", pipe)
    for part in ("text_encoder", "tokenizer"):
        shutil.rmtree(folder / part)
    _edit_index(folder, text_encoder=[None, None], tokenizer=[None, None])
    catalog, manager = _catalog_and_manager(models, tmp_path)
    (entry,) = catalog.usable()
    assert entry.family == "sdxl" and set(entry.record.components) == {"unet", "vae", "clip_g"}
    # Loaded as what the list says: an SDXL base model that needs its CLIP-L, not a refiner.
    with pytest.raises(ModelLoadError, match=r"SDXL checkpoint does not include the CLIP ViT-L/14.*clip_l\.safetensors"):
        manager.load(entry.name)

    from webui.models.ldm_export import hf_clip_to_original, save_state_dict

    save_state_dict(hf_clip_to_original(pipe.text_encoder), models / "text_encoder" / "clip_l.safetensors")
    catalog.refresh()
    report = manager.load(entry.name)
    assert report.family == "sdxl"
    assert any("clip_l.safetensors" in note for note in report.notes)
    loaded = manager.loaded.pipeline
    for name, tensor in pipe.text_encoder.state_dict().items():
        assert torch.equal(loaded.text_encoder.state_dict()[name], tensor), name
    _generates(manager)


def test_sdxl_refiner_folder_stays_the_refiner(tiny_checkpoint, tmp_path):
    _folder(tmp_path / "models", "refiner", tiny_checkpoint("sdxl_refiner").pipe)
    catalog, manager = _catalog_and_manager(tmp_path / "models", tmp_path)
    (entry,) = catalog.usable()
    assert entry.family == "sdxl_refiner"
    assert manager.load(entry.name).family == "sdxl_refiner"


@pytest.fixture
def controlnet_folder(tiny_checkpoint, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    pipe = tiny_checkpoint("sd15").pipe
    controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
    cn_pipe = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    return _folder(tmp_path / "models", "sd15-controlnet", cn_pipe), pipe


def test_controlnet_pipeline_folder_is_its_sd15_checkpoint_in_the_list_and_when_loaded(controlnet_folder, tmp_path):
    """Decided: the folder holds a whole SD 1.5 checkpoint; both list it as SD 1.5 and the controlnet is left out."""
    _folder_path, pipe = controlnet_folder
    catalog, manager = _catalog_and_manager(tmp_path / "models", tmp_path)
    (entry,) = catalog.entries()
    assert entry.usable and entry.family == "sd15"
    assert entry.record.ignored == ("controlnet",)
    report = manager.load(entry.name)
    assert report.family == "sd15"
    assert any("controlnet is not used" in note for note in report.notes)
    loaded = manager.loaded.pipeline
    assert type(loaded).__name__ == "StableDiffusionPipeline" and not hasattr(loaded, "controlnet")
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight)
    _generates(manager)


def test_the_loader_gets_the_catalogs_record_and_identifies_nothing_again(tiny_checkpoint, tmp_path, monkeypatch):
    models = tmp_path / "models"
    ckpts = models / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    (ckpts / "tiny-sd15.safetensors").symlink_to(tiny_checkpoint("sd15").path)
    _folder(models, "xl-folder", tiny_checkpoint("sdxl").pipe)
    catalog, manager = _catalog_and_manager(models, tmp_path)
    from webui.models import loader

    def no_second_look(*args, **kwargs):
        raise AssertionError("the loader identified a model the catalog had identified already")

    for name in ("identify", "identify_checkpoint"):
        monkeypatch.setattr(loader, name, no_second_look)
    for entry in catalog.usable():
        manager.load(entry.name)
        assert manager.loaded.record is entry.record
        assert manager.family.id == entry.family


def test_a_file_changed_since_the_scan_is_identified_again(tiny_checkpoint, tmp_path):
    models = tmp_path / "models"
    path = models / "Stable-diffusion" / "model.safetensors"
    path.parent.mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint("sd15").path, path)
    catalog, manager = _catalog_and_manager(models, tmp_path)
    assert catalog.find("model").family == "sd15"
    shutil.copyfile(tiny_checkpoint("sdxl").path, path)  # replaced after the list was made
    assert manager.load("model").family == "sdxl"  # the record was stale: the file itself decides
