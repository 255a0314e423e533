"""The stage hooks through the real engine: extra models, another pipeline class, call arguments, per-step changes.

The extension is ``tests/fixtures/extensions/stage-hooks``: a ControlNet, a T2I-Adapter and an
IP-Adapter of the tiny SD 1.5 model's shapes, added the way the built-in extensions will add them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.app_services import tmp_services
from tests.tolerance import PIXEL_MAX, PIXEL_MEAN, assert_close_pixels, assert_far
from webui.generation.requests import GenerationRequest
from webui.generation.service import DONE, FAILED
from webui.models.demo import demo_checkpoint_name, write_demo_models

FIXTURE = Path(__file__).parent / "fixtures" / "extensions" / "stage-hooks"
SD15, SDXL = demo_checkpoint_name("sd15"), demo_checkpoint_name("sdxl")
DEFAULTS = {
    "stage_hooks_mode": "off",
    "stage_hooks_weight": 1.0,
    "stage_hooks_guidance_end": 1.0,
    "stage_hooks_cfg_cutoff": False,
    "stage_hooks_family": "sd15",
}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage-hooks")
    write_demo_models(root / "models", ("sd15", "sdxl"))
    shutil.copytree(FIXTURE, root / "ext" / "stage-hooks", ignore=shutil.ignore_patterns("__pycache__"))
    services = tmp_services(root, preview_every=0)
    assert services.extensions.get("stage-hooks").status == "ok", services.extensions.get("stage-hooks").error
    services.generation.start()
    yield services
    services.generation.stop()


def run(services, options=None, **fields):
    for name, value in {**DEFAULTS, **(options or {})}.items():
        services.extensions.set_option(name, value)
    values = {"prompt": "a cube", "seed": 7, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler"}
    values.update({"save_images": False, "sd_model_checkpoint": SD15, **fields})
    job = services.generation.submit(GenerationRequest(**values))
    assert job.wait(300), "the job did not finish"
    return job


def image(job):
    assert job.state == DONE, job.error
    return np.asarray(job.result.images[0])


def stages(job) -> str:
    """What the extension saw: 'stage=PipelineClass/steps ...' from its infotext field."""
    text = job.result.infotexts[0]
    return text.split("Stage hooks: ", 1)[1].split(", ")[0].strip('"') if "Stage hooks: " in text else ""


@pytest.fixture(scope="module")
def plain(services):
    return image(run(services))


# --- webui_job_models + webui_stage_arguments: a ControlNet ------------------------------------------------


def test_a_controlnet_runs_its_own_pipeline_class_and_changes_the_image(services, plain):
    job = run(services, {"stage_hooks_mode": "controlnet"})
    assert stages(job) == "txt2img=StableDiffusionControlNetPipeline/4"
    assert_far(image(job), plain, PIXEL_MAX, PIXEL_MEAN)


def test_controlnet_weight_0_gives_the_image_without_it(services, plain):
    job = run(services, {"stage_hooks_mode": "controlnet", "stage_hooks_weight": 0.0})
    assert "StableDiffusionControlNetPipeline" in stages(job)
    assert_close_pixels(image(job), plain)


def test_controlnet_guidance_end_half_differs_from_the_whole_pass(services):
    whole = image(run(services, {"stage_hooks_mode": "controlnet"}))
    half = image(run(services, {"stage_hooks_mode": "controlnet", "stage_hooks_guidance_end": 0.5}))
    assert_far(half, whole, PIXEL_MAX, PIXEL_MEAN)


def test_the_addition_is_for_one_job_only(services, plain):
    run(services, {"stage_hooks_mode": "controlnet"})
    assert np.array_equal(image(run(services)), plain)  # the same computation as before: bit for bit


def test_hires_fix_and_img2img_passes_get_the_addition_too(services):
    job = run(services, {"stage_hooks_mode": "controlnet"}, enable_hr=True, hr_scale=1.5, denoising_strength=0.5)
    assert stages(job) == (
        "txt2img=StableDiffusionControlNetPipeline/4 hires fix=StableDiffusionControlNetImg2ImgPipeline/2"
    )
    assert image(job).shape == (96, 96, 3)
    from PIL import Image

    init = Image.new("RGB", (64, 64), (120, 60, 30))
    job = run(services, {"stage_hooks_mode": "controlnet"}, task="img2img", init_image=init, denoising_strength=0.5)
    assert stages(job) == "img2img=StableDiffusionControlNetImg2ImgPipeline/2"


def test_a_model_of_another_family_is_refused_with_the_extensions_message(services):
    job = run(services, {"stage_hooks_mode": "controlnet"}, sd_model_checkpoint=SDXL)
    assert job.state == FAILED
    assert "for sd15, not sdxl" in job.error and job.error_field == "alwayson_scripts"


# --- a pipeline with the older callback: a T2I-Adapter ------------------------------------------------------


def test_a_t2i_adapter_runs_with_progress_through_the_older_callback(services, plain):
    job = run(services, {"stage_hooks_mode": "adapter"})
    assert stages(job) == "txt2img=StableDiffusionAdapterPipeline/4"  # every step reached the step callbacks
    assert job.progress.done_steps == 4
    assert_far(image(job), plain, PIXEL_MAX, PIXEL_MEAN)
    weightless = run(services, {"stage_hooks_mode": "adapter", "stage_hooks_weight": 0.0})
    assert_close_pixels(image(weightless), plain)


# --- a patch for the job: an IP-Adapter ---------------------------------------------------------------------


def test_an_ip_adapter_patch_changes_the_image_and_is_undone_after_the_job(services, plain):
    unet = services.manager.loaded.pipeline.unet
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    job = run(services, {"stage_hooks_mode": "ip_adapter"})
    assert stages(job) == "txt2img=StableDiffusionPipeline/4"
    assert_far(image(job), plain, PIXEL_MAX, PIXEL_MEAN)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert unet.encoder_hid_proj is None
    assert np.array_equal(image(run(services)), plain)


# --- webui_step_callbacks --------------------------------------------------------------------------------


def test_diffusers_cfg_cutoff_callback_changes_the_conditioning_per_step(services, plain):
    job = run(services, {"stage_hooks_cfg_cutoff": True})
    assert stages(job) == "txt2img=StableDiffusionPipeline/4"
    assert_far(image(job), plain, PIXEL_MAX, PIXEL_MEAN)


def test_arguments_the_app_sets_or_the_pipeline_lacks_are_reported_and_left_out(services, plain):
    job = run(services, {"stage_hooks_mode": "wrong_argument"})
    assert np.array_equal(image(job), plain)
    error = services.extensions.get("stage-hooks").error or ""
    assert "no_such_argument" in error or "'latents' is set by the app" in error


def test_interrupt_works_through_the_older_callback_too(services):
    from webui.generation.service import Job, JobContext

    class InterruptAt(JobContext):
        def on_step(self, step, latents=None, preview=None):
            if step == 2:
                self._job.interrupt()
            super().on_step(step, latents, preview)

    for name, value in {**DEFAULTS, "stage_hooks_mode": "adapter"}.items():
        services.extensions.set_option(name, value)
    req = GenerationRequest(
        prompt="a cube", seed=7, steps=4, width=64, height=64, sampler_name="Euler", sd_model_checkpoint=SD15
    )
    result = services.engine.run(req, InterruptAt(Job(req, "test", 1), preview_every=0))
    assert result.interrupted and len(result.images) == 1 and result.paths == [""]  # the estimate, unsaved
