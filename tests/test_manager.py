"""The manager with real tiny checkpoints: every family through the user's path, shared weights, release on swap."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from webui.models.catalog import ModelCatalog
from webui.models.devices import DeviceChoice
from webui.models.families import default_families
from webui.models.manager import ModelManager

FAMILIES = ("sd15", "sdxl", "sd3")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("models")
    ckpts = root / "Stable-diffusion"
    ckpts.mkdir()
    for family in FAMILIES:
        (ckpts / f"tiny-{family}.safetensors").symlink_to(tiny_checkpoint(family).path)
    return root


def _manager(models_dir, tmp_path, precision="fp32", ram=0):
    catalog = ModelCatalog(models_dir)
    catalog.refresh()
    return ModelManager(
        catalog, DeviceChoice("cpu", precision, "test"), tmp_path / "cache", default_families(), ram_cache_models=ram
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_and_tasks_share_weights(models_dir, tmp_path, family):
    manager = _manager(models_dir, tmp_path, precision="bf16")
    report = manager.load(f"tiny-{family}")
    assert report.family == family and not report.from_cache
    base = manager.pipeline("txt2img")
    denoiser = "transformer" if family == "sd3" else "unet"
    for task in ("img2img", "inpaint"):
        derived = manager.pipeline(task)
        assert type(derived).__name__ == default_families().get(family).pipelines[task]
        for name, module in base.components.items():
            if isinstance(module, torch.nn.Module):
                assert derived.components[name] is module, f"{task} has its own copy of {name}"
        assert manager.pipeline(task) is derived  # built once
    # no silent dtype change of the shared modules (diffusers' from_pipe would cast to fp32)
    assert getattr(base, denoiser).dtype == torch.bfloat16


def test_swap_frees_previous_model_through_real_loader(models_dir, tmp_path):
    manager = _manager(models_dir, tmp_path)
    manager.load("tiny-sdxl")
    manager.pipeline("img2img")
    refs = [weakref.ref(m) for m in manager.pipeline("txt2img").components.values() if isinstance(m, torch.nn.Module)]
    manager.load("tiny-sd3")
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} modules of the previous model are still referenced"


def test_ram_cache_switches_back_without_reading_the_file(models_dir, tmp_path):
    manager = _manager(models_dir, tmp_path, ram=1)
    manager.load("tiny-sd15")
    unet = manager.pipeline().unet
    manager.load("tiny-sdxl")
    report = manager.load("tiny-sd15")
    assert report.from_cache and manager.pipeline().unet is unet


def test_generation_after_swaps_matches_a_fresh_load(models_dir, tmp_path):
    def image(manager):
        pipe = manager.pipeline("txt2img")
        g = torch.Generator().manual_seed(1)
        return pipe("a cat", num_inference_steps=2, height=64, width=64, generator=g, output_type="pt").images

    fresh = _manager(models_dir, tmp_path)
    fresh.load("tiny-sd15")
    expected = image(fresh)
    swapped = _manager(models_dir, tmp_path, ram=1)
    for name in ("tiny-sd15", "tiny-sd3", "tiny-sd15", "tiny-sdxl", "tiny-sd15"):
        swapped.load(name)
    assert torch.equal(image(swapped), expected)
