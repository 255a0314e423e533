"""The app starts, serves the page, lists the models it found, and loads none of them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import headers as H

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def running_app(tmp_path):
    models = tmp_path / "models"
    H.write_safetensors(models / "Stable-diffusion" / "a.safetensors", H.SD15)
    (models / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\0" * 3)
    port = _free_port()
    cmd = [
        sys.executable, "-m", "webui.app", "--skip-install", "--port", str(port),
        "--models-dir", str(models), "--outputs-dir", str(tmp_path / "out"),
        "--config-file", str(tmp_path / "config.json"), "--extensions-dir", str(tmp_path / "ext"),
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WEBUI_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Running on http://" in line:
            break
    try:
        yield port, lines, proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_serves_page_and_reports_startup(running_app):
    port, lines, proc = running_app
    text = "".join(lines)
    assert proc.poll() is None, text
    assert f"Running on http://127.0.0.1:{port}" in text and "started in" in text
    assert "none is loaded until needed" in text
    assert "broken.safetensors" in text  # the bad file is reported, startup goes on
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_bad_setting_exits_with_message(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "webui.app", "--skip-install", "--config-file", str(tmp_path / "c.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "WEBUI_PORT": "x"},
    )
    assert out.returncode == 2 and "must be a int" in out.stderr
