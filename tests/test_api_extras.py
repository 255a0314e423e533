"""A1111's Extras routes and ``GET /upscalers`` through a real HTTP server over the composed services."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.tolerance import assert_close_pixels
from tests.upscaler_files import compact_state, save_safetensors
from webui.outputs.writer import read_infotext
from webui.upscale.run import TileOptions, Upscalers

MODEL = "2x_tiny_compact"


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def picture(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    save_safetensors(compact_state(scale=2), root / "models" / "ESRGAN" / f"{MODEL}.safetensors")
    services = tmp_services(root, upscaler_tile=32, upscaler_tile_overlap=16)
    services.generation.start()
    with serve_api(services) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield services, client
    services.generation.stop()


def test_upscalers_lists_the_models_in_a1111s_shape(env):
    _, client = env
    items = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in items[:3]] == ["None", "Lanczos", "Nearest"]
    model = next(u for u in items if u["name"] == MODEL)
    assert set(model) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert model["model_name"] == "ESRGAN" and model["model_path"].endswith(f"{MODEL}.safetensors")
    assert model["scale"] == 2


def test_single_image_round_trip_equals_the_upscaler(env):
    services, client = env
    image = picture()
    body = {"image": b64(image), "upscaler_1": MODEL, "upscaling_resize": 2, "gfpgan_visibility": 0.5}
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    out = unb64(r.json()["image"])
    assert out.size == (96, 80)
    direct = Upscalers(services.paths.models).upscale(image, 2, MODEL, TileOptions(32, 16))
    assert_close_pixels(out, direct)
    assert r.json()["html_info"] == f"Postprocess upscale by: 2, Postprocess upscaler: {MODEL}"
    assert not list((services.paths.outputs).rglob("*.png"))  # as A1111's API: nothing saved by default


def test_batch_round_trip_keeps_the_order_and_saves_when_asked(env):
    services, client = env
    images = [picture(seed=1), picture(32, 32, seed=2)]
    body = {
        "imageList": [{"data": b64(im), "name": f"in{i}.png"} for i, im in enumerate(images)],
        "resize_mode": 1,
        "upscaling_resize_w": 64,
        "upscaling_resize_h": 64,
        "upscaler_1": MODEL,
        "upscaler_2": "Lanczos",
        "extras_upscaler_2_visibility": 0.25,
        "save_images": True,
    }
    r = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert r.status_code == 200, r.text
    outs = [unb64(text) for text in r.json()["images"]]
    assert [o.size for o in outs] == [(64, 64), (64, 64)]
    saved = sorted((services.paths.outputs / "extras-images").rglob("*.png"))
    assert len(saved) == 2
    text = read_infotext(Image.open(saved[0]))
    assert text.startswith("Postprocess upscale to: 64x64, Postprocess crop to: 64x64, Postprocess upscaler: ")
    assert text.endswith("Postprocess upscaler 2: Lanczos")


def test_show_extras_results_false_sends_no_images(env):
    _, client = env
    body = {"image": b64(picture()), "upscaler_1": "Lanczos", "show_extras_results": False}
    assert client.post("/sdapi/v1/extra-single-image", json=body).json()["image"] is None


def test_an_unknown_upscaler_is_a_422_listing_the_installed_ones(env):
    _, client = env
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture()), "upscaler_1": "R-ESRGAN 4x+"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "upscaler_1" and MODEL in r.json()["valid"]


def test_a_bad_image_is_a_422(env):
    _, client = env
    r = client.post("/sdapi/v1/extra-single-image", json={"image": "bm90IGFuIGltYWdl", "upscaler_1": "Lanczos"})
    assert r.status_code == 422 and r.json()["field"] == "image"


def test_a_folder_batch_reads_and_writes_inside_the_outputs_folder_only(env, tmp_path):
    from webui.generation.requests import RequestError
    from webui.upscale.extras import ExtrasRequest

    services, _ = env
    backend = services.backend
    source = services.paths.outputs / "to-upscale"
    source.mkdir(exist_ok=True)
    picture(seed=5).save(source / "a.png")
    (source / "notes.txt").write_text("not an image")
    images, names = backend.extras_folder_images(str(source))
    assert names == ("a.png",)
    assert backend.extras_folder_images("to-upscale")[1] == names  # relative: inside the outputs folder
    out = services.paths.outputs / "upscaled"
    req = ExtrasRequest(images=images, names=names, upscaler_1=MODEL, output_dir=str(out))
    job = backend.wait(backend.submit_extras(req, source="test").id, 60)
    assert job.state == "done", job.error
    assert [p.name for p in out.iterdir()] == ["a.png"]
    assert "Postprocess upscaler: 2x_tiny_compact" in read_infotext(Image.open(out / "a.png"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for escape in (str(outside), "../" + outside.name, "to-upscale/../../"):
        with pytest.raises(RequestError) as refused:
            backend.extras_folder_images(escape)
        assert refused.value.field == "input_dir"
    with pytest.raises(RequestError) as refused:
        backend.submit_extras(ExtrasRequest(images=images, upscaler_1=MODEL, output_dir=str(outside)), source="test")
    assert refused.value.field == "output_dir" and not list(outside.iterdir())


def test_interrupt_stops_a_running_upscale_between_tiles(env):
    import time

    from webui.upscale.extras import ExtrasRequest

    services, client = env
    backend = services.backend
    tiles = TileOptions(tile=16, overlap=4)
    req = ExtrasRequest(images=(picture(512, 512, seed=9),), upscaler_1=MODEL, save=False, tiles=tiles)
    job = backend.submit_extras(req, source="test")
    deadline = time.monotonic() + 60
    while backend.job(job.id).progress.step < 2 and not backend.job(job.id).finished:
        assert time.monotonic() < deadline, "the upscale never reported a tile"
        time.sleep(0.005)
    assert client.post("/sdapi/v1/interrupt").json()["done"]
    done = backend.wait(job.id, 60)
    assert done.state == "interrupted", done.state
    assert 2 <= done.progress.step < done.progress.steps and done.result.images == []


def test_a_damaged_model_file_fails_the_job_with_words(env):
    services, client = env
    broken = services.paths.models / "ESRGAN" / "4x_broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    try:
        r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture()), "upscaler_1": "4x_broken"})
    finally:
        broken.unlink()
    assert r.status_code == 500, r.text
    assert "4x_broken.safetensors: cannot read this safetensors file" in r.json()["detail"]


def test_the_tile_size_setting_applies_live(env):
    services, _ = env
    backend = services.backend
    try:
        result = backend.save_settings({"upscaler_tile": 64, "upscaler_tile_overlap": 8})
        assert services.upscalers.tiles == TileOptions(64, 8), result
    finally:
        backend.save_settings({"upscaler_tile": 32, "upscaler_tile_overlap": 16})
