"""Prompt editing through POST /sdapi/v1/txt2img: the switch happens where the prompt says, and the
infotext (and PNG Info of the returned image) keeps the prompt as written."""

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
from tests.tolerance import PIXEL_MAX, PIXEL_MEAN, assert_far
from webui.models.demo import demo_checkpoint_name, write_demo_models

BASE = {
    "width": 64,
    "height": 64,
    "steps": 4,
    "seed": 21,
    "cfg_scale": 20,
    "override_settings": {"sd_model_checkpoint": demo_checkpoint_name("sd15")},
}
# two prompts the tiny model tells well apart
DOG = "(dog:1.4), fluffy puppy on green grass, sunny day"
CAT = "(neon:1.4) cyberpunk city skyline, purple rain, night"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_editing")
    write_demo_models(root / "models", ("sd15",))
    services = tmp_services(root)
    services.generation.start()
    try:
        with serve_api(services) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield client
    finally:
        services.generation.stop()


def txt2img(client, prompt: str) -> tuple[np.ndarray, dict, str]:
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": prompt})
    assert r.status_code == 200, r.text
    body = r.json()
    return (
        np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0])))),
        json.loads(body["info"]),
        body["images"][0],
    )


def test_an_edit_switches_where_its_step_says(client):
    dog, _, _ = txt2img(client, f"a red {DOG}")
    cat, _, _ = txt2img(client, f"a red {CAT}")
    never, _, _ = txt2img(client, f"a red [{DOG}:{CAT}:4]")  # the switch after the last step: always DOG
    at_once, _, _ = txt2img(client, f"a red [{DOG}:{CAT}:0]")  # before the first step: always CAT
    halfway, info, image = txt2img(client, f"a red [{DOG}:{CAT}:0.5]")
    assert np.array_equal(never, dog) and np.array_equal(at_once, cat)  # the same computation repeats
    assert_far(halfway, dog, PIXEL_MAX, PIXEL_MEAN)
    assert_far(halfway, cat, PIXEL_MAX, PIXEL_MEAN)
    written = f"a red [{DOG}:{CAT}:0.5]"
    assert info["prompt"] == written and info["infotexts"][0].startswith(written + "\n")
    r = client.post("/sdapi/v1/png-info", json={"image": image})
    assert r.status_code == 200, r.text
    assert r.json()["info"].startswith(written + "\n")
