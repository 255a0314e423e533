"""The queue as a list: positions, owners, ETAs, cancelling and moving a waiting job, the session's history;
through the backend and through ``/webui/v1/queue`` on a real server. The jobs are a fake runner's: one that
holds the worker until the test lets it go, others that sleep a few milliseconds per step."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from webui.backend import NotFound, Refused
from webui.backend.local_queue import sample_units, seconds_per_unit
from webui.generation.requests import GenerationRequest
from webui.generation.service import GenerationService, JobResult

STEP_SECONDS = 0.01


class GatedRunner:
    """A prompt with "hold" runs until ``release`` is set (interruptible); any other sleeps per step."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran: list[str] = []

    def __call__(self, req: GenerationRequest, ctx) -> JobResult:
        self.ran.append(req.prompt)
        steps = req.steps or 2
        ctx.plan(steps, 1)
        ctx.begin_pass(steps)
        if "hold" in req.prompt:
            while not self.release.is_set():
                ctx.check()
                time.sleep(0.005)
        for step in range(1, steps + 1):
            time.sleep(STEP_SECONDS)
            ctx.on_step(step)
        return JobResult(images=[Image.new("RGB", (8, 8))], infotexts=[req.prompt], seeds=[1], subseeds=[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from webui.models.demo import write_demo_models

    folder = tmp_path_factory.mktemp("queue-models")
    write_demo_models(folder, ("sd15",))  # the API checks that a checkpoint is installed
    return folder


@pytest.fixture
def env(tmp_path, models):
    from webui.backend.local import LocalBackend

    services = tmp_services(tmp_path, models_dir=str(models))
    runner = GatedRunner()
    services = dataclasses.replace(services, generation=GenerationService(runner, preview_every=0, history=200))
    services.backend = LocalBackend(services)
    services.generation.start()
    yield SimpleNamespace(services=services, backend=services.backend, runner=runner)
    runner.release.set()
    services.generation.stop()


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def hold_the_worker(env) -> str:
    job = env.backend.submit(GenerationRequest(prompt="hold"), source="txt2img tab")
    wait_for(lambda: env.backend.job(job.id).state == "running")
    return job.id


def ids(entries) -> list[str]:
    return [e.id for e in entries]


def test_every_job_is_listed_with_owner_and_position_in_the_order_it_runs(env):
    held = hold_the_worker(env)
    b = env.backend.submit(GenerationRequest(prompt="b", steps=3, width=64, height=64), source="api 127.0.0.1")
    c = env.backend.submit(GenerationRequest(prompt="c"), source="img2img tab")
    state = env.backend.queue_list()
    assert ids(state.jobs) == [held, b.id, c.id]
    assert [(e.state, e.position, e.owner) for e in state.jobs] == [
        ("running", 0, "txt2img tab"),
        ("queued", 1, "api 127.0.0.1"),
        ("queued", 2, "img2img tab"),
    ]
    assert state.jobs[1].label == "txt2img 64x64, 3 steps, 1 image: b"
    assert state.history == []


def test_a_cancelled_job_never_runs_and_the_ones_behind_move_up(env):
    held = hold_the_worker(env)
    b = env.backend.submit(GenerationRequest(prompt="b"), source="api")
    c = env.backend.submit(GenerationRequest(prompt="c"), source="api")
    d = env.backend.submit(GenerationRequest(prompt="d"), source="api")
    assert env.backend.cancel(c.id).done
    assert [(e.id, e.position) for e in env.backend.queue_list().jobs[1:]] == [(b.id, 1), (d.id, 2)]
    with pytest.raises(Refused, match="running"):
        env.backend.cancel(held)  # the running job stops with Interrupt, not here
    with pytest.raises(NotFound):
        env.backend.cancel("no-such-job")
    env.runner.release.set()
    wait_for(lambda: env.backend.job(d.id).finished)
    assert env.runner.ran == ["hold", "b", "d"]
    assert env.backend.job(c.id).state == "interrupted"
    with pytest.raises(Refused, match="finished"):
        env.backend.cancel(c.id)
    history = env.backend.queue_list().history
    assert ids(history) == [d.id, b.id, held, c.id]  # the last to end first: c ended when it was cancelled
    assert history[3].error == "cancelled before it ran" and history[0].state == "done"


def test_a_waiting_job_moved_to_the_front_runs_next(env):
    hold_the_worker(env)
    jobs = [env.backend.submit(GenerationRequest(prompt=p), source="api") for p in ("b", "c", "d")]
    assert env.backend.move_job(jobs[2].id, 1).done
    assert [e.id for e in env.backend.queue_list().jobs[1:]] == [jobs[2].id, jobs[0].id, jobs[1].id]
    env.runner.release.set()
    wait_for(lambda: all(env.backend.job(j.id).finished for j in jobs))
    assert env.runner.ran == ["hold", "d", "b", "c"]


def test_etas_are_unknown_before_any_job_finished_then_grow_with_the_position_and_the_size(env):
    held = hold_the_worker(env)
    env.backend.submit(GenerationRequest(prompt="b", steps=20), source="api")
    assert [e.eta_seconds for e in env.backend.queue_list().jobs[1:]] == [None]  # no measurement yet: no guess
    env.runner.release.set()
    wait_for(lambda: len(env.backend.queue_list().history) == 2)
    env.runner.release.clear()
    hold_the_worker(env)
    small = env.backend.submit(GenerationRequest(prompt="small", steps=10), source="api")
    big = env.backend.submit(GenerationRequest(prompt="big", steps=40), source="api")
    state = env.backend.queue_list()
    rate = state.seconds_per_unit
    assert rate is not None and rate > 0
    running, first, second = state.jobs
    assert first.id == small.id and second.id == big.id
    assert first.eta_seconds == pytest.approx(running.eta_seconds + 10 * rate, rel=0.05, abs=0.05)
    assert second.eta_seconds - first.eta_seconds == pytest.approx(40 * rate, rel=1e-6)  # its own share
    assert held not in ids(state.jobs)


@pytest.mark.parametrize(
    "request_fields, units",
    [
        ({"steps": 20}, 20),
        ({"steps": 20, "width": 1024, "height": 512}, 40),
        ({"steps": 10, "n_iter": 2, "batch_size": 3}, 60),
        ({"task": "img2img", "steps": 20, "denoising_strength": 0.5, "init_image": Image.new("RGB", (8, 8))}, 10),
        ({"steps": 10, "enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5}, 10 + 10 * 0.5 * 4),
        ({}, 20),  # the family's default steps: counted as A1111's 20
    ],
)
def test_the_size_of_a_job(request_fields, units):
    assert sample_units(GenerationRequest(**request_fields)) == pytest.approx(units)


def test_the_rate_comes_from_finished_generations_only():
    def job(state, seconds, steps, request=True):
        req = GenerationRequest(steps=steps) if request else None
        return SimpleNamespace(state=state, started=100.0, ended=100.0 + seconds, request=req)

    assert seconds_per_unit([]) is None
    finished = [
        job("done", 2.0, 20),
        job("failed", 50.0, 10),
        job("done", 9.0, 10, request=False),
        job("done", 4.0, 20),
    ]
    assert seconds_per_unit(finished) == pytest.approx(6.0 / 40)


def test_history_is_bounded(env):
    for n in range(5):
        env.backend.submit(GenerationRequest(prompt=f"j{n}", steps=1), source="api")
    wait_for(lambda: len(env.backend.queue_list().history) == 5)
    assert [e.label[-2:] for e in env.backend.queue_list(history=3).history] == ["j4", "j3", "j2"]


# --- the API --------------------------------------------------------------------------------------------


def test_the_queue_routes(env):
    from fastapi import FastAPI

    from webui.api.queue_api import build_queue_router
    from webui.api.sdapi import build_sdapi_router

    app = FastAPI()
    app.include_router(build_sdapi_router(env.backend))
    app.include_router(build_queue_router(env.backend))
    with serve_api(env.services, app=app) as url, httpx.Client(base_url=url, timeout=30) as client:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(client.post, "/sdapi/v1/txt2img", json={"prompt": "hold"})
            wait_for(lambda: client.get("/webui/v1/queue").json()["jobs"])
            waiting = pool.submit(client.post, "/sdapi/v1/txt2img", json={"prompt": "waits"})
            jobs = wait_for(
                lambda: (
                    len(client.get("/webui/v1/queue").json()["jobs"]) == 2
                    and client.get("/webui/v1/queue").json()["jobs"]
                )
            )
            running, queued = jobs
            assert running["state"] == "running" and running["owner"] == "api 127.0.0.1"
            assert queued["position"] == 1 and queued["label"].endswith(": waits")
            assert client.get("/sdapi/v1/progress").json()["state"]["queue_size"] == 1  # A1111's route as before
            r = client.delete(f"/webui/v1/queue/{running['id']}")
            assert r.status_code == 409 and "Interrupt" in r.json()["detail"]
            assert client.delete("/webui/v1/queue/nope").status_code == 404
            assert client.post(f"/webui/v1/queue/{queued['id']}/move", json={"position": 0}).status_code == 422
            assert client.post(f"/webui/v1/queue/{queued['id']}/move", json={"position": 1}).json()["done"]
            r = client.delete(f"/webui/v1/queue/{queued['id']}")
            assert r.status_code == 200 and r.json() == {"done": True, "job": queued["id"]}
            cancelled = waiting.result(timeout=30)
            env.runner.release.set()
            assert held.result(timeout=30).status_code == 200
        assert cancelled.status_code == 200 and cancelled.json()["images"] == []
        history = client.get("/webui/v1/queue", params={"history": 5}).json()["history"]
        assert [h["id"] for h in history] == [running["id"], queued["id"]]
        assert history[1]["state"] == "interrupted" and history[1]["error"] == "cancelled before it ran"
