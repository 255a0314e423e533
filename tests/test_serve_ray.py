"""The Ray Serve backend on a real local Ray cluster: 2 CPU replicas (one torch thread each), tiny SD 1.5
and SDXL checkpoints written in the real single-file format, the A1111 API and the page's job runner
over it. One cluster for the module (starting it takes ~20 s); each test leaves it serving.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from webui.generation.requests import GenerationRequest, RequestError  # noqa: E402

pytestmark = pytest.mark.slow

SD15 = "demo-sd15-noise.safetensors"
SDXL = "demo-sdxl-noise.safetensors"


def _request(model: str, steps: int = 3, seed: int = 1, **extra) -> GenerationRequest:
    return GenerationRequest(prompt="a cat", steps=steps, width=64, height=64, seed=seed, sd_model_checkpoint=model, **extra)


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    """(backend, services, server): a RayBackend over 2 replicas, each model warmed up on its own replica, and
    the app's server (page and API) over it."""
    from webui.app import ROOT, build_server, build_services
    from webui.config import Settings
    from webui.models.demo import write_demo_models
    from webui.serve.start import build_ray_backend

    root = tmp_path_factory.mktemp("ray_app")
    write_demo_models(root / "models", ("sd15", "sdxl"))
    settings = Settings.under(
        root,
        device="cpu",
        precision="fp32",
        channels_last="off",
        cpu_engine="torch",
        preview_every=1,
        backend="ray",
        replicas=2,
        replica_threads=1,
    )
    services = build_services(settings, base=root)
    backend = build_ray_backend(services, ROOT)  # as webui.app.main: Ray here, the replicas start behind ...
    server = build_server(services)  # ... while the page is built (its imports must not race Ray's)
    for model in (SD15, SDXL):  # one after the other: the second goes to the replica with no model
        job = backend.submit(_request(model), "warm-up")
        assert backend.wait(job.id, 180).state == "done", backend.job(job.id).error
    try:
        yield backend, services, server
    finally:
        backend.close()


def _wait_running(backend, job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = backend.job(job_id)
        if snapshot.state == "running" and snapshot.progress.step >= 1:
            return
        assert not snapshot.finished, snapshot.error
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start running in {timeout} s")


def _homes(backend) -> dict[str, str]:
    """Each replica's active checkpoint (the one it is the home of)."""
    return {tag: info["active"] for tag, info in backend.replica_stats().items()}


def test_mixed_models_stop_swapping_after_warm_up(ray_app):
    backend, _, _ = ray_app
    before = backend.replica_stats()
    assert sorted(info["active"] for info in before.values()) == [SD15, SDXL]  # each model has a home
    jobs = [backend.submit(_request((SD15, SDXL)[i % 2], seed=i), "mixed") for i in range(8)]
    for job in jobs:
        assert backend.wait(job.id, 120).state == "done"
    after = backend.replica_stats()
    assert {t: i["model_changes"] for t, i in after.items()} == {t: i["model_changes"] for t, i in before.items()}
    ran_on = {backend._remote(j.id).replica.replica for j in jobs[::2]}, {backend._remote(j.id).replica.replica for j in jobs[1::2]}
    assert len(ran_on[0]) == len(ran_on[1]) == 1 and ran_on[0] != ran_on[1]  # SD 1.5 on one, SDXL on the other
    started = {e.id: e.started for e in backend.queue_list(history=50).history}
    for model_jobs in (jobs[::2], jobs[1::2]):  # each replica ran its jobs first come first served
        starts = [started[j.id] for j in model_jobs]
        assert starts == sorted(starts)


def test_interrupt_reaches_the_replica_running_the_job(ray_app):
    backend, _, _ = ray_app
    sd15 = backend.submit(_request(SD15, steps=400), "long")
    sdxl = backend.submit(_request(SDXL, steps=400), "long")
    _wait_running(backend, sd15.id)
    _wait_running(backend, sdxl.id)
    assert backend.interrupt(sdxl.id).done
    stopped = backend.wait(sdxl.id, 30)
    assert stopped.state == "interrupted" or stopped.result.interrupted
    running = backend.job(sd15.id)
    assert running.state == "running" and not running.interrupt_requested  # the other replica's job goes on
    backend.interrupt(sd15.id)
    assert backend.wait(sd15.id, 30).finished


def test_force_task_id_names_the_job_and_a_queued_job_can_be_cancelled(ray_app):
    backend, _, _ = ray_app
    first = backend.submit(_request(SD15, steps=300), "api", job_id="task(first)")
    queued = backend.submit(_request(SD15), "api", job_id="task(second)")
    assert backend.job("task(first)").id == "task(first)"
    with pytest.raises(RequestError):
        backend.submit(_request(SD15), "api", job_id="task(first)")
    _wait_running(backend, first.id)
    assert backend.queue().waiting >= 1
    entries = {e.id: e for e in backend.queue_list().jobs}
    assert entries["task(second)"].position == 1 and entries["task(first)"].state == "running"
    assert backend.cancel(queued.id).done
    backend.interrupt(first.id)
    assert backend.wait(queued.id, 30).state == "interrupted"  # cancelled: it never ran
    assert backend.wait(first.id, 30).finished


def test_a_replica_killed_mid_job_fails_only_its_job_and_the_cluster_serves_again(ray_app):
    backend, _, _ = ray_app
    victim = backend.submit(_request(SD15, steps=600), "kill")
    other = backend.submit(_request(SDXL, steps=20), "kill")
    _wait_running(backend, victim.id)
    pid = backend._remote(victim.id).replica.pid
    os.kill(pid, signal.SIGKILL)
    failed = backend.wait(victim.id, 60)
    assert failed.state == "failed" and "replica running this job stopped" in failed.error
    assert backend.wait(other.id, 120).state == "done"  # the other replica's job is not lost
    again = backend.submit(_request(SD15, seed=7), "after")
    done = backend.wait(again.id, 180)
    assert done.state == "done", done.error
    assert backend._remote(again.id).replica.pid != pid  # Serve started a new replica (or the other took it)


def test_with_retry_a_job_whose_replica_died_runs_on_another(ray_app):
    backend, _, _ = ray_app
    backend._retry = True
    try:
        victim = backend.submit(_request(SDXL, steps=600, n_iter=1), "retry")
        _wait_running(backend, victim.id)
        pid = backend._remote(victim.id).replica.pid
        backend.interrupt  # noqa: B018 - (the job is not interrupted: its replica dies)
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        backend.interrupt(victim.id)  # stop the rerun early: it is the retry that answers
        done = backend.wait(victim.id, 180)
        assert done.state in ("done", "interrupted"), done.error
        assert backend._remote(victim.id).attempts == 2
        assert backend._remote(victim.id).replica.pid != pid
    finally:
        backend._retry = False


def _b64_png(text: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_a1111_api_unchanged_and_options_checkpoint_is_the_clients_default(ray_app):
    import json

    from fastapi.testclient import TestClient

    backend, _, server = ray_app
    client = TestClient(server, base_url="http://127.0.0.1")
    body = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5}
    answer = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": SDXL}})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert _b64_png(data["images"][0]).size == (64, 64) and json.loads(data["info"])["seed"] == 5
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SDXL}).status_code == 200
    answer = client.post("/sdapi/v1/txt2img", json={**body, "force_task_id": "task(api)"})
    assert answer.status_code == 200, answer.text
    assert backend.job("task(api)").result.infotexts[0].count("demo-sdxl-noise") == 1  # the client's default ran
    progress = client.get("/sdapi/v1/progress").json()
    assert {"progress", "eta_relative", "state"} <= set(progress)


def test_the_pages_job_runner_follows_a_job_on_a_replica(ray_app):
    from webui.ui.runner import submit_from_page, watch_job

    backend, _, _ = ray_app
    job_id, error = submit_from_page(backend, lambda: _request(SD15, steps=12, seed=3))
    assert not error
    frames = list(watch_job(backend, job_id, poll=0.05))
    assert frames[-1].final and frames[-1].job.state == "done"
    assert any(f.preview is not None for f in frames)  # the live preview crossed the process boundary
    assert len(frames[-1].job.result.images) == 1 and Path(frames[-1].job.result.paths[0]).is_file()
