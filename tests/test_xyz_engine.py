"""X/Y/Z plot on the real engine and tiny models: a 2x2 grid's cells are the single jobs (same seed, same
computation), the grid and the cells are saved with their infotexts, and the A1111 API runs it by script_name."""

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
from webui.generation.requests import GenerationRequest
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.outputs.writer import read_infotext
from webui.xyz.grid import from_script_args

SD15 = demo_checkpoint_name("sd15")
BASE = GenerationRequest(prompt="a lighthouse", seed=21, steps=2, width=64, height=64, sd_model_checkpoint=SD15)
AXES_2X2 = ["Steps", "2, 3", [], "CFG Scale", "1, 7", [], "Nothing", "", []]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from webui.app import build_server

    root = tmp_path_factory.mktemp("xyz")
    write_demo_models(root / "models", ("sd15",))
    services = tmp_services(root, ram_cache_models=2)
    services.generation.start()
    try:
        with serve_api(services, app=build_server(services)) as url, httpx.Client(base_url=url, timeout=300) as c:
            yield services, c, root
    finally:
        services.generation.stop()


def run(services, request):
    job = services.generation.submit(request, source="test")
    assert job.wait(300) and job.state == "done", job.error
    return job


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_grid_cells_equal_the_single_jobs(app):
    services, _, root = app
    args = [*AXES_2X2, False, True, False, False, False, False, False, 0, False]
    grid_job = run(services, from_script_args(BASE, args))
    result = grid_job.result
    assert len(result.images) == 1 + 4
    assert grid_job.progress.total_steps == grid_job.progress.done_steps == 2 + 3 + 2 + 3
    cells = result.images[1:]
    for i, (steps, cfg) in enumerate([(2, 1.0), (3, 1.0), (2, 7.0), (3, 7.0)]):  # layout order: x fastest
        single = run(services, BASE.replace(steps=steps, cfg_scale=cfg)).result
        assert np.array_equal(pixels(cells[i]), pixels(single.images[0])), (steps, cfg)  # the same computation
        assert result.infotexts[1 + i] == single.infotexts[0]
    assert not np.array_equal(pixels(cells[0]), pixels(cells[3]))  # the axes changed the images
    whole = pixels(result.images[0])
    assert whole.shape == (128, 128, 3)  # no legend, no margin
    assert np.array_equal(whole[64:, 64:], pixels(cells[3]))  # y=2, x=2: bottom right
    grids = sorted((root / "outputs" / "txt2img-grids").rglob("grid-*.png"))
    assert len(grids) == 1
    text = read_infotext(grids[0])
    assert text.startswith(result.infotexts[1]) and 'X Type: Steps, X Values: "2,3", Y Type: CFG Scale' in text
    assert len(sorted((root / "outputs" / "txt2img-images").rglob("*.png"))) >= 4 + 4


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_api_script_name_round_trip(app):
    _, client, _ = app
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": ["x/y/z plot"], "img2img": ["x/y/z plot"]}
    info = client.get("/sdapi/v1/script-info").json()
    assert [a["label"] for a in info[0]["args"]][:4] == ["x_type", "x_values", "x_values_dropdown", "y_type"]
    body = {
        "prompt": "a lighthouse",
        "seed": 5,
        "steps": 2,
        "width": 64,
        "height": 64,
        "script_name": "X/Y/Z plot",
        "script_args": [4, "2-3", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 4, False],
        "override_settings": {"sd_model_checkpoint": SD15},
    }
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["images"]) == 3  # the grid, then each cell
    grid, first = decode(data["images"][0]), decode(data["images"][1])
    assert grid.width > 2 * 64 and grid.height > 64  # legend above, a 4 px margin between the cells
    infotexts = json.loads(data["info"])["infotexts"]
    assert "Script: X/Y/Z plot, X Type: Steps" in infotexts[0] and "Steps: 2," in infotexts[1]
    assert client.post("/sdapi/v1/png-info", json={"image": data["images"][0]}).json()["info"] == infotexts[0]
    assert first.size == (64, 64)
    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [4, "2, many", []]})
    assert (
        bad.status_code == 422 and "'many'" in bad.json()["detail"] and bad.json()["field"] == "script_args (x_values)"
    )
    unknown = client.post("/sdapi/v1/txt2img", json={**body, "script_args": ["Colour", "1", []]})
    assert unknown.status_code == 422 and "Colour" in unknown.json()["detail"]
    sampler = client.post("/sdapi/v1/txt2img", json={**body, "script_args": ["Sampler", "", ["Euler", "Nope"]]})
    assert sampler.status_code == 404 and "Nope" in sampler.json()["detail"]
