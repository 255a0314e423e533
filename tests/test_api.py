"""The /sdapi/v1 API through a real HTTP client against a real uvicorn server.

The server runs the real router over the real composed services (catalog of demo models, model
manager, sampler table), with the generation engine replaced by a fast fake runner that makes
flat PIL images, reports steps and honours interrupt/skip. ``serve_api(services)`` is reusable:
the end-to-end tests with the real engine can start the same server over their own services.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.headers import KOHYA_LORA, SD15, VAE, write_safetensors
from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import BatchSkipped, GenerationService, JobInterrupted, JobResult

A1111_INFO_KEYS = {
    "prompt",
    "all_prompts",
    "negative_prompt",
    "all_negative_prompts",
    "seed",
    "all_seeds",
    "subseed",
    "all_subseeds",
    "subseed_strength",
    "width",
    "height",
    "sampler_name",
    "cfg_scale",
    "steps",
    "batch_size",
    "sd_model_name",
    "sd_model_hash",
    "denoising_strength",
    "infotexts",
    "job_timestamp",
    "clip_skip",
    "index_of_first_image",
    "version",
}


# --- fake engine ---------------------------------------------------------------------------------------


class FakeRunner:
    """Shaped like Engine.run: n_iter batches of steps, previews, partial results, skip and interrupt.

    The prompt steers it: "slow" sleeps 50 ms a step, "explode" fails, "oom" runs out of memory,
    "badfield" raises a RequestError for cfg_scale.
    """

    def __init__(self) -> None:
        self.seen: list[GenerationRequest] = []
        self.job_ids: list[str] = []

    def __call__(self, req: GenerationRequest, ctx: Any) -> JobResult:
        self.seen.append(req)
        self.job_ids.append(ctx.job_id)
        failures = {
            "explode": RuntimeError("the fake pipeline exploded"),
            "oom": RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "badfield": RequestError("cfg_scale", "the fake engine refuses this CFG"),
        }
        for word, exc in failures.items():
            if word in req.prompt:
                raise exc
        steps = req.steps or 3
        ctx.plan(steps * req.n_iter, req.total_images)
        result = JobResult(info={"sampler_name": "Fake sampler", "steps": steps})
        try:
            for it in range(req.n_iter):
                try:
                    self._batch(req, ctx, steps, it)
                except BatchSkipped:
                    result.skipped_batches += 1
                    continue
                self._collect(req, steps, it, result)
                ctx.image_done(req.batch_size)
                ctx.partial(result)
        except JobInterrupted:
            result.interrupted = True
        return result

    @staticmethod
    def _batch(req: GenerationRequest, ctx: Any, steps: int, it: int) -> None:
        ctx.begin_pass(steps, f"batch {it + 1}")
        for step in range(1, steps + 1):
            time.sleep(0.05 if "slow" in req.prompt else 0.0)
            ctx.on_step(step, latents=step, preview=lambda s: Image.new("RGB", (8, 8), (s * 20 % 256, 0, 0)))

    @staticmethod
    def _collect(req: GenerationRequest, steps: int, it: int, result: JobResult) -> None:
        size = req.init_image.size if req.init_image is not None else (req.width or 64, req.height or 64)
        for b in range(req.batch_size):
            seed = (req.seed if req.seed >= 0 else 1000) + it * req.batch_size + b
            result.images.append(Image.new("RGB", size, (seed % 256, 0, 0)))
            result.infotexts.append(f"{req.prompt}\nSteps: {steps}, Sampler: Fake, Seed: {seed}, Size: 64x64")
            result.seeds.append(seed)
            result.subseeds.append(seed)


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def api_env(tmp_path_factory):
    """(services, fake runner, base URL, client) over demo models + a LoRA and a VAE; one per session."""
    from webui.models.demo import write_demo_models

    root = tmp_path_factory.mktemp("api")
    models = root / "models"
    write_demo_models(models, ("sd15", "sdxl"))
    write_safetensors(models / "Lora" / "tiny-lora.safetensors", KOHYA_LORA)
    write_safetensors(models / "VAE" / "tiny-vae.safetensors", VAE)
    services = tmp_services(root)
    runner = FakeRunner()
    services.generation = GenerationService(runner, preview_every=1)
    services.generation.start()
    with serve_api(services) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield SimpleNamespace(services=services, runner=runner, url=url, client=client, models=models)
    services.generation.stop()


@pytest.fixture
def client(api_env) -> httpx.Client:
    return api_env.client


def b64png(image: Image.Image, infotext: str | None = None) -> str:
    buf = io.BytesIO()
    info = None
    if infotext is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext)
        info.add_text("Software", "some other app")
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def progress_when(client: httpx.Client, condition: Callable[[dict], bool], query: str = "") -> dict:
    def check():
        body = client.get(f"/sdapi/v1/progress{query}").json()
        return body if condition(body) else None

    return wait_until(check)


# --- txt2img / img2img ---------------------------------------------------------------------------


def test_txt2img_returns_a1111_shaped_answer(client):
    body = {"prompt": "a cat", "batch_size": 2, "n_iter": 2, "steps": 3, "width": 64, "height": 64, "seed": 5}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert A1111_INFO_KEYS <= set(info)
    assert info["all_seeds"] == [5, 6, 7, 8] and info["sampler_name"] == "Fake sampler"
    assert len(data["images"]) == 4
    for encoded, text in zip(data["images"], info["infotexts"]):
        png = decode_png(encoded)
        assert png.format == "PNG" and png.size == (64, 64) and png.info["parameters"] == text
    assert data["parameters"]["prompt"] == "a cat" and data["parameters"]["batch_size"] == 2


def test_txt2img_maps_a1111_api_defaults(client, api_env):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "defaults", "sampler_index": "Euler a"})
    assert r.status_code == 200, r.text
    seen = api_env.runner.seen[-1]
    assert seen.save_images is False and seen.sampler_name == "Euler a" and seen.task == "txt2img"


def test_send_images_false_returns_no_images(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "send_images": False})
    assert r.status_code == 200 and r.json()["images"] == []


def test_unsupported_fields_are_accepted_and_reported(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "restore_faces": True, "alwayson_scripts": {}})
    assert r.status_code == 200
    warnings = json.loads(r.json()["info"])["warnings"]
    assert any("restore_faces" in w for w in warnings)


def test_an_always_on_script_no_extension_runs_is_refused_as_a1111_does(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert r.status_code == 422, r.text
    assert "always on script adetailer not found" in r.json()["detail"]


def test_img2img_with_data_url_init_image(client, api_env):
    init = "data:image/png;base64," + b64png(Image.new("RGB", (64, 48), "green"))
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [init], "denoising_strength": 0.4})
    assert r.status_code == 200, r.text
    seen = api_env.runner.seen[-1]
    assert seen.task == "img2img" and seen.init_image.size == (64, 48) and seen.denoising_strength == 0.4
    assert decode_png(r.json()["images"][0]).size == (64, 48)
    assert "init_images" not in r.json()["parameters"]


def test_img2img_with_mask_inpaints(client, api_env):
    body = {
        "prompt": "x",
        "init_images": [b64png(Image.new("RGB", (64, 64), "green"))],
        "mask": b64png(Image.new("L", (64, 64), 255)),
        "inpainting_fill": 1,
    }
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    seen = api_env.runner.seen[-1]
    assert seen.task == "inpaint" and seen.mask.mode == "L" and seen.inpainting_fill == 1
    assert "mask" not in r.json()["parameters"]


def test_lora_tag_of_an_installed_lora_is_accepted(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:tiny-lora:0.5>"})
    assert r.status_code == 200, r.text


def test_infotext_model_that_is_not_installed_is_ignored_with_a_warning(client, api_env):
    infotext = "a dog\nSteps: 2, Sampler: Euler, Seed: 3, Size: 64x64, Model: not-installed"
    r = client.post("/sdapi/v1/txt2img", json={"infotext": infotext})
    assert r.status_code == 200, r.text
    seen = api_env.runner.seen[-1]
    assert (seen.prompt, seen.steps, seen.seed, seen.sd_model_checkpoint) == ("a dog", 2, 3, "")
    assert any("not-installed" in w for w in json.loads(r.json()["info"])["warnings"])


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, field, words",
    [
        ("txt2img", {"steps": "many"}, "steps", "integer"),
        ("txt2img", {"width": 100}, "width", "multiple of 8"),
        ("txt2img", {"script_name": "prompt matrix"}, "script_name", "not supported"),
        ("txt2img", {"script_name": "x/y/z plot", "script_args": [4, "1, x", []]}, "script_args", "'x'"),
        ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": "two"}}, "override_settings.", "wrong type"),
        ("txt2img", {"prompt": "<lora::1>"}, "prompt", "no LoRA name"),
        ("img2img", {"prompt": "x"}, "init_images", "at least one"),
        ("img2img", {"init_images": ["%%%"]}, "init_images[0]", "not valid base64"),
        ("img2img", {"init_images": [base64.b64encode(b"text").decode()]}, "init_images[0]", "not an image"),
        ("txt2img", {"prompt": "badfield"}, "cfg_scale", "refuses"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client, path, body, field, words):
    r = client.post(f"/sdapi/v1/{path}", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["error"] == "RequestError" and data["field"].startswith(field) and words in data["detail"]


def test_body_that_is_not_json_is_422(client):
    r = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


@pytest.mark.parametrize(
    "body, field, valid",
    [
        ({"override_settings": {"sd_model_checkpoint": "nope.safetensors"}}, "sd_model_checkpoint", "demo-sd15"),
        ({"override_settings": {"sd_vae": "nope.safetensors"}}, "sd_vae", "tiny-vae"),
        ({"refiner_checkpoint": "nope"}, "refiner_checkpoint", "demo-sdxl"),
        ({"prompt": "a <lora:missing:1>"}, "prompt", "tiny-lora"),
    ],
)
def test_unknown_names_are_404_with_the_valid_ones(client, body, field, valid):
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 404, r.text
    data = r.json()
    assert data["error"] == "NotFound" and data["field"] == field
    assert any(valid in name for name in data["valid"])
    assert "nope" in data["detail"] or "missing" in data["detail"]


@pytest.mark.parametrize("prompt, words", [("explode", "the fake pipeline exploded"), ("oom", "Out of memory")])
def test_failed_job_is_500_with_its_message(client, prompt, words):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": prompt})
    assert r.status_code == 500
    data = r.json()
    assert data["error"] == "GenerationFailed" and words in data["detail"] and "Traceback" not in r.text


def test_full_queue_is_503(api_env):
    from webui.backend.local import LocalBackend

    services = dataclasses.replace(api_env.services, generation=GenerationService(api_env.runner, max_queue=0))
    services.backend = LocalBackend(services)  # the copy's own backend, over its own queue
    with serve_api(services) as url:
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "QueueFull" and "try again" in r.json()["detail"]


# --- progress, interrupt, skip ------------------------------------------------------------------------


def test_progress_when_idle(client):
    data = client.get("/sdapi/v1/progress").json()
    assert data["progress"] == 0 and data["current_image"] is None and data["state"]["job"] == ""


def test_progress_while_a_slow_job_runs_then_interrupt_keeps_finished_images(client):
    body = {"prompt": "slow", "steps": 8, "n_iter": 3}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/sdapi/v1/txt2img", json=body)
        running = progress_when(client, lambda p: p["state"]["sampling_step"] >= 2)
        assert 0 < running["progress"] < 1 and running["state"]["sampling_steps"] == 8
        assert running["state"]["job_count"] == 3 and running["state"]["job"] and running["eta_relative"] > 0
        assert decode_png(running["current_image"]).size == (8, 8) and running["textinfo"].startswith("batch")
        no_image = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
        assert no_image["current_image"] is None
        progress_when(client, lambda p: p["state"]["job_no"] >= 1)  # the first batch is done
        assert client.post("/sdapi/v1/interrupt").json()["done"] is True
        r = pending.result(timeout=30)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["interrupted"] is True and 1 <= len(r.json()["images"]) < 3


def test_skip_drops_the_current_batch(client):
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/sdapi/v1/txt2img", json={"prompt": "slow", "steps": 10, "n_iter": 2})
        progress_when(client, lambda p: p["state"]["sampling_step"] >= 1)
        assert client.post("/sdapi/v1/skip").json()["done"] is True
        r = pending.result(timeout=30)
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_interrupt_when_idle_does_nothing(client):
    assert client.post("/sdapi/v1/interrupt").json() == {"done": False, "job": ""}


@pytest.mark.parametrize("save_images, final_state", [(False, "interrupted"), (True, "done")])
def test_client_that_disconnects(api_env, save_images, final_state):
    body = {"prompt": "slow", "steps": 40, "save_images": save_images}
    before = len(api_env.runner.job_ids)
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=api_env.url, timeout=0.4) as impatient:
        impatient.post("/sdapi/v1/txt2img", json=body)
    job_id = wait_until(lambda: api_env.runner.job_ids[before:] and api_env.runner.job_ids[before])
    job = api_env.services.generation.get(job_id)
    assert job.wait(10) and job.state == final_state


# --- options and model switching ------------------------------------------------------------------


def test_get_options_has_the_documented_keys(client):
    data = client.get("/sdapi/v1/options").json()
    keys = {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_save", "outdir_samples"}
    assert keys <= set(data) and data["sd_vae"] == "Automatic"


def test_options_switch_the_model(client, api_env):
    manager = api_env.services.manager
    titles = {m["model_name"]: m["title"] for m in client.get("/sdapi/v1/sd-models").json()}
    for name in (titles["demo-sd15-noise"], "demo-sdxl-noise"):  # A1111 title, then a bare stem
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert r.status_code == 200, r.text
        assert r.json()["applied"] == ["sd_model_checkpoint"]
        assert name.startswith(manager.current_entry.stem)
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(manager.current_entry.name)
    assert manager.family.id == "sdxl"


def test_options_unknown_model_is_404(client):
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert r.status_code == 404 and "demo-sd15-noise.safetensors" in r.json()["valid"]


def test_options_clip_skip_is_the_default_of_later_jobs(client, api_env):
    try:
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        client.post("/sdapi/v1/txt2img", json={"prompt": "x"})
        assert api_env.runner.seen[-1].clip_skip == 2
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"CLIP_stop_at_last_layers": 99}, 422, "CLIP_stop_at_last_layers"),
        ({"samples_format": "bmp"}, 422, "samples_format"),
        ({"sd_vae": "nope.safetensors"}, 404, "sd_vae"),
    ],
)
def test_options_bad_values(client, body, status, field):
    r = client.post("/sdapi/v1/options", json=body)
    assert r.status_code == status and r.json()["field"] == field


def test_options_unknown_keys_are_ignored_and_listed(client):
    r = client.post("/sdapi/v1/options", json={"samples_save": False, "some_extension_option": 3})
    assert r.status_code == 200 and r.json() == {"applied": [], "ignored": ["samples_save", "some_extension_option"]}


# --- lists ------------------------------------------------------------------------------------------


def test_sd_models(client):
    models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert set(models) >= {"demo-sd15-noise", "demo-sdxl-noise"}
    sd15 = models["demo-sd15-noise"]
    assert sd15["title"].startswith("demo-sd15-noise.safetensors") and sd15["filename"].endswith(".safetensors")
    assert sd15["family"] == "sd15" and sd15["config"] is None


def test_sd_vae_and_loras(client):
    assert [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").json()] == ["tiny-vae.safetensors"]
    loras = client.get("/sdapi/v1/loras").json()
    assert [(x["name"], x["alias"], x["metadata"]) for x in loras] == [("tiny-lora", "tiny-lora", {})]


def test_refresh_checkpoints_finds_new_files(client, api_env):
    path = api_env.models / "Stable-diffusion" / "added-later.safetensors"
    before = client.post("/sdapi/v1/refresh-checkpoints").json()["count"]
    write_safetensors(path, SD15)
    try:
        assert client.post("/sdapi/v1/refresh-checkpoints").json()["count"] == before + 1
        assert "added-later" in [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-checkpoints")


def test_refresh_loras_finds_new_files(client, api_env):
    path = api_env.models / "Lora" / "second.safetensors"
    write_safetensors(path, KOHYA_LORA)
    try:
        assert client.post("/sdapi/v1/refresh-loras").json()["count"] == 2
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-loras")


def test_samplers_and_schedulers(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert "Euler a" in [s["name"] for s in samplers] and all({"aliases", "options"} <= set(s) for s in samplers)
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert {"automatic", "karras"} <= {s["name"] for s in schedulers}


def test_upscalers(client):
    assert "Lanczos" in [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert "Latent" in [u["name"] for u in client.get("/sdapi/v1/latent-upscale-modes").json()]


# --- png-info and docs ----------------------------------------------------------------------------


def test_png_info_reads_and_parses_the_infotext(client):
    text = "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    r = client.post("/sdapi/v1/png-info", json={"image": b64png(Image.new("RGB", (8, 8)), text)})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["info"] == text and data["items"]["Software"] == "some other app"
    params = data["parameters"]
    assert (params["Prompt"], params["Negative prompt"], str(params["Steps"]), params["Size-2"]) == (
        "a cat",
        "ugly",
        "20",
        "768",
    )


def test_png_info_without_infotext(client):
    r = client.post("/sdapi/v1/png-info", json={"image": b64png(Image.new("RGB", (8, 8)))})
    assert r.status_code == 200 and r.json() == {"info": "", "items": {}, "parameters": {}}


def test_png_info_of_garbage_is_422(client):
    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"nope").decode()})
    assert r.status_code == 422 and r.json()["field"] == "image"


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("txt2img", "img2img", "progress", "interrupt", "skip", "options", "sd-models", "png-info"):
        assert f"/sdapi/v1/{route}" in paths
    assert "422" in paths["/sdapi/v1/txt2img"]["post"]["responses"]


def test_force_task_id_names_the_job_and_a_bad_or_reused_one_is_422(client, api_env):
    body = {"prompt": "named", "steps": 3, "width": 64, "height": 64, "force_task_id": "task(abc123)"}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert api_env.services.backend.job("task(abc123)").state == "done"  # the job has the client's id
    again = client.post("/sdapi/v1/txt2img", json=body)
    assert again.status_code == 422 and again.json()["field"] == "force_task_id"
    bad = client.post("/sdapi/v1/txt2img", json={**body, "force_task_id": "x\u0000y"})
    assert bad.status_code == 422 and bad.json()["field"] == "force_task_id"
