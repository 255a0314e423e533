"""Every A1111 sampler x schedule type through POST /sdapi/v1/txt2img, on tiny random-weight models.

A1111 runs every pair, so we answer 200 with an image for each; where a pair cannot run as asked
(DDIM/PLMS take no sigma schedule, Align Your Steps has no table for flow models, a noise-model
sampler on SD3) the answer's ``info["warnings"]`` says what ran instead, and the infotext records
the schedule that ran. SD 1.5 is swept in full over HTTP; SDXL and SD3 over HTTP on a sample (their
full sweep runs at the scheduler level in tests/test_samplers.py).
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.test_samplers import NOISE_SAMPLERS, SCHEDULES  # A1111's names, written out once
from webui.models.demo import demo_checkpoint_name, write_demo_models

# A1111 1.10 writes "Automatic" as the sampler's own schedule for these
OWN = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM2": "Karras", "DPM2 a": "Karras"}
OWN |= dict.fromkeys(("DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"), "Exponential")
SPACINGS = ("Automatic", "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM")  # what DDIM and PLMS can take
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),  # DPM2, numpy 2
    pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),  # torchsde, DPM++ SDE's last step
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("samplers")
    write_demo_models(root / "models", ("sd15", "sdxl", "sd3"))
    services = tmp_services(root, ram_cache_models=3)
    services.generation.start()
    try:
        with serve_api(services) as url, httpx.Client(base_url=url, timeout=120) as c:
            yield c
    finally:
        services.generation.stop()


def generate(client, family: str, sampler: str, schedule: str, path: str = "txt2img", **extra):
    body = {
        "prompt": "a cat",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 7,
        "sampler_name": sampler,
        "scheduler": schedule,
        "override_settings": {"sd_model_checkpoint": demo_checkpoint_name(family)},
        **extra,
    }
    return client.post(f"/sdapi/v1/{path}", json=body)


def ok(response, size: int = 64) -> tuple[dict, Image.Image]:
    """The answer's info and its image, after checking it is a 200 with one finite image of this size."""
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert image.size == (size, size) and np.isfinite(pixels).all()
    return info, image


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", NOISE_SAMPLERS)
def test_every_sd15_sampler_and_schedule_type_runs(client, sampler, schedule):
    info, _ = ok(generate(client, "sd15", sampler, schedule))
    falls_back = sampler in ("DDIM", "PLMS") and schedule not in SPACINGS
    ran = "Automatic" if falls_back else (OWN.get(sampler, "Automatic") if schedule == "Automatic" else schedule)
    assert info["sampler_name"] == sampler and info["scheduler"] == ran
    assert f"Sampler: {sampler}, Schedule type: {ran}," in info["infotexts"][0]
    if falls_back:
        assert info["warnings"] == [
            (
                f"Schedule type {schedule!r} does not work with sampler {sampler!r} on SD 1.5 ({sampler} steps on its "
                "own timesteps, not on sigmas; A1111 ignores the schedule type there too); Automatic was used (the "
                "sampler's own schedule)"
            )
        ]
    else:
        assert "warnings" not in info


@pytest.mark.parametrize(
    ("family", "sampler", "schedule", "ran", "warning"),
    [
        ("sdxl", "Euler a", "Karras", ("Euler a", "Karras"), None),
        ("sdxl", "DPM2", "Align Your Steps", ("DPM2", "Align Your Steps"), None),
        ("sdxl", "LCM", "Beta", ("LCM", "Beta"), None),
        ("sdxl", "DPM++ SDE", "SGM Uniform", ("DPM++ SDE", "SGM Uniform"), None),
        ("sdxl", "PLMS", "KL Optimal", ("PLMS", "Automatic"), "'KL Optimal' does not work with sampler 'PLMS' on SDXL"),
        ("sd3", "Euler", "Simple", ("Euler", "Simple"), None),
        ("sd3", "Heun", "Karras", ("Heun", "Karras"), None),
        ("sd3", "DPM++ 2M SDE", "Beta", ("DPM++ 2M SDE", "Beta"), None),
        ("sd3", "DEIS", "Exponential", ("DEIS", "Exponential"), None),
        ("sd3", "UniPC", "Align Your Steps", ("UniPC", "Automatic"), "(it is made for noise-prediction models)"),
        ("sd3", "Euler a", "Karras", ("Euler", "Karras"), "Sampler 'Euler a' does not work with SD3 Medium"),
        ("sd3", "LMS", "Normal", ("Euler", "Normal"), "Sampler 'LMS' does not work with SD3 Medium"),
    ],
)  # fmt: skip
def test_sdxl_and_sd3_samples_run_or_fall_back_with_a_warning(client, family, sampler, schedule, ran, warning):
    info, _ = ok(generate(client, family, sampler, schedule))
    assert (info["sampler_name"], info["scheduler"]) == ran
    assert f"Sampler: {ran[0]}, Schedule type: {ran[1]}," in info["infotexts"][0]
    if warning is None:
        assert "warnings" not in info
    else:
        assert len(info["warnings"]) == 1 and warning in info["warnings"][0]


def test_sd3_img2img_runs_with_a_multistep_solver(client):
    init = b64(Image.new("RGB", (64, 64), (120, 80, 40)))
    info, _ = ok(generate(client, "sd3", "UniPC", "Karras", "img2img", init_images=[init], denoising_strength=0.6))
    assert (info["sampler_name"], info["scheduler"], info.get("warnings")) == ("UniPC", "Karras", None)


def test_hires_pass_that_falls_back_says_so_and_records_what_ran(client):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    r = generate(client, "sd15", "Euler a", "Karras", hr_sampler_name="DDIM", hr_scheduler="Exponential", **hires)
    info, _ = ok(r, size=96)
    assert info["warnings"] == [
        (
            "Schedule type 'Exponential' does not work with sampler 'DDIM' on SD 1.5 (DDIM steps on its own timesteps, "
            "not on sigmas; A1111 ignores the schedule type there too); Automatic was used (the sampler's own schedule)"
        )
    ]
    text = info["infotexts"][0]
    assert "Schedule type: Karras," in text and "Hires sampler: DDIM," in text
    assert "Hires schedule type" not in text  # not the Exponential asked for: DDIM ran its own (A1111 writes none)


def test_unknown_schedule_type_runs_the_sampler_own_schedule(client):
    info, _ = ok(generate(client, "sd15", "DPM++ 2M", "Turbo"))
    assert info["scheduler"] == "Karras"
    assert info["warnings"][0].startswith("Unknown schedule type 'Turbo'; Karras was used (valid: Automatic, Uniform")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"sampler_name": "Restart"}, "sampler_name"),
        ({"enable_hr": True, "hr_sampler_name": "DPM fast", "denoising_strength": 0.5}, "hr_sampler_name"),
    ],
)
def test_unknown_sampler_is_404_with_the_valid_names(client, extra, field):
    r = generate(client, "sd15", "Euler", "", **extra)
    assert r.status_code == 404, r.text
    body = r.json()
    assert (body["error"], body["field"]) == ("NotFound", field)
    assert body["valid"] == NOISE_SAMPLERS
    assert "choose one of: DPM++ 2M, DPM++ SDE" in body["detail"]
