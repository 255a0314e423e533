"""The A1111 ControlNet extension's API on the composed app, through HTTP, as its clients call it.

``/controlnet/version``, ``model_list`` (the tiny control models, ``name [hash8]``), ``module_list``
(names, labels, sliders), ``detect`` (canny on an image; non-images and unknown modules are 4xx in
words), and a txt2img whose ``alwayson_scripts.ControlNet.args`` is what webuiapi sends: the image
changes, the infotext has ``ControlNet 0``, a ControlNet of another family is a 422 that says so.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.api_server import serve_api
from tests.app_services import tmp_services
from webui.models.demo import demo_checkpoint_name, write_demo_models

SD15 = demo_checkpoint_name("sd15")
BASE = {"steps": 3, "width": 64, "height": 64, "seed": 11, "override_settings": {"sd_model_checkpoint": SD15}}


def _write_control_models(models: Path) -> dict[str, str]:
    """The tiny control models (``tests.control_models``): {what: the name model_list shows before the hash}."""
    from tests.control_models import write_tiny_controlnet, write_tiny_t2i_adapter

    folder = models / "ControlNet"
    return {
        "sd15": write_tiny_controlnet(folder, "sd15").stem,
        "sdxl": write_tiny_controlnet(folder, "sdxl").stem,
        "sd15 diffusers": write_tiny_controlnet(folder, "sd15", layout="diffusers").name,
        "t2i sd15": write_tiny_t2i_adapter(folder, "sd15").stem,
        "canny": write_tiny_controlnet(folder, "sd15", name="control_tiny_sd15_canny").stem,
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from webui.app import build_server

    root = tmp_path_factory.mktemp("control-api")
    write_demo_models(root / "models", ("sd15",))
    stems = _write_control_models(root / "models")
    services = tmp_services(root)
    services.generation.start()
    try:
        with serve_api(services, app=build_server(services)) as url, httpx.Client(base_url=url, timeout=180) as c:
            yield c, stems
    finally:
        services.generation.stop()


@pytest.fixture(scope="module")
def client(app):
    return app[0]


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def shapes(size: int = 64) -> Image.Image:
    """A white square and a circle on black: canny finds their edges."""
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 30, 30), fill="white")
    draw.ellipse((34, 30, 58, 56), fill=(200, 200, 200))
    return image


def test_version_and_settings(client):
    assert client.get("/controlnet/version").json() == {"version": 3}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_model_list_names_the_tiny_control_models_with_their_legacy_hash(app):
    client, stems = app
    listed = client.get("/controlnet/model_list", params={"update": "true"}).json()["model_list"]
    assert "None" not in listed
    for stem in stems.values():
        matches = [name for name in listed if name.startswith(stem + " [")]
        assert matches, (stem, listed)
        digest = matches[0].rsplit("[", 1)[1].rstrip("]")
        assert len(digest) == 8 and int(digest, 16) >= 0


def test_module_list_names_labels_and_sliders(client):
    plain = client.get("/controlnet/module_list").json()
    assert plain["module_list"][0] == "none" and "canny" in plain["module_list"]
    canny = plain["module_detail"]["canny"]
    assert set(canny) >= {"model_free", "sliders"}
    names = [s["name"] for s in canny["sliders"]]
    assert len(names) == 3 and "Resolution" in names[0]
    assert all({"name", "value", "min", "max"} <= set(s) for s in canny["sliders"])
    assert [s["value"] for s in canny["sliders"][1:]] == [100, 200]
    labels = client.get("/controlnet/module_list", params={"alias_names": "true"}).json()
    assert "invert (from white bg & black line)" in labels["module_list"]
    assert "invert" not in labels["module_list"]
    assert set(labels["module_detail"]) == set(labels["module_list"])


def test_control_types_group_modules_and_models_by_name(app):
    client, stems = app
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert {"All", "Canny", "Depth", "IP-Adapter"} <= set(types)
    canny = types["Canny"]
    assert canny["module_list"] == ["none", "canny"] and canny["default_option"] == "canny"
    assert canny["model_list"][0] == "None" and canny["default_model"].startswith(stems["canny"] + " [")
    assert [m.rsplit(" [", 1)[0] for m in canny["model_list"][1:]] == [stems["canny"]]
    assert len(types["All"]["model_list"]) == len(stems) + 1 and types["All"]["default_model"] == "None"
    assert types["Depth"]["model_list"] == ["None"] and types["Depth"]["default_option"] == "depth"


def test_detect_runs_canny(client):
    body = {
        "controlnet_module": "canny",
        "controlnet_input_images": [b64(shapes())],
        "controlnet_processor_res": 64,
        "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200,
    }
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["info"] == "Success" and len(answer["images"]) == 1
    edges = np.asarray(decode(answer["images"][0]).convert("L"))
    assert edges.shape == (64, 64)
    assert set(np.unique(edges)) <= {0, 255} and 0 < (edges == 255).mean() < 0.3  # thin edges, not the fill
    # webuiapi's name for the images and a data URL work too; -1 takes the sliders' defaults
    again = client.post(
        "/controlnet/detect",
        json={"controlnet_module": "canny", "controlnet_images": ["data:image/png;base64," + b64(shapes())]},
    )
    assert again.status_code == 200, again.text and again.json()["images"]


def test_detect_refuses_what_it_cannot_run_in_words(client):
    text = base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n").decode()
    bad = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [text]})
    assert bad.status_code == 422 and "not an image" in bad.json()["detail"]
    assert bad.json()["field"].startswith("controlnet_input_images")
    unknown = client.post(
        "/controlnet/detect", json={"controlnet_module": "nope", "controlnet_input_images": [b64(shapes())]}
    )
    assert unknown.status_code == 422 and "Module not available" in unknown.json()["detail"]
    assert unknown.json()["field"] == "controlnet_module" and "canny" in unknown.json()["valid"]
    empty = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": []})
    assert empty.status_code == 422 and "No image" in empty.json()["detail"]
    not_json = client.post("/controlnet/detect", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code in (400, 422) and "error" in not_json.json()


def _webuiapi_unit(model: str, image: Image.Image, **changes) -> dict:
    """What ``webuiapi.ControlNetUnit(...).to_dict()`` sends (its defaults)."""
    unit = {
        "image": b64(image),
        "mask": None,
        "module": "canny",
        "model": model,
        "weight": 1.0,
        "resize_mode": "Resize and Fill",
        "low_vram": False,
        "processor_res": 512,
        "threshold_a": 64,
        "threshold_b": 64,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "Balanced",
        "pixel_perfect": False,
        "hr_option": "Both",
        "enabled": True,
    }
    unit.update(changes)
    return unit


def _model(client, stem: str) -> str:
    listed = client.get("/controlnet/model_list").json()["model_list"]
    return next(name for name in listed if name.startswith(stem + " ["))


def test_txt2img_with_a_webuiapi_unit_changes_the_image_and_names_it_in_the_infotext(app):
    client, stems = app
    plain = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "a house"})
    assert plain.status_code == 200, plain.text
    model = _model(client, stems["sd15"])
    unit = _webuiapi_unit(model, shapes(), processor_res=64)
    r = client.post(
        "/sdapi/v1/txt2img",
        json={**BASE, "prompt": "a house", "alwayson_scripts": {"ControlNet": {"args": [unit]}}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert "ControlNet 0" in info["infotexts"][0], info["infotexts"][0]
    assert "Module: canny" in info["infotexts"][0] and stems["sd15"] in info["infotexts"][0]
    first = np.asarray(decode(body["images"][0]).convert("RGB"), dtype=np.float64)
    base = np.asarray(decode(plain.json()["images"][0]).convert("RGB"), dtype=np.float64)
    assert first.shape == base.shape and np.abs(first - base).mean() > 1.0  # far beyond rounding


def test_a_controlnet_of_another_family_is_a_422_that_says_so(app):
    client, stems = app
    model = _model(client, stems["sdxl"])
    unit = _webuiapi_unit(model, shapes())
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "SDXL" in detail and "SD 1.5" in detail, detail
