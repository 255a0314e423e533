"""Hires fix with an upscaler model from models/ESRGAN, on the tiny SD 1.5 demo checkpoint."""

from __future__ import annotations

import pytest

from tests.tolerance import PIXEL_MAX, PIXEL_MEAN, assert_far
from tests.upscaler_files import compact_state, save_safetensors
from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import DONE
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.outputs.infotext import parse_infotext

MODEL = "2x_tiny_compact"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from tests.app_services import tmp_services

    root = tmp_path_factory.mktemp("hires-up")
    write_demo_models(root / "models")
    save_safetensors(compact_state(scale=2), root / "models" / "ESRGAN" / f"{MODEL}.safetensors")
    svc = tmp_services(root)
    svc.generation.start()
    yield svc
    svc.generation.stop()


def hires(services, upscaler: str):
    req = GenerationRequest(
        prompt="hires",
        seed=2,
        steps=2,
        width=64,
        height=64,
        enable_hr=True,
        hr_scale=2.0,
        hr_upscaler=upscaler,
        hr_second_pass_steps=2,
        denoising_strength=0.3,
        sd_model_checkpoint=demo_checkpoint_name("sd15"),
        save_images=False,
    )
    job = services.generation.submit(req)
    assert job.wait(300), "job did not finish"
    assert job.state == DONE, job.error
    return job


def test_hires_fix_runs_the_upscaler_model(services):
    job = hires(services, MODEL)
    assert job.result.images[0].size == (128, 128)
    assert parse_infotext(job.result.infotexts[0])["Hires upscaler"] == MODEL
    lanczos = hires(services, "Lanczos").result.images[0]
    assert_far(job.result.images[0], lanczos, PIXEL_MAX, PIXEL_MEAN)  # the model, not a resample, made the input


def test_hires_upscaler_names_are_checked_against_the_models(services):
    from webui.backend.records import NotFound

    bad = GenerationRequest(enable_hr=True, hr_upscaler="4x-missing", denoising_strength=0.5)
    with pytest.raises((RequestError, NotFound)) as info:
        services.backend.validate(bad)
    assert MODEL in str(info.value) and "Latent" in str(info.value)
    assert MODEL in [u.name for u in services.backend.upscalers()]


def test_the_hires_upscaler_list_of_the_page_offers_the_models(services):
    from webui.ui.choices import fit_values, hr_upscaler_choices

    choices = hr_upscaler_choices(services.backend)
    assert choices[0] == "Latent" and choices.index("Lanczos") < choices.index(MODEL)
    kept, notes = fit_values(services.backend, "txt2img", {"hr_upscaler": MODEL})
    assert kept["hr_upscaler"] == MODEL and not notes  # a pasted infotext naming the model keeps it
