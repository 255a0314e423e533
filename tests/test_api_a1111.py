"""A1111 semantics that clients rely on, through /sdapi/v1 with the real engine on tiny demo models.

Interrupt answers with the image being sampled, options name the checkpoint the next job uses, the
API's default sampler is A1111's (Euler), the upscaler list starts with "None", a random subseed is
reported as drawn, an error that lists choices fills ``valid``, and steps above 150 run.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from webui.generation.requests import HR_UPSCALERS
from webui.models.demo import demo_checkpoint_name, write_demo_models

SD15 = demo_checkpoint_name("sd15")
SD3 = demo_checkpoint_name("sd3")
BASE = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3, "seed": 11}
WITH_SD15 = {"override_settings": {"sd_model_checkpoint": SD15}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111")
    write_demo_models(root / "models", ("sd15", "sd3"))
    services = tmp_services(root, ram_cache_models=2, default_model=SD3)
    services.generation.start()
    try:
        with serve_api(services) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield services, client
    finally:
        services.generation.stop()


@pytest.fixture
def client(env) -> httpx.Client:
    return env[1]


def info_of(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"])


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def titles(client) -> dict[str, str]:
    return {m["model_name"]: m["title"] for m in client.get("/sdapi/v1/sd-models").json()}


# --- options name the next job's checkpoint ---------------------------------------------------------


def test_options_name_the_default_checkpoint_before_any_is_loaded_and_the_job_uses_it(env, client):
    services, _ = env
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert services.manager.current_entry is None
    named = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert named == titles(client)["demo-sd3-noise"]  # the default_model setting, not null
    info = info_of(client.post("/sdapi/v1/txt2img", json=BASE))  # a job that names no checkpoint
    assert info["sd_model_name"] == "demo-sd3-noise"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles(client)["demo-sd3-noise"]


def test_options_with_no_default_name_the_first_checkpoint_found(env, client):
    services, _ = env
    client.post("/sdapi/v1/unload-checkpoint")
    services.engine.default_model = ""
    try:
        first = services.catalog.usable("checkpoint")[0]
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles(client)[first.stem]
    finally:
        services.engine.default_model = SD3


# --- default sampler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model, task", [(SD15, "txt2img"), (SD3, "txt2img"), (SD3, "img2img")])
def test_no_sampler_name_samples_with_a1111s_api_default_euler(client, model, task):
    body = {**BASE, "override_settings": {"sd_model_checkpoint": model}}
    if task == "img2img":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (90, 120, 200)).save(buf, format="PNG")
        body["init_images"] = [base64.b64encode(buf.getvalue()).decode()]
    info = info_of(client.post(f"/sdapi/v1/{task}", json=body))
    assert (info["sampler_name"], info["scheduler"]) == ("Euler", "Automatic")
    assert "Sampler: Euler," in info["infotexts"][0]


# --- upscalers ----------------------------------------------------------------------------------------


def test_upscalers_list_none_first_as_a1111(client):
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names[0] == "None" and {"Lanczos", "Nearest"} <= set(names)


# --- subseed ------------------------------------------------------------------------------------------


def test_random_subseed_is_drawn_and_reported_even_without_variation(client):
    info = info_of(client.post("/sdapi/v1/txt2img", json={**BASE, **WITH_SD15, "batch_size": 2, "subseed": -1}))
    sub = info["subseed"]
    assert 0 <= sub < 2**32 and info["all_subseeds"] == [sub, sub + 1]
    assert info["all_seeds"] == [11, 12]  # strength 0: the seeds count up, the subseed is unused
    assert all("Variation seed" not in text for text in info["infotexts"])


# --- errors that list choices fill valid --------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, field, member",
    [
        ("txt2img", {"sampler_name": "Nope"}, "sampler_name", "Euler a"),
        ("txt2img", {"enable_hr": True, "hr_upscaler": "Nope"}, "hr_upscaler", "Lanczos"),
        ("txt2img", {"override_settings": {"sd_model_checkpoint": SD15, "randn_source": "XPU"}}, "rng", "CPU"),
        ("options", {"samples_format": "bmp"}, "samples_format", "webp"),
    ],
)
def test_422_that_lists_choices_fills_valid(client, path, body, field, member):
    if path == "txt2img":
        body = {**BASE, **WITH_SD15, **body}
    r = client.post(f"/sdapi/v1/{path}", json=body)
    # an unknown sampler name is refused before queueing (A1111 answers 404 there); the others are 422s
    assert r.status_code in ((404, 422) if field == "sampler_name" else (422,)), r.text
    error = r.json()
    assert error["field"] == field and isinstance(error["valid"], list) and member in error["valid"], error
    assert all(name in error["detail"] for name in error["valid"])  # the same names the message lists


def test_hr_upscaler_422_lists_every_upscaler(client):
    body = {**BASE, **WITH_SD15, "enable_hr": True, "hr_upscaler": "Nope"}
    assert client.post("/sdapi/v1/txt2img", json=body).json()["valid"] == list(HR_UPSCALERS)


def test_unknown_sampler_with_no_model_loaded_fills_valid(env, client):
    client.post("/sdapi/v1/unload-checkpoint")
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "sampler_name": "Nope"})
    assert r.status_code in (404, 422), r.text
    assert r.json()["field"] == "sampler_name" and "Euler" in r.json()["valid"]


def test_a_sampler_error_in_the_job_fills_valid():
    """The engine's refusal (when the early check could not know the family) keeps the listed names."""
    from types import SimpleNamespace

    from webui.api.sdapi import _failure
    from webui.backend.local import refusal_of
    from webui.generation.requests import RequestError

    exc = RequestError("sampler_name", "unknown sampler 'Nope'; choose one of: Euler, Euler a, DPM++ 2M")
    job = SimpleNamespace(error_field="sampler_name", error=str(exc), exception=exc)
    refusal = refusal_of(job)  # what the backend's job snapshot carries to the API
    assert refusal.valid == ["Euler", "Euler a", "DPM++ 2M"]
    assert _failure(SimpleNamespace(refusal=refusal, error=job.error)).valid == ["Euler", "Euler a", "DPM++ 2M"]


# --- steps ----------------------------------------------------------------------------------------------


def test_more_than_150_steps_run_as_in_a1111(client):
    info = info_of(client.post("/sdapi/v1/txt2img", json={**BASE, **WITH_SD15, "steps": 151}))
    assert info["steps"] == 151 and "Steps: 151," in info["infotexts"][0]


def test_the_steps_limit_is_a_setting_applied_live(env, client, tmp_path):
    services, _ = env
    save_settings = services.backend.save_settings
    assert services.settings.max_steps == services.engine.limits.max_steps == 1000
    before = services.settings
    try:
        result = save_settings({"max_steps": 4})
        assert not result.errors, result.errors
        r = client.post("/sdapi/v1/txt2img", json={**BASE, **WITH_SD15, "steps": 5})
        assert r.status_code == 422 and r.json()["field"] == "steps" and "4" in r.json()["detail"]
    finally:
        save_settings({"max_steps": before.max_steps})


# --- interrupt -------------------------------------------------------------------------------------------


def test_interrupted_txt2img_answers_with_the_image_being_sampled_unsaved(env, client):
    services, _ = env
    outputs = services.paths.outputs
    saved_before = set(outputs.rglob("*.png")) if outputs.exists() else set()
    body = {**BASE, **WITH_SD15, "steps": 150, "save_images": True}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/sdapi/v1/txt2img", json=body)
        deadline = time.monotonic() + 60
        while client.get("/sdapi/v1/progress").json()["state"].get("sampling_step", 0) < 2:
            assert time.monotonic() < deadline and not pending.done(), "the job never reached step 2"
            time.sleep(0.01)
        assert client.post("/sdapi/v1/interrupt").json()["done"] is True
        r = pending.result(timeout=60)
    info = info_of(r)
    assert info["interrupted"] is True
    (image,) = [decode(text) for text in r.json()["images"]]  # clients read images[0]
    assert image.size == (64, 64)
    assert image.info["parameters"] == info["infotexts"][0] and "Seed: 11," in info["infotexts"][0]
    assert info["all_seeds"] == [11]
    now = set(outputs.rglob("*.png")) if outputs.exists() else set()
    assert now == saved_before  # A1111 does not save an incomplete image (save_incomplete_images is off)
