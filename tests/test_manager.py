"""The manager with real tiny checkpoints: every family through the user's path, shared weights, release on swap."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from webui.families.registry import default_families
from webui.models.catalog import ModelCatalog
from webui.models.devices import DeviceChoice
from webui.models.manager import ModelManager

FAMILIES = ("sd15", "sdxl", "sd3")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("models")
    ckpts = root / "Stable-diffusion"
    ckpts.mkdir()
    for family in FAMILIES:
        (ckpts / f"tiny-{family}.safetensors").symlink_to(tiny_checkpoint(family).path)
    from tests.lora_files import write_kohya_unet_family
    from webui.models.demo import build_tiny_pipeline
    from webui.models.ldm_export import save_state_dict, vae_to_original

    (root / "Lora").mkdir()
    write_kohya_unet_family(tiny_checkpoint("sd15").pipe, root / "Lora" / "style15.safetensors")
    save_state_dict(vae_to_original(build_tiny_pipeline("sd15", seed=7).vae), root / "VAE" / "other.safetensors")
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


def _image(pipe, **kw):
    g = torch.Generator().manual_seed(3)
    return pipe("a cat", num_inference_steps=2, height=64, width=64, generator=g, output_type="pt", **kw).images


def test_loras_switch_without_reloading_and_wrong_family_is_refused(models_dir, tmp_path):
    from webui.models.lora import LoraError

    manager = _manager(models_dir, tmp_path)
    manager.load("tiny-sd15")
    unet = manager.pipeline().unet
    base = _image(manager.pipeline())
    applied = manager.apply_loras([("style15", 1.0)])
    assert applied.active and manager.pipeline().unet is unet
    with_lora = _image(manager.pipeline())
    assert not torch.equal(with_lora, base)
    assert torch.equal(_image(manager.pipeline("txt2img")), with_lora)
    manager.apply_loras([])
    assert torch.equal(_image(manager.pipeline()), base)
    manager.load("tiny-sdxl")
    with pytest.raises(LoraError, match="is for SD 1.5 but the loaded model is SDXL"):
        manager.apply_loras([("style15", 0.8)])
    with pytest.raises(KeyError, match="available: style15.safetensors"):
        manager.apply_loras([("missing", 1.0)])


def test_vae_override_reaches_every_task_and_restores(models_dir, tmp_path):
    manager = _manager(models_dir, tmp_path)
    manager.load("tiny-sd15")
    own = manager.pipeline("img2img").vae
    assert manager.set_vae("other") == "other.safetensors"
    for task in ("txt2img", "img2img", "inpaint"):
        assert manager.pipeline(task).vae is not own
    manager.set_vae(None)
    assert manager.pipeline("img2img").vae is own


def test_switches_count_each_change_of_the_active_checkpoint(models_dir, tmp_path):
    manager = _manager(models_dir, tmp_path, ram=1)
    manager.load("tiny-sd15")
    manager.load("tiny-sd15")  # already active: no change
    manager.load("tiny-sdxl")
    manager.load("tiny-sd15")  # back, from the RAM cache: a change all the same
    assert manager.switches == 3
