"""A model that cannot fit in memory, through the A1111 API: a 507 whose ``detail`` says how much it needs and what to
free, for a checkpoint switch (``POST /sdapi/v1/options``) and for a generation that names its checkpoint; the
server keeps running and the model loaded before stays usable.

The machine's RAM is read through a fake probe (``tmp_services(memory=...)``): no real memory is exhausted.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.api_server import serve_api
from tests.app_services import tmp_services
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.models.ram_budget import GIB

SD15 = demo_checkpoint_name("sd15")
SDXL = demo_checkpoint_name("sdxl")
REFINER = "refiner-copy.safetensors"  # another SDXL file: A1111 lets a base model refine too
REQUEST = {"prompt": "a house", "steps": 1, "width": 64, "height": 64, "seed": 1}


class FakeMemory:
    def __init__(self) -> None:
        self.available = 64 * GIB

    def available_bytes(self) -> int:
        return self.available

    def total_bytes(self) -> int:
        return 128 * GIB


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    write_demo_models(root / "models", ("sd15", "sdxl"))
    checkpoints = root / "models" / "Stable-diffusion"
    shutil.copy(checkpoints / SDXL, checkpoints / REFINER)
    memory = FakeMemory()
    services = tmp_services(root, memory=memory, ram_cache_models=2, ram_cache_gib=8.0)
    services.generation.start()
    try:
        with serve_api(services) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield client, memory, services
    finally:
        services.generation.stop()


def _assert_refusal(r: httpx.Response, model: str = SDXL, field: str = "sd_model_checkpoint") -> None:
    assert r.status_code == 507, r.text
    body = r.json()
    assert body["error"] == "NotEnoughMemory" and body["field"] == field
    detail = body["detail"]
    assert detail.startswith(f"not enough memory to load {model}"), detail
    for phrase in ("needs about", "GiB", "Close other programs", "--ram-cache-gib", "the active model stays loaded"):
        assert phrase in detail, detail
    assert "Traceback" not in detail and "NotEnoughMemoryError" not in detail


def test_a_switch_that_cannot_fit_is_a_507_and_the_loaded_model_stays(app):
    client, memory, services = app
    memory.available = 64 * GIB
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SD15}).status_code == 200
    memory.available = 0
    _assert_refusal(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SDXL}))
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(SD15)
    assert services.manager.current_entry.name == SD15
    # the server and the model loaded before still work
    r = client.post("/sdapi/v1/txt2img", json=REQUEST)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1


def test_a_generation_on_a_model_that_cannot_fit_is_a_507(app):
    client, memory, services = app
    memory.available = 64 * GIB
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SD15}).status_code == 200
    memory.available = 0
    _assert_refusal(
        client.post("/sdapi/v1/txt2img", json={**REQUEST, "override_settings": {"sd_model_checkpoint": SDXL}})
    )
    assert services.manager.current_entry.name == SD15
    assert client.post("/sdapi/v1/txt2img", json=REQUEST).status_code == 200
    # once there is room, the same request goes through
    memory.available = 64 * GIB
    r = client.post("/sdapi/v1/txt2img", json={**REQUEST, "override_settings": {"sd_model_checkpoint": SDXL}})
    assert r.status_code == 200, r.text


def test_a_refiner_that_cannot_fit_is_a_507_naming_the_refiner(app):
    client, memory, services = app
    memory.available = 64 * GIB
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SDXL}).status_code == 200
    memory.available = 0
    body = {**REQUEST, "refiner_checkpoint": REFINER, "refiner_switch_at": 0.5}
    _assert_refusal(client.post("/sdapi/v1/txt2img", json=body), REFINER, "refiner_checkpoint")
    assert services.manager.current_entry.name == SDXL
    assert client.post("/sdapi/v1/txt2img", json=REQUEST).status_code == 200


def test_the_openapi_document_lists_the_507(app):
    client, _memory, _services = app
    paths = client.get("/openapi.json").json()["paths"]
    assert "507" in paths["/sdapi/v1/txt2img"]["post"]["responses"]
    assert "507" in paths["/sdapi/v1/options"]["post"]["responses"]
