"""The composed app on a fresh machine: demo models, load, hash computed after the load."""

from __future__ import annotations

import time

import pytest

from tests.app_services import tmp_services
from webui.models.hashes import sha256_file
from webui.ui import models_tab, shell


@pytest.fixture
def services(tmp_path):
    svc = tmp_services(tmp_path)
    svc.generation.start()  # model loads run on the worker thread
    yield svc
    svc.generation.stop()


def test_fresh_machine_demo_models_load_and_get_hashed(services):
    assert shell.checkpoint_choices(services) == []
    message = models_tab.create_demo_models(services)
    assert "random weights" in message
    choices = dict((v, k) for k, v in shell.checkpoint_choices(services))
    name = "demo-sd15-noise.safetensors"
    assert "demo: makes noise" in choices[name]
    steps = list(shell.load_checkpoint(services, name))
    assert steps[0].startswith("Loading") and "Loaded **" in steps[-1] and "SD 1.5" in steps[-1]
    path = services.catalog.find(name).path
    deadline = time.time() + 60
    while services.hashes.get(path, compute=False) is None and time.time() < deadline:
        time.sleep(0.1)
    row = next(r for r in models_tab.model_rows(services) if r[1] == name)
    assert row[5] == sha256_file(path)[:10]


def test_load_failure_is_shown_not_raised(services):
    bad = services.paths.models / "Stable-diffusion" / "bad.safetensors"
    bad.write_bytes(b"12345678")
    services.catalog.refresh()
    steps = list(shell.load_checkpoint(services, "bad.safetensors"))
    assert "Could not load" in steps[-1] and "bad.safetensors" in steps[-1]
