"""The app answers before torch and diffusers are imported: the start-up path leaves them to a warm-up thread.

``build_services`` and ``build_server`` import neither; the device (which needs torch) is chosen by
``services.warm_up``, which ``serve`` starts after the first answer. No timing here: the figures are
``scripts/bench_startup.py``'s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import headers as H
from tests.app_services import tmp_services
from webui.deferred import Deferred
from webui.first_answer import FirstAnswer
from webui.models.deferred_device import DeferredDevice
from webui.models.devices import DeviceChoice
from webui.ui import settings_apply

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")

# Builds the whole app over a folder with a checkpoint (device and precision "auto": choosing them needs
# torch), serves it, asks for the page and the API's lists, runs the page's load events (but the one that
# waits for the device), and prints which heavy modules had been imported by then.
ANSWER_WITHOUT_TORCH = """
import json, sys
from pathlib import Path
import httpx
from tests.api_server import serve_api
from tests.app_services import tmp_services
from webui.app import build_page, build_server

services = tmp_services(Path(sys.argv[1]), device="auto", precision="auto", channels_last="auto")
answers = {}
with serve_api(services, build_server(services)) as base:
    for path in ("/", "/sdapi/v1/sd-models", "/sdapi/v1/options", "/sdapi/v1/samplers", "/sdapi/v1/progress"):
        response = httpx.get(base + path, timeout=60)
        answers[path] = [response.status_code, "<html" in response.text.lower()]
page = build_page(services)
loads = 0
for fn in page.fns.values():
    outputs = [getattr(o, "elem_id", None) for o in fn.outputs]
    if fn.fn is not None and any(t[1] == "load" for t in fn.targets) and "settings_device" not in outputs:
        fn.fn(*[c.value for c in fn.inputs])
        loads += 1
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print(json.dumps({"answers": answers, "loads": loads, "heavy": heavy, "ready": services.device.ready()}))
"""


def test_the_page_and_the_api_answer_before_torch_and_diffusers_are_imported(tmp_path):
    H.write_safetensors(tmp_path / "models" / "Stable-diffusion" / "a.safetensors", H.SD15)
    out = subprocess.run(
        [sys.executable, "-c", ANSWER_WITHOUT_TORCH, str(tmp_path), ",".join(HEAVY)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["answers"]["/"] == [200, True]
    assert all(status == 200 for status, _ in result["answers"].values()), result["answers"]
    assert result["loads"] >= 2  # the model bar's sync and the Settings tab's refresh ran
    assert result["heavy"] == [], f"imported before the warm-up: {result['heavy']}"
    assert result["ready"] is False  # nothing asked for the device


def _blocked_device(choice: DeviceChoice) -> tuple[DeferredDevice, threading.Event]:
    release = threading.Event()

    def choose() -> DeviceChoice:
        release.wait(60)
        return choice

    return DeferredDevice(Deferred(choose, name="test-device")), release


def test_the_settings_page_says_the_device_is_being_chosen_then_what_it_is(tmp_path):
    services = tmp_services(tmp_path)
    services.device, release = _blocked_device(DeviceChoice("cpu", "fp32", "--precision fp32"))
    assert services.backend.device_description(wait=False) is None
    assert settings_apply.device_summary(services.backend, wait=False) == settings_apply.DEVICE_PENDING
    release.set()
    assert "cpu: fp32 (VAE fp32) - --precision fp32" in settings_apply.device_summary(services.backend)
    assert "cpu: fp32" in settings_apply.device_summary(services.backend, wait=False)


def test_a_deferred_device_reads_as_the_choice_once_made():
    device, release = _blocked_device(DeviceChoice("cpu", "bf16", "test", "fp32"))
    assert not device.ready() and "not chosen" in repr(device)
    release.set()
    assert (device.device, device.precision, device.vae_precision_for(None)) == ("cpu", "bf16", "fp32")
    assert device.ready() and device.resolved() == DeviceChoice("cpu", "bf16", "test", "fp32")
    with pytest.raises(AttributeError):
        device.no_such_field


def test_deferred_work_runs_once_on_its_thread_and_raises_in_the_caller():
    calls: list[str] = []
    deferred = Deferred(lambda: calls.append(threading.current_thread().name) or len(calls), name="w")
    assert calls == [] and not deferred.ready()  # nothing runs until asked
    deferred.start()
    deferred.start()
    assert deferred.get() == 1 and deferred.get() == 1 and calls == ["w"]
    assert deferred.ready() and deferred.error() is None
    failing = Deferred(lambda: 1 / 0, name="f")
    with pytest.raises(ZeroDivisionError):
        failing.get()
    assert isinstance(failing.error(), ZeroDivisionError)


def _run(coro) -> None:
    """``asyncio.run`` on a thread of its own: an earlier test (Playwright's sync API) may leave an event loop
    running on the main thread, where ``asyncio.run`` refuses to start."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=target)
    worker.start()
    worker.join(60)
    if errors:
        raise errors[0]


def test_first_answer_calls_once_after_the_first_complete_response():
    calls: list[str] = []
    sent: list[str] = []
    mid_response: list[list[str]] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        mid_response.append(list(calls))
        await send({"type": "http.response.body", "body": b"b"})

    async def send(message):
        sent.append(message["type"])

    async def receive():
        return {"type": "http.request"}

    wrapped = FirstAnswer(app, lambda: calls.append("warm-up"))
    _run(wrapped({"type": "lifespan"}, receive, send))  # not an answer
    assert calls == []
    _run(wrapped({"type": "http"}, receive, send))
    _run(wrapped({"type": "http"}, receive, send))
    assert mid_response[0] == []  # not before the first response is complete
    assert calls == ["warm-up"] and sent.count("http.response.body") == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_device_that_is_not_there_stops_the_app_with_its_message(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [
        sys.executable, "-m", "webui.app", "--skip-install", "--port", str(_free_port()), "--device", "cuda",
        "--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "out"),
        "--config-file", str(tmp_path / "config.json"), "--extensions-dir", str(tmp_path / "ext"),
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WEBUI_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: --device cuda was asked for but torch sees no CUDA GPU" in out.stderr
