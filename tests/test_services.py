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
    assert shell.checkpoint_choices(services.backend) == []
    message = models_tab.create_demo_models(services.backend)
    assert "random weights" in message
    choices = dict((v, k) for k, v in shell.checkpoint_choices(services.backend))
    name = "demo-sd15-noise.safetensors"
    assert "demo: makes noise" in choices[name]
    steps = list(shell.load_checkpoint(services.backend, name))
    assert steps[0].startswith("Loading") and "Loaded **" in steps[-1] and "SD 1.5" in steps[-1]
    path = services.catalog.find(name).path
    deadline = time.time() + 60
    while services.hashes.get(path, compute=False) is None and time.time() < deadline:
        time.sleep(0.1)
    row = next(r for r in models_tab.model_rows(services.backend) if r[1] == name)
    assert row[5] == sha256_file(path)[:10]


def test_load_failure_is_shown_not_raised(services):
    bad = services.paths.models / "Stable-diffusion" / "bad.safetensors"
    bad.write_bytes(b"12345678")
    services.catalog.refresh()
    steps = list(shell.load_checkpoint(services.backend, "bad.safetensors"))
    assert "Could not load" in steps[-1] and "bad.safetensors" in steps[-1]


def test_the_first_image_after_start_names_the_model_hash_while_the_background_hash_still_runs(services, monkeypatch):
    from webui.generation.requests import GenerationRequest
    from webui.models.demo import demo_checkpoint_name, write_demo_models

    (path,) = write_demo_models(services.paths.models, ("sd15",))
    services.catalog.refresh()
    services.engine.default_model = demo_checkpoint_name("sd15")
    calls = []

    def slow_sha256(file):  # a multi-GB checkpoint: the hash started after the load is still running
        calls.append(file)
        time.sleep(0.5)
        return sha256_file(file)

    monkeypatch.setattr(services.hashes, "_hasher", slow_sha256)
    request = GenerationRequest(prompt="a lighthouse", steps=1, width=64, height=64, seed=3)
    job = services.generation.submit(request, source="test")  # no model loaded: the job loads the default
    assert job.wait(120) and job.state == "done", job.error
    assert f"Model hash: {sha256_file(path)[:10]}" in job.result.infotexts[0]
    assert len(calls) == 1  # the infotext waited for the background hash instead of hashing twice
