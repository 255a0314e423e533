"""Fuzz every /sdapi/v1 route from its OpenAPI schema (schemathesis), plus images and prompts (hypothesis).

The server is the real router over the real services and engine on the tiny SD 1.5 demo model.
Limits are tight (128 px, 3 steps, 2x2 images) and a request that leaves size or steps to the
model gets 64x64 and 2 steps, so a valid fuzzed job takes a fraction of a second. Every answer
must be below 500, in the API's JSON error shape when it is a 4xx, and a 2xx must match the
documented response schema. Failures are collected (not shrunk) and listed with their bodies.

Scale: ``WEBUI_FUZZ_EXAMPLES`` examples per route and mode (default 20, a bit over 600 requests
in about a minute of CI); ``scripts/security_report.py --fuzz-examples N`` runs more. Set
``WEBUI_FUZZ_SEED`` to replay a run.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extra)")
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image

from tests.app_services import tmp_services
from tests.security_figures import record as record_figures
from webui.generation.requests import Limits
from webui.models.demo import write_demo_models

EXAMPLES = int(os.environ.get("WEBUI_FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("WEBUI_FUZZ_SEED")
LIMITS = Limits(max_side=128, max_hires_side=256, max_steps=3, max_batch_size=2, max_n_iter=2)
TIMEOUT = 120.0  # seconds one fuzzed request may take before it counts as a hang
# Every route of the router; test_every_route_is_fuzzed fails when one is added and not listed here.
OPERATIONS = (
    ("POST", "/sdapi/v1/txt2img"),
    ("POST", "/sdapi/v1/img2img"),
    ("GET", "/sdapi/v1/progress"),
    ("POST", "/sdapi/v1/interrupt"),
    ("POST", "/sdapi/v1/skip"),
    ("GET", "/sdapi/v1/options"),
    ("POST", "/sdapi/v1/options"),
    ("GET", "/sdapi/v1/sd-models"),
    ("GET", "/sdapi/v1/sd-vae"),
    ("GET", "/sdapi/v1/loras"),
    ("GET", "/sdapi/v1/samplers"),
    ("GET", "/sdapi/v1/schedulers"),
    ("GET", "/sdapi/v1/upscalers"),
    ("GET", "/sdapi/v1/latent-upscale-modes"),
    ("GET", "/sdapi/v1/prompt-styles"),
    ("POST", "/sdapi/v1/refresh-checkpoints"),
    ("POST", "/sdapi/v1/refresh-loras"),
    ("POST", "/sdapi/v1/refresh-vae"),
    ("POST", "/sdapi/v1/unload-checkpoint"),
    ("POST", "/sdapi/v1/png-info"),
    ("POST", "/sdapi/v1/extra-single-image"),
    ("POST", "/sdapi/v1/extra-batch-images"),
    ("GET", "/sdapi/v1/embeddings"),
    ("POST", "/sdapi/v1/refresh-embeddings"),
    ("GET", "/sdapi/v1/scripts"),
    ("GET", "/sdapi/v1/script-info"),
)


def tiny_jobs(run: Any) -> Any:
    """The engine's runner with the model's default size and steps replaced by 64x64 and 2 steps."""

    def runner(request: Any, ctx: Any) -> Any:
        return run(
            request.replace(width=request.width or 64, height=request.height or 64, steps=request.steps or 2), ctx
        )

    return runner


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tests.api_server import build_api_app
    from webui.generation.service import GenerationService

    root = tmp_path_factory.mktemp("fuzz")
    write_demo_models(root / "models", ("sd15",))
    services = tmp_services(root, preview_every=0)
    services.engine.limits = LIMITS
    services.generation = GenerationService(tiny_jobs(services.engine.run), preview_every=0)
    services.generation.start()
    app = build_api_app(services)
    try:
        yield SimpleNamespace(services=services, app=app, schema=schemathesis.openapi.from_asgi("/openapi.json", app))
    finally:
        services.generation.stop()


class Tally:
    """Requests sent, answers by class, and the failures with what was sent."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def check(self, label: str, sent: Any, status: int | None, text: str, problem: str = "") -> None:
        self.counts["requests"] += 1
        if status is None or status >= 500:
            self.counts["server_errors"] += 1
            problem = problem or f"answered {status}"
        elif status >= 400:
            self.counts["client_errors"] += 1
            problem = problem or _error_shape_problem(text)
        else:
            self.counts["answered_ok"] += 1
        if problem:
            self.failures.append(f"{label}: {problem}\n  sent: {str(sent)[:500]}\n  got: {text[:500]}")

    def finish(self, what: str) -> None:
        keys = ("requests", "answered_ok", "client_errors", "server_errors")
        record_figures("fuzz_api", **{key: self.counts[key] for key in keys})
        shown = "\n".join(self.failures[:10])
        assert not self.failures, f"{len(self.failures)} of {self.counts['requests']} {what} failed:\n{shown}"


def _error_shape_problem(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return "a 4xx answer that is not JSON"
    if not isinstance(body, dict) or not {"error", "detail", "field", "valid"} <= set(body) or not body["detail"]:
        return "a 4xx answer not in the API's error shape"
    return ""


def _fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # failures are collected and listed, not shrunk
    )


def _seeded(test: Any) -> Any:
    return seed(int(SEED))(test) if SEED else test


# --- schemathesis: every route, valid and invalid data -------------------------------------------------------


def test_every_route_is_fuzzed(env):
    routes = {(method.upper(), path) for path, methods in env.schema.raw_schema["paths"].items() for method in methods}
    assert routes == set(OPERATIONS)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p.rsplit('/', 1)[-1]}" for m, p in OPERATIONS])
def test_route_answers_fuzzed_requests_without_server_errors(env, method, path, mode):
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance

    operation = env.schema[path][method]
    tally = Tally()

    @_seeded
    @_fuzz_settings(EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def fuzz(case: Any) -> None:
        try:
            response = case.call(timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a transport error (hang, dropped connection) is a finding
            tally.check(f"{method} {path}", case.body, None, "", f"{type(exc).__name__}: {exc}")
            return
        problem = ""
        if response.status_code < 300:
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except Exception as exc:  # noqa: BLE001 - schemathesis raises a group of check failures
                problem = f"2xx answer does not match its schema: {exc}"
        tally.check(f"{method} {path}", case.body, response.status_code, response.text, problem)

    try:
        fuzz()
    except Unsatisfiable:  # a route without parameters has no invalid form
        assert mode == "negative", "no valid request could be generated"
    tally.finish(f"fuzzed {method} {path} ({mode}) requests")


# --- hypothesis: real images of every shape and format, broken ones, masks ----------------------------------

IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK", "I", "F")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


@st.composite
def encoded_images(draw: Any) -> str:
    size = (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    mode = draw(st.sampled_from(IMAGE_MODES))
    fmt = draw(st.sampled_from(IMAGE_FORMATS))
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (size[1], size[0], 3), np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode) if mode not in ("I;16", "I", "F") else image.convert("L").convert(mode)
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):  # that mode has no encoder in that format
        image.convert("RGB").save(buf, format=fmt)
    raw = buf.getvalue()
    damage = draw(st.sampled_from(("none", "none", "truncate", "flip", "prefix")))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == "prefix":
        return "data:image/png;base64," + base64.b64encode(raw).decode()
    return base64.b64encode(raw).decode()


img2img_bodies = st.fixed_dictionaries(
    {"init_images": st.lists(encoded_images(), min_size=1, max_size=2)},
    optional={
        "mask": encoded_images(),
        "width": st.sampled_from([0, 8, 64, 72, 128, 136, -64]),
        "height": st.sampled_from([0, 64, 96, 128, 130]),
        "denoising_strength": st.floats(-0.5, 1.5),
        "resize_mode": st.integers(-1, 4),
        "inpainting_fill": st.integers(-1, 4),
        "inpaint_full_res": st.booleans(),
        "inpaint_full_res_padding": st.integers(-8, 300),
        "inpainting_mask_invert": st.integers(-1, 2),
        "mask_blur": st.integers(-2, 70),
        "steps": st.integers(0, 4),
        "batch_size": st.integers(0, 3),
        "sampler_name": st.sampled_from(["Euler", "Euler a", "DDIM", "UniPC", "DPM++ 2M SDE", "LCM", "nope"]),
        "include_init_images": st.booleans(),
    },
)


def test_img2img_survives_any_image(env):
    from starlette.testclient import TestClient

    tally = Tally()
    with TestClient(env.app) as client:

        @_seeded
        @_fuzz_settings(max(10, EXAMPLES * 3))
        @given(body=img2img_bodies)
        def fuzz(body: dict[str, Any]) -> None:
            response = client.post("/sdapi/v1/img2img", json={"prompt": "fuzz", **body})
            problem = ""
            if response.status_code == 200:
                for encoded in response.json()["images"]:
                    Image.open(io.BytesIO(base64.b64decode(encoded))).verify()
            tally.check(
                "POST img2img",
                {k: (v if k not in ("init_images", "mask") else "...") for k, v in body.items()},
                response.status_code,
                response.text,
                problem,
            )

        fuzz()
    tally.finish("img2img requests with fuzzed images")


# --- hypothesis: prompt syntax, hires fix and the other numbers at their edges -------------------------------

PROMPT_PIECES = st.sampled_from(
    [
        "cat",
        "(",
        ")",
        "[",
        "]",
        ":",
        "1.5",
        ":-1e309",
        "\\(",
        "<lora:",
        "<lora:x:1>",
        ">",
        "|",
        "BREAK",
        "AND",
        "{a|b}",
        "\n",
        " ",
        "\u202e",
        "\U0001f600",
        "\x00",
        "%s",
        "{0}",
        "..",
        "/",
        "nan",
        "inf",
        "<",
        "embedding:",
    ]
)
prompts = st.lists(PROMPT_PIECES, max_size=30).map("".join)
# Clip skip stops at 3: the demo models' text encoders have 2 layers, and a deeper skip is a known
# 500 until conditioning raises RequestError (test_bad_requests.test_clip_skip_deeper_than_the_text_encoder).
txt2img_bodies = st.fixed_dictionaries(
    {"prompt": prompts},
    optional={
        "negative_prompt": prompts,
        "width": st.sampled_from([0, 64, 72, 128, 136]),
        "height": st.sampled_from([0, 64, 128]),
        "steps": st.integers(0, 4),
        "cfg_scale": st.floats(-1, 31),
        "seed": st.integers(-2, 2**32),
        "subseed": st.integers(-2, 2**32),
        "subseed_strength": st.floats(-0.1, 1.1),
        "batch_size": st.integers(0, 3),
        "n_iter": st.integers(0, 3),
        "enable_hr": st.booleans(),
        "hr_scale": st.floats(0.5, 5),
        "hr_resize_x": st.sampled_from([0, -64, 8, 64, 128, 256, 264]),
        "hr_resize_y": st.sampled_from([0, 64, 200]),
        "hr_upscaler": st.sampled_from(["Latent", "Lanczos", "Latent (nearest-exact)", "None", "nope"]),
        "hr_second_pass_steps": st.integers(-1, 4),
        "hr_prompt": prompts,
        "denoising_strength": st.floats(-0.1, 1.1),
        "sampler_name": st.sampled_from(["Euler", "Euler a", "DPM++ 2M", "DPM++ 3M SDE", "Heun", "LCM", "nope", ""]),
        "scheduler": st.sampled_from(["Automatic", "Karras", "Exponential", "Beta", "Align Your Steps", "nope"]),
        "override_settings": st.fixed_dictionaries(
            {},
            optional={
                "CLIP_stop_at_last_layers": st.integers(0, 3),
                "samples_format": st.sampled_from(["png", "jpg", "webp", "gif"]),
                "randn_source": st.sampled_from(["GPU", "CPU", "NV"]),
            },
        ),
        "save_images": st.booleans(),
        "infotext": prompts.map(lambda p: f"{p}\nSteps: 2, Sampler: Euler, Size: 64x64, Hires upscale: 1.5"),
    },
)


def test_txt2img_survives_prompt_syntax_and_edge_values(env):
    from starlette.testclient import TestClient

    tally = Tally()
    with TestClient(env.app) as client:

        @_seeded
        @_fuzz_settings(max(10, EXAMPLES * 3))
        @given(body=txt2img_bodies)
        def fuzz(body: dict[str, Any]) -> None:
            response = client.post("/sdapi/v1/txt2img", json=body)
            tally.check("POST txt2img", body, response.status_code, response.text)

        fuzz()
    tally.finish("txt2img requests with fuzzed prompts and values")
