"""Bad input through the API and the UI's request path: a clear 4xx (or message) and no side effects.

The server is the real ``/sdapi/v1`` router over the real services and engine on tiny SD 1.5 /
SDXL demo models (64x64, 2 steps). Every bad request must answer 4xx in the API's JSON error shape,
name the field at fault, queue nothing when the request can be refused up front, write no file,
leave the loaded model and the options as they were, and the next good job must give the same
image as before, bit for bit. The UI half drives the functions behind Generate, PNG Info and the
model bar with the values a browser would send.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.headers import write_safetensors
from tests.security_figures import record as record_figures
from webui.models.demo import demo_checkpoint_name, write_demo_models

SD15 = demo_checkpoint_name("sd15")
BASE: dict[str, Any] = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 7}
# Header-only LoRAs for other families (cross-attention width 2048 = SDXL; joint blocks = SD3).
SDXL_LORA = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (64, 4),
}
SD3_LORA = {
    "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 1536),
    "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": (4608, 4),
}


# --- images ------------------------------------------------------------------------------------------


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_header_only(width: int, height: int) -> str:
    """A PNG whose header declares ``width`` x ``height`` but holds almost no data (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


GOOD_PNG = png_b64(Image.new("RGB", (64, 64), "gray"))
TRUNCATED_PNG = base64.b64encode(base64.b64decode(GOOD_PNG)[:40]).decode()


def decode(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


# --- the server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-requests")
    models = root / "models"
    write_demo_models(models, ("sd15", "sdxl"))
    write_safetensors(models / "Lora" / "xl_style.safetensors", SDXL_LORA)
    write_safetensors(models / "Lora" / "sd3_style.safetensors", SD3_LORA)
    services = tmp_services(root, preview_every=0)
    submitted: list[Any] = []
    real_submit = services.generation.submit

    def spy(*args: Any, **kwargs: Any) -> Any:
        job = real_submit(*args, **kwargs)
        submitted.append(job)
        return job

    services.generation.submit = spy  # instance attribute: the API and the UI both call through it
    services.generation.start()
    try:
        with serve_api(services) as url, httpx.Client(base_url=url, timeout=120) as client:
            first = client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "reference", "save_images": True})
            assert first.status_code == 200, first.text
            yield SimpleNamespace(
                services=services,
                client=client,
                submitted=submitted,
                outputs=root / "outputs",
                reference=first.json()["images"][0],
            )
    finally:
        services.generation.stop()


def snapshot(env: Any) -> dict[str, Any]:
    files = sorted(str(p.relative_to(env.outputs)) for p in env.outputs.rglob("*") if p.is_file())
    return {
        "files": files,
        "jobs": len(env.submitted),
        "model": env.services.manager.current_entry.name,
        "options": env.client.get("/sdapi/v1/options").json(),
    }


def assert_error_shape(r: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "field", "valid"}, body
    assert body["detail"] and "Traceback" not in body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body


# --- API: refused before anything is queued ------------------------------------------------------------

# (name, route, body, status, field)
REFUSED_UP_FRONT: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    ("init image not base64", "img2img", {"init_images": ["not base64 at all!"]}, 422, "init_images[0]"),
    ("init image not an image", "img2img", {"init_images": [base64.b64encode(b"hello").decode()]}, 422, None),
    ("init image is a script", "img2img", {"init_images": [base64.b64encode(b"<svg onload=x>").decode()]}, 422, None),
    ("init image truncated", "img2img", {"init_images": [TRUNCATED_PNG]}, 422, "init_images[0]"),
    ("init image pixel bomb", "img2img", {"init_images": [png_header_only(30000, 30000)]}, 422, "init_images[0]"),
    ("init image over the limit", "img2img", {"init_images": [png_header_only(5000, 5000)]}, 422, "init_images[0]"),
    ("init image empty", "img2img", {"init_images": [""]}, 422, "init_images[0]"),
    ("no init image", "img2img", {"init_images": []}, 422, "init_images"),
    ("image URL", "img2img", {"init_images": ["http://169.254.169.254/latest"]}, 422, "init_images[0]"),
    ("mask not base64", "img2img", {"init_images": [GOOD_PNG], "mask": "%%%"}, 422, "mask"),
    ("mask empty", "img2img", {"init_images": [GOOD_PNG], "mask": png_b64(Image.new("L", (64, 64)))}, 422, "mask"),
    (
        "size from a huge image",
        "img2img",
        {"init_images": [png_b64(Image.new("1", (4096, 64)))], "width": 0},
        422,
        "init_image",
    ),
    (
        "size from a 1x1 image",
        "img2img",
        {"init_images": [png_b64(Image.new("RGB", (1, 1)))], "width": 0},
        422,
        "init_image",
    ),
    ("width 8192", "txt2img", {"width": 8192}, 422, "width"),
    ("height not x8", "txt2img", {"height": 100}, 422, "height"),
    ("width negative", "txt2img", {"width": -64}, 422, "width"),
    (
        "hires to 8192",
        "txt2img",
        {"width": 2048, "enable_hr": True, "hr_scale": 4, "denoising_strength": 0.5},
        422,
        "hr_scale",
    ),
    (
        "hires resize negative",
        "txt2img",
        {"enable_hr": True, "hr_resize_x": -64, "denoising_strength": 0.5},
        422,
        "hr_resize_x",
    ),
    ("prompt 10,001 chars", "txt2img", {"prompt": "x" * 10_001}, 422, "prompt"),
    ("negative 10,001 chars", "txt2img", {"negative_prompt": "x" * 10_001}, 422, "negative_prompt"),
    ("steps 0", "txt2img", {"steps": 0}, 422, "steps"),
    ("steps 10^6", "txt2img", {"steps": 1_000_000}, 422, "steps"),
    ("batch 10^30", "txt2img", {"batch_size": 10**30}, 422, "batch_size"),
    ("seed 2^70", "txt2img", {"seed": 2**70}, 422, "seed"),
    ("seed not a number", "txt2img", {"seed": "abc"}, 422, "seed"),
    ("cfg 1e308", "txt2img", {"cfg_scale": 1e308}, 422, "cfg_scale"),
    ("unknown sampler", "txt2img", {"sampler_name": "Euler z"}, 404, "sampler_name"),  # A1111 answers 404 too
    (
        "unknown hires sampler, other model",
        "txt2img",
        {
            "override_settings": {"sd_model_checkpoint": demo_checkpoint_name("sdxl")},
            "enable_hr": True,
            "hr_sampler_name": "Nope",
            "denoising_strength": 0.5,
        },
        404,
        "hr_sampler_name",
    ),
    (
        "unknown checkpoint",
        "txt2img",
        {"override_settings": {"sd_model_checkpoint": "nope.safetensors"}},
        404,
        "sd_model_checkpoint",
    ),
    ("unknown VAE", "txt2img", {"override_settings": {"sd_vae": "nope.safetensors"}}, 404, "sd_vae"),
    ("unknown LoRA", "txt2img", {"prompt": "<lora:missing:1>"}, 404, "prompt"),
    ("LoRA traversal", "txt2img", {"prompt": "<lora:../../../etc/passwd:1>"}, 404, "prompt"),
    ("LoRA weight not a number", "txt2img", {"prompt": "<lora:xl_style:abc>"}, 422, "prompt"),
    (
        "unknown refiner",
        "txt2img",
        {"refiner_checkpoint": "nope", "refiner_switch_at": 0.5},
        404,
        "refiner_checkpoint",
    ),
    ("script", "txt2img", {"script_name": "prompt matrix"}, 422, "script_name"),
    (
        "x/y/z axis",
        "txt2img",
        {"script_name": "x/y/z plot", "script_args": ["Colour", "1", []]},
        422,
        "script_args (x_type)",
    ),
    ("bad output format", "txt2img", {"override_settings": {"samples_format": "gif"}}, 422, "output_format"),
    (
        "clip skip text",
        "txt2img",
        {"override_settings": {"CLIP_stop_at_last_layers": "two"}},
        422,
        "override_settings.CLIP_stop_at_last_layers",
    ),
    ("rng unknown", "txt2img", {"rng": "quantum"}, 422, "rng"),
    ("denoise 0", "img2img", {"init_images": [GOOD_PNG], "denoising_strength": 0}, 422, "denoising_strength"),
    ("resize mode 99", "img2img", {"init_images": [GOOD_PNG], "resize_mode": 99}, 422, "resize_mode"),
    (
        "denoise 1e-10",
        "img2img",
        {"init_images": [GOOD_PNG], "denoising_strength": 1e-10},
        422,
        "denoising_strength",
    ),
]


@pytest.mark.parametrize(
    ("route", "extra", "status", "field"),
    [case[1:] for case in REFUSED_UP_FRONT],
    ids=[case[0] for case in REFUSED_UP_FRONT],
)
def test_bad_generation_request_is_refused_before_queueing(env, route, extra, status, field):
    before = snapshot(env)
    body = {**BASE, "save_images": True, **extra}
    assert_error_shape(env.client.post(f"/sdapi/v1/{route}", json=body), status, field)
    assert snapshot(env) == before  # nothing queued, saved, loaded or changed
    record_figures("bad_requests", inputs=1)


# Bodies that are not the JSON a client means: (name, raw bytes, status, field)
RAW_BODIES: list[tuple[str, bytes, int, str | None]] = [
    ("not UTF-8", b'{"prompt": "caf\xe9"}', 400, "body"),
    ("not JSON", b"prompt=cat", 422, "body"),
    ("a JSON list", b"[1, 2, 3]", 422, "body"),
    ("NaN", b'{"steps": 2, "cfg_scale": NaN}', 422, "cfg_scale"),
    ("Infinity in an ignored field", b'{"steps": 2, "eta": Infinity}', 422, "eta"),
    (
        "1e400 clip skip",
        b'{"override_settings": {"CLIP_stop_at_last_layers": 1e400}}',
        422,
        "override_settings.CLIP_stop_at_last_layers",
    ),
    ("lone surrogate", b'{"prompt": "a \\ud800 b"}', 422, "prompt"),
    ("lone surrogate key", b'{"\\udfff": 1}', 422, "body"),
    ("nested 100 deep", b'{"comments": ' + b"[" * 100 + b"]" * 100 + b"}", 422, None),
    ("nested 100000 deep", b'{"comments": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, None),
]


@pytest.mark.parametrize(("raw", "status", "field"), [c[1:] for c in RAW_BODIES], ids=[c[0] for c in RAW_BODIES])
@pytest.mark.parametrize("route", ["txt2img", "img2img", "options", "png-info"])
def test_unusable_body_is_refused_on_every_route(env, route, raw, status, field):
    before = snapshot(env)
    r = env.client.post(f"/sdapi/v1/{route}", content=raw, headers={"content-type": "application/json"})
    body = assert_error_shape(r, status, None)
    if field is not None and route in ("txt2img", "img2img"):
        assert body["field"] == field, body
    assert snapshot(env) == before
    record_figures("bad_requests", inputs=1)


def test_body_over_the_size_limit_is_refused_with_or_without_a_length(env, monkeypatch):
    monkeypatch.setattr("webui.api.body_guard.MAX_BODY_BYTES", 1 << 20)
    before = snapshot(env)
    big = json.dumps({"prompt": "x", "init_images": ["A" * (2 << 20)]}).encode()
    assert_error_shape(env.client.post("/sdapi/v1/img2img", content=big), 413, "body")

    def chunked():  # no Content-Length: the server must count what it reads
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    assert_error_shape(env.client.post("/sdapi/v1/img2img", content=chunked()), 413, "body")
    assert snapshot(env) == before
    record_figures("bad_requests", inputs=2)


def test_png_info_refuses_what_is_not_an_image(env):
    for payload, field in [("%%%", "image"), (base64.b64encode(b"GIF89a\x00").decode(), "image")]:
        assert_error_shape(env.client.post("/sdapi/v1/png-info", json={"image": payload}), 422, field)
    assert_error_shape(env.client.post("/sdapi/v1/png-info", json={"image": png_header_only(9000, 9000)}), 422, "image")
    record_figures("bad_requests", inputs=3)


def test_options_apply_nothing_unless_every_value_is_good(env):
    before = snapshot(env)
    cases = [
        ({"sd_model_checkpoint": "nope.safetensors"}, 404, "sd_model_checkpoint"),
        ({"CLIP_stop_at_last_layers": 2, "samples_format": "gif"}, 422, "samples_format"),
        ({"CLIP_stop_at_last_layers": 1e30}, 422, "CLIP_stop_at_last_layers"),
        ({"sd_checkpoints_limit": "lots"}, 422, "sd_checkpoints_limit"),
        ({"sd3_enable_t5": "yes"}, 422, "sd3_enable_t5"),
        ({"sd_vae": "../../etc/passwd"}, 404, "sd_vae"),
    ]
    for values, status, field in cases:
        assert_error_shape(env.client.post("/sdapi/v1/options", json=values), status, field)
    assert snapshot(env) == before
    record_figures("bad_requests", inputs=len(cases))


def test_get_routes_refuse_bad_query_values(env):
    assert_error_shape(env.client.get("/sdapi/v1/progress", params={"skip_current_image": "maybe"}), 422, None)
    record_figures("bad_requests", inputs=1)


# --- API: refused by the engine, with nothing saved and the model untouched -----------------------------


@pytest.mark.parametrize("lora", ["xl_style", "sd3_style"])
def test_lora_for_another_family_is_refused_and_the_next_image_is_unchanged(env, lora):
    before = snapshot(env)
    r = env.client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": f"reference <lora:{lora}:1>", "save_images": True})
    body = assert_error_shape(r, 422, "prompt")
    assert "SD 1.5" in body["detail"] and lora in body["detail"]
    after = snapshot(env)
    assert (after["files"], after["model"]) == (before["files"], before["model"])
    again = env.client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "reference"})
    assert again.status_code == 200, again.text
    assert np.array_equal(decode(again.json()["images"][0]), decode(env.reference))  # no LoRA left half-applied
    record_figures("bad_requests", inputs=1)


def test_clip_skip_deeper_than_the_text_encoder_is_a_422(env):
    r = env.client.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"CLIP_stop_at_last_layers": 12}})
    assert_error_shape(r, 422, "clip_skip")  # the demo model's text encoder has 2 layers


def test_10000_character_prompt_generates(env):
    prompt = ("a (cat:1.1), [dog] BREAK " * 500)[:10_000]
    r = env.client.post("/sdapi/v1/txt2img", json={**BASE, "prompt": prompt})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["prompt"] == prompt
    record_figures("bad_requests", inputs=1)


# --- the UI's request path ---------------------------------------------------------------------------


def ui_submit(env: Any, task: str, values: dict[str, Any]) -> tuple[str, str]:
    """What Generate does with a tab's values: build, validate, queue (webui.ui.runner)."""
    from webui.ui.control_values import request_from_values
    from webui.ui.runner import _page_request, submit_from_page

    def build() -> Any:
        return _page_request(env.services.backend, lambda v: request_from_values(task, v), values, SD15, "Automatic")

    return submit_from_page(env.services.backend, build)


UI_VALUES = {"prompt": "ui", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 3}
# (name, task, changes, label the message starts with)
UI_REFUSED = [
    ("steps text", "txt2img", {"steps": "many"}, "**Sampling steps:**"),
    ("steps empty", "txt2img", {"steps": ""}, "**Sampling steps:**"),
    ("cfg NaN", "txt2img", {"cfg_scale": float("nan")}, "**CFG Scale:**"),
    ("width 8192", "txt2img", {"width": 8192}, "**Width:**"),
    ("prompt 10,001", "txt2img", {"prompt": "x" * 10_001}, "**Prompt:**"),
    ("seed 2^40", "txt2img", {"seed": 2**40}, "**Seed:**"),
    ("batch 0", "txt2img", {"batch_size": 0}, "**Batch size:**"),
    ("img2img without image", "img2img", {"init_image": None}, "**"),
    (
        "mask of another size",
        "inpaint",
        {"init_image": Image.new("RGB", (64, 64)), "mask": Image.new("L", (32, 32))},
        "**Mask",
    ),
]


@pytest.mark.parametrize(("task", "changes", "label"), [c[1:] for c in UI_REFUSED], ids=[c[0] for c in UI_REFUSED])
def test_ui_generate_refuses_bad_values_without_queueing(env, task, changes, label):
    before = snapshot(env)
    job_id, error = ui_submit(env, task, {**UI_VALUES, **changes})
    assert job_id == "" and error.startswith(label), error
    assert snapshot(env) == before
    record_figures("bad_requests", inputs=1)


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 2048, "height": 2048, "enable_hr": True, "hr_scale": 4.0, "denoising_strength": 0.5},
        {"enable_hr": True, "hr_resize_x": -64, "denoising_strength": 0.5},
        {"enable_hr": True, "denoising_strength": 1e-10},
        {"prompt": "a \ud800 b"},
    ],
    ids=["hires to 8192", "hires resize negative", "hires denoise 1e-10", "lone surrogate"],
)
def test_ui_generate_refuses_sizes_and_text_the_engine_cannot_use(env, changes):
    before = snapshot(env)
    job_id, error = ui_submit(env, "txt2img", {**UI_VALUES, **changes})
    if job_id:  # queued after all: stop it before it runs for minutes at 8192x8192
        env.services.generation.interrupt(job_id)
        assert env.services.generation.get(job_id).wait(120)
    assert job_id == "" and error, error
    assert snapshot(env) == before


def test_ui_unknown_sampler_fails_the_job_with_its_name_and_saves_nothing(env):
    from webui.ui.runner import finished_message

    before = snapshot(env)
    job_id, error = ui_submit(env, "txt2img", {**UI_VALUES, "sampler_name": "Euler z", "save_images": True})
    assert error == ""
    job = env.services.generation.get(job_id)
    assert job.wait(60) and job.state == "failed"
    assert finished_message(job).startswith("**Sampling method:**") and "Euler a" in job.error
    after = snapshot(env)
    assert (after["files"], after["model"]) == (before["files"], before["model"])


def test_ui_png_info_and_model_bar_answer_bad_input_in_words(env, tmp_path):
    from webui.ui.model_bar import load_checkpoint
    from webui.ui.png_info_tab import read_parameters

    not_image = tmp_path / "evil.png"
    not_image.write_bytes(b"<script>alert(1)</script>")
    text, rows, message = read_parameters(not_image)
    assert (text, rows) == ("", []) and message.startswith("Cannot read this file")
    text, rows, message = read_parameters(tmp_path / "missing.png")
    assert (text, rows) == ("", []) and message.startswith("Cannot read this file")
    before = snapshot(env)
    lines = list(load_checkpoint(env.services.backend, "../../etc/passwd", timeout=60))
    assert lines[-1].startswith("**Could not load ../../etc/passwd:**")
    assert snapshot(env)["model"] == before["model"]
    record_figures("bad_requests", inputs=3)


def test_ui_extension_and_vae_actions_answer_unknown_names_in_words(env):
    from webui.ui.extensions_tab import install_requirements, set_enabled
    from webui.ui.model_bar import set_vae

    host = env.services.extensions
    before = [(ext.name, ext.status) for ext in host.extensions()]
    for name in ("../../etc", "nope", "samplers"):  # "samplers" is a built-in: it cannot be switched off
        assert set_enabled(env.services.backend, name, False).startswith("**"), name
        assert install_requirements(env.services.backend, name).startswith("**"), name
    assert set_enabled(env.services.backend, "", True) == "Pick an extension first."
    assert [(ext.name, ext.status) for ext in host.extensions()] == before
    lines = list(set_vae(env.services.backend, "../../etc/passwd", timeout=60))
    assert lines[-1].startswith("**Could not use the VAE ../../etc/passwd:**")
    record_figures("bad_requests", inputs=8)
