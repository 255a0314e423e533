"""The composed app (Gradio UI + /sdapi/v1) with the real engine on tiny models, through HTTP.

An A1111 client's view: generate, read the infotext back with png-info, replay it, inpaint,
switch checkpoints through options, and get JSON errors for bad requests.
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
from tests.tolerance import assert_close_pixels
from webui.models.demo import demo_checkpoint_name, write_demo_models


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from webui.app import build_server

    root = tmp_path_factory.mktemp("app")
    write_demo_models(root / "models", ("sd15", "sd3"))
    services = tmp_services(root, ram_cache_models=2)
    services.generation.start()
    try:
        with serve_api(services, app=build_server(services)) as url, httpx.Client(base_url=url, timeout=120) as c:
            yield c
    finally:
        services.generation.stop()


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


SD15 = demo_checkpoint_name("sd15")
SD3 = demo_checkpoint_name("sd3")
BASE = {"steps": 3, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": SD15}}


def test_txt2img_png_info_and_replay_give_the_same_image(client):
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "a (red:1.2) house", "seed": 42, "batch_size": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42, 43]
    first = body["images"][0]
    png = client.post("/sdapi/v1/png-info", json={"image": first}).json()
    assert png["info"] == info["infotexts"][0]
    assert png["parameters"]["Seed"] in (42, "42")
    # replay through the A1111 `infotext` field: the same image within rounding (the first was image 0 of a
    # batch of 2, the replay a batch of 1: other kernels; tests/tolerance.py)
    again = client.post(
        "/sdapi/v1/txt2img", json={"infotext": png["info"], "override_settings": BASE["override_settings"]}
    )
    assert again.status_code == 200, again.text
    assert_close_pixels(np.asarray(decode(first)), np.asarray(decode(again.json()["images"][0])))


def test_img2img_inpaint_keeps_unmasked_pixels(client):
    image = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    r = client.post(
        "/sdapi/v1/img2img",
        json={
            **BASE,
            "prompt": "patch",
            "seed": 3,
            "init_images": [b64(image)],
            "mask": b64(Image.fromarray(mask)),
            "mask_blur": 0,
            "inpainting_fill": 1,
            "inpaint_full_res": False,
            "denoising_strength": 0.9,
        },
    )
    assert r.status_code == 200, r.text
    out = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
    assert np.array_equal(out[:8, :8], np.asarray(image)[:8, :8])


def test_options_switch_model_and_samplers_follow_the_family(client):
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SD3})
    assert r.status_code == 200, r.text
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(SD3)
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert "Euler" in names and "DPM++ 2M SDE" in names and "Euler a" not in names  # the flow-matching samplers
    r = client.post(
        "/sdapi/v1/img2img",
        json={"prompt": "x", "steps": 3, "init_images": [b64(Image.new("RGB", (64, 64)))], "sampler_name": "UniPC"},
    )
    assert r.status_code == 200 and json.loads(r.json()["info"])["sampler_name"] == "UniPC"


def test_bad_requests_are_json_errors(client):
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "x", "width": 100})
    assert r.status_code == 422 and r.json()["field"] == "width"
    r = client.post("/sdapi/v1/img2img", json={**BASE, "prompt": "x", "init_images": ["not base64!"]})
    assert r.status_code == 422
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "x <lora:missing:1>"})
    assert r.status_code == 404
    assert client.get("/docs").status_code == 200
    assert client.get("/").status_code == 200  # the UI is still served beside the API
