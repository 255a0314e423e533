"""The Ray backend's parts that need no cluster: the replica layout, the job board, the ingress's job
records and queue list, and the router's choice of replica (fed Serve's replica records as fakes)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from webui.backend.records import JobOutcome, JobProgress, JobSnapshot
from webui.generation.requests import GenerationRequest
from webui.serve.board import JobBoard
from webui.serve.cluster import Layout, plan_layout
from webui.serve.remote_jobs import RemoteJob, queue_list


def _run(coroutine):
    """``asyncio.run`` on a thread of its own: an earlier test (the browser's) may leave a loop running here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.mark.parametrize(
    ("replicas", "threads", "gpus", "cpus", "want"),
    [
        (0, 0, 0, 2, Layout(1, 2, 0.0)),  # no GPU: one CPU replica with every core
        (2, 0, 0, 2, Layout(2, 1, 0.0)),  # two CPU replicas share the cores
        (2, 1, 0, 8, Layout(2, 1, 0.0)),  # threads as asked
        (0, 0, 4, 32, Layout(4, 8, 1.0)),  # a replica per GPU
        (2, 0, 4, 32, Layout(2, 16, 1.0)),  # fewer replicas than GPUs: one GPU each
        (3, 0, 2, 12, Layout(3, 4, 0.0)),  # more replicas than GPUs: all on the CPU
    ],
)
def test_plan_layout(replicas, threads, gpus, cpus, want):
    assert plan_layout(replicas, threads, gpus, cpus) == want


def test_the_board_hands_a_jobs_actions_to_whoever_takes_them_once():
    async def scenario():
        board = JobBoard()
        assert await board.take("a", 0.01) == []  # nothing posted: the wait times out
        await board.post("a", "skip")
        await board.post("a", "interrupt")
        await board.post("a", "interrupt")  # twice is once
        assert await board.take("a", 1.0) == ["skip", "interrupt"]
        assert await board.take("a", 0.01) == []
        waiting = asyncio.ensure_future(board.take("b", 5.0))
        await asyncio.sleep(0.01)
        await board.post("b", "cancel")  # a take that waits returns as soon as an action comes
        assert await asyncio.wait_for(waiting, 1.0) == ["cancel"]
        await board.post("c", "skip")
        await board.forget("c")
        assert await board.pending() == 0
        with pytest.raises(ValueError, match="unknown job action"):
            await board.post("a", "explode")

    _run(scenario())


def _snapshot(job_id: str, state: str, step: int = 0, preview=None, preview_id: int = 0, **extra) -> JobSnapshot:
    progress = JobProgress(step=step, steps=10, done_steps=step, total_steps=10, preview=preview, preview_id=preview_id)
    return JobSnapshot(id=job_id, state=state, source="api", progress=progress, **extra)


@dataclass
class _Replica:
    replica: str
    pid: int = 1
    model_changes: int = 1
    active: str = ""


def _job(job_id: str, replica: str | None, state: str) -> RemoteJob:
    job = RemoteJob(job_id, "generate", None, "api", GenerationRequest(prompt=job_id, steps=10, width=512, height=512))
    if replica is not None:
        job.update(_snapshot(job_id, state), _Replica(replica))
    return job


def test_a_remote_job_keeps_the_newest_preview_for_every_reader():
    job = RemoteJob("j", "generate", None, "api", GenerationRequest(prompt="x"))
    assert job.view(None, 3).state == "queued" and job.view(None, 3).position == 3  # not on a replica yet
    assert not job.arrived.is_set()
    job.update(_snapshot("j", "running", 2, preview="image-2", preview_id=2), _Replica("r1"))
    assert job.arrived.is_set()  # the dispatcher sends the next job on
    job.update(_snapshot("j", "running", 3), _Replica("r1"))  # no new preview in this snapshot
    assert job.view(0, 0).progress.preview == "image-2"  # a reader that has none gets it
    assert job.view(2, 0).progress.preview is None  # one that has it does not
    assert job.view(None, 0).progress.step == 3 and job.started is not None
    job.update(_snapshot("j", "done", 10, result=JobOutcome(images=["x"])), _Replica("r1"))
    assert job.finished and job.view(None, 0).result.images == ["x"]
    job.fail("too late")  # a finished job keeps its outcome
    assert job.view(None, 0).state == "done"


def test_a_failed_remote_job_says_why():
    job = RemoteJob("j", "generate", None, "api", GenerationRequest(prompt="x", n_iter=2))
    job.fail("the replica running this job stopped")
    snap = job.view(None, 0)
    assert snap.state == "failed" and snap.finished and "stopped" in snap.error and snap.n_iter == 2


def test_queue_list_positions_and_etas_are_per_replica():
    jobs = [
        _job("a-run", "r1", "running"),
        _job("b-run", "r2", "running"),
        _job("a-wait1", "r1", "queued"),
        _job("b-wait1", "r2", "queued"),
        _job("a-wait2", "r1", "queued"),
        _job("new", None, "queued"),  # not on a replica yet
    ]
    done = _job("old", "r1", "running")
    done.update(_snapshot("old", "done", 10), _Replica("r1"))
    done.started, done.ended = time.time() - 2.0, time.time()  # 10 units in 2 s: 0.2 s a unit
    listed = queue_list([done, *jobs], history=10)
    position = {e.id: e.position for e in listed.jobs}
    assert position == {"a-run": 0, "a-wait1": 1, "a-wait2": 2, "b-run": 0, "b-wait1": 1, "new": 1}
    eta = {e.id: e.eta_seconds for e in listed.jobs}
    assert eta["a-wait2"] > eta["a-wait1"] > 0 and eta["b-wait1"] < eta["a-wait2"]
    assert [e.id for e in listed.history] == ["old"] and listed.seconds_per_unit == pytest.approx(0.2, rel=0.05)


# --- the router ---------------------------------------------------------------------------------------


@dataclass
class _Running:
    replica_id: str
    multiplexed_model_ids: set = field(default_factory=set)


@dataclass
class _Metadata:
    multiplexed_model_id: str


@dataclass
class _Pending:
    metadata: _Metadata


def _router():
    pytest.importorskip("ray.serve")
    from webui.serve.router import ModelHomeRouter

    router = ModelHomeRouter.__new__(ModelHomeRouter)  # Serve builds it with a deployment; the choice is ours
    router.initialize_state()
    return router


def _choose(router, replicas, model: str) -> list[list[str]]:
    ranks = _run(router.choose_replicas(replicas, _Pending(_Metadata(model))))
    return [[r.replica_id for r in rank] for rank in ranks]


def test_a_model_with_a_home_goes_only_to_its_homes():
    router = _router()
    replicas = [_Running("r1", {"sd15"}), _Running("r2", {"sdxl"}), _Running("r3", {"sd15"})]
    assert _choose(router, replicas, "sdxl") == [["r2"]]  # never the idle ones that would swap
    assert sorted(_choose(router, replicas, "sd15")[0]) == ["r1", "r3"]


def test_a_new_model_takes_the_replica_with_fewest_models_then_the_least_recently_used():
    router = _router()
    replicas = [_Running("r1", {"sd15"}), _Running("r2"), _Running("r3")]
    router.on_request_routed(_Pending(_Metadata("")), "r3", None)  # r3 was used just now
    assert _choose(router, replicas, "sd3") == [["r2"], ["r3"], ["r1"]]


def test_a_burst_of_new_models_spreads_before_any_replica_reports_them():
    router = _router()
    replicas = [_Running("r1"), _Running("r2")]
    first = _choose(router, replicas, "sd15")[0][0]
    router.on_request_routed(_Pending(_Metadata("sd15")), first, None)  # claimed as sd15's home at once
    assert _choose(router, replicas, "sd15") == [[first]]  # its next job follows it there
    other = _choose(router, replicas, "sdxl")[0][0]
    assert other != first  # the other model gets the other replica


def test_without_the_ray_extra_the_ray_backend_says_how_to_get_it(monkeypatch):
    import importlib.util

    from webui.config_checks import SettingsError
    from webui.serve import start

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else object())
    with pytest.raises(SettingsError, match="launch.py --backend ray"):
        start.build_ray_backend(object(), None)  # refused before the services or the folder are used
