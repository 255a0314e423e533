"""The speed settings through the composed app: flags, the model manager's tuning, the prompt cache, the page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.app_services import tmp_services
from webui.config import SettingsError, load_settings
from webui.generation.requests import GenerationRequest
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.speed.compile import denoiser
from webui.speed.optimize import SpeedOptions
from webui.ui import settings_apply
from webui.ui.settings_apply import device_summary


def save_settings(services, values):
    """What the page's Apply does: the backend checks, applies and persists."""
    return settings_apply.save_settings(services.backend, values)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed-models")
    write_demo_models(root / "models", ("sd15",))
    return root / "models"


@pytest.fixture
def services(tmp_path, models):
    (tmp_path / "models").symlink_to(models)
    built = tmp_services(tmp_path)
    built.generation.start()
    yield built
    built.generation.stop()


def _request(**fields) -> GenerationRequest:
    base = {"prompt": "a red cube", "seed": 7, "steps": 3, "width": 64, "height": 64, "save_images": False}
    base.update(fields)
    return GenerationRequest(sd_model_checkpoint=demo_checkpoint_name("sd15"), **base)


def _image(services, **fields) -> np.ndarray:
    job = services.generation.submit(_request(**fields))
    assert job.wait(120) and job.state == "done", job.error
    return np.asarray(job.result.images[0])


def _conv_weight(pipe) -> torch.Tensor:
    return pipe.unet.conv_in.weight


# -- flags and settings --------------------------------------------------------------------------


def test_speed_flags_reach_the_settings(tmp_path):
    argv = ["--no-half-vae", "--channels-last", "on", "--compile", "--prompt-cache-size", "4"]
    settings, _ = load_settings(argv, base_dir=tmp_path, environ={})
    assert (settings.vae_precision, settings.channels_last, settings.compile, settings.prompt_cache_size) == (
        "fp32",
        "on",
        True,
        4,
    )
    defaults, _ = load_settings([], base_dir=tmp_path, environ={})
    assert (defaults.vae_precision, defaults.channels_last, defaults.compile) == ("auto", "auto", False)


@pytest.mark.parametrize(
    "env, phrase",
    [
        ({"WEBUI_CHANNELS_LAST": "sometimes"}, "--channels-last must be one of auto, on, off"),
        ({"WEBUI_VAE_PRECISION": "fp16"}, "--vae-precision must be one of auto, fp32"),
        ({"WEBUI_PROMPT_CACHE_SIZE": "-1"}, "prompt_cache_size must be 0 (off) or more"),
    ],
)
def test_bad_speed_settings_say_what_to_use(tmp_path, env, phrase):
    with pytest.raises(SettingsError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        load_settings([], base_dir=tmp_path, environ=env)


def test_the_settings_page_says_what_runs_in_which_precision(services):
    text = device_summary(services.backend)
    assert "cpu: fp32 (VAE fp32) - --precision fp32" in text
    assert "override" in text


# -- the manager tunes every model it loads ------------------------------------------------------


def test_a_loaded_model_is_tuned_and_the_load_report_says_how(tmp_path, models):
    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, channels_last="on")
    report = services.manager.load(demo_checkpoint_name("sd15"))
    pipe = services.manager.loaded.pipeline
    assert "channels_last on (setting)" in report.notes
    assert "VAE decodes in fp32" in report.notes
    assert any(n.startswith("attention: SDPA") for n in report.notes)
    assert _conv_weight(pipe).is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    notes = services.manager.set_speed_options(SpeedOptions(channels_last="off"))
    assert "channels_last off (setting)" in notes
    weight = _conv_weight(pipe)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_auto_follows_the_measurement_once_per_family(tmp_path, models):
    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, channels_last="auto")
    calls = []

    def measure(block, size, batch):
        calls.append(block)
        return 10.0, 5.0  # channels_last twice as fast

    services.manager.speed._measure_layout = measure
    report = services.manager.load(demo_checkpoint_name("sd15"))
    assert any("unet faster (measured 5.0 vs 10.0 ms" in n and "vae faster" in n for n in report.notes)
    assert _conv_weight(services.manager.loaded.pipeline).is_contiguous(memory_format=torch.channels_last)
    services.manager.unload()
    services.manager.load(demo_checkpoint_name("sd15"))
    assert len(calls) == 2  # UNet and VAE once: the second load of the same family reuses the measurement


def test_offload_modes_keep_their_placement_and_skip_channels_last(tmp_path, models):
    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, channels_last="on", memory_modes="model_cpu_offload")
    report = services.manager.load(demo_checkpoint_name("sd15"))
    assert "channels_last not used: an offload mode places the weights" in report.notes
    assert not _conv_weight(services.manager.loaded.pipeline).is_contiguous(memory_format=torch.channels_last)


def test_an_attention_memory_mode_keeps_its_kernel(tmp_path, models):
    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, memory_modes="attention_slicing")
    report = services.manager.load(demo_checkpoint_name("sd15"))
    assert not any(n.startswith("attention:") for n in report.notes)  # the tuner leaves the mode's choice


# -- layout and compile from the settings page keep the image ------------------------------------


def test_settings_page_turns_layout_and_compile_on_and_off_without_changing_the_image(services):
    compiled = []

    def fake_compile(fn, **kwargs):  # the real torch.compile is never run inside a test
        compiled.append(fn)
        return fn

    plain = _image(services)
    services.manager.speed._compile_fn = fake_compile
    result = save_settings(services, {"channels_last": "on", "compile": True})
    assert result.ok and set(result.applied) == {"channels_last", "compile"}, result.errors
    pipe = services.manager.loaded.pipeline
    state = denoiser(pipe)._webui_compile_state
    assert state.regions and len(compiled) == len(state.regions)
    assert _conv_weight(pipe).is_contiguous(memory_format=torch.channels_last)
    tuned = _image(services)
    assert np.abs(tuned.astype(int) - plain.astype(int)).max() <= 1  # fp32 kernels in another layout

    result = save_settings(services, {"channels_last": "off", "compile": False})
    assert result.ok
    assert not hasattr(denoiser(pipe), "_webui_compile_state")
    assert all("forward" not in block.__dict__ for block, _ in state.regions)
    assert np.array_equal(_image(services), plain)


# -- the prompt cache ----------------------------------------------------------------------------


def test_an_unchanged_prompt_is_encoded_once_and_gives_the_same_image(services):
    cache = services.engine.prompt_cache
    first = _image(services)
    assert (cache.hits, cache.misses) == (0, 1)
    second = _image(services, seed=7)
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first, second)
    _image(services, prompt="a blue cube")
    _image(services, clip_skip=2)
    assert (cache.hits, cache.misses) == (1, 3)  # another prompt, another clip skip: encoded again


def test_a_lora_in_the_prompt_is_part_of_the_cache_key(services, fresh_tiny_pipe):
    from tests.lora_files import write_kohya_unet_family

    write_kohya_unet_family(fresh_tiny_pipe("sd15"), services.paths.models / "Lora" / "te.safetensors", scale=1.0)
    services.catalog.refresh()
    cache = services.engine.prompt_cache
    _image(services, prompt="a cube")
    _image(services, prompt="a cube <lora:te:1>")
    _image(services, prompt="a cube <lora:te:0.5>")
    assert (cache.hits, cache.misses) == (0, 3)  # the text encoder's LoRA changes the embeddings
    _image(services, prompt="a cube <lora:te:0.5>")
    assert cache.hits == 1


def test_prompt_cache_size_from_the_settings_page(services):
    _image(services)
    assert len(services.engine.prompt_cache) == 1
    assert save_settings(services, {"prompt_cache_size": 0}).ok
    assert len(services.engine.prompt_cache) == 0
    _image(services)
    _image(services)
    assert services.engine.prompt_cache.hits == 0


def test_the_empty_keep_in_fp32_warning_is_silenced_and_others_are_not(capfd, fresh_tiny_pipe):
    import logging

    from webui.app import _empty_fp32_modules_warning, quiet_libraries

    quiet_libraries()
    quiet_libraries()  # idempotent: one filter
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    assert modeling.filters.count(_empty_fp32_modules_warning) == 1
    unet = fresh_tiny_pipe("sd15").unet
    capfd.readouterr()
    unet.to(dtype=torch.bfloat16)  # a load in bf16 does this; diffusers 0.42 warns about an empty list
    assert "kept in float32" not in capfd.readouterr().err

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("diffusers.models.modeling_utils", logging.WARNING, "", 0, message, (), None)

    assert _empty_fp32_modules_warning(record("There are modules in X that should be kept in float32: ['norm']."))
    assert not _empty_fp32_modules_warning(record("There are modules in X that should be kept in float32: []."))
