"""The job queue: one worker, FIFO order, progress, interrupt, skip, failures that stay alone."""

from __future__ import annotations

import threading
import time

import pytest

from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import (
    DONE,
    FAILED,
    INTERRUPTED,
    BatchSkipped,
    GenerationService,
    JobResult,
    QueueFullError,
)


def fake_runner(step_delay: float = 0.0, steps: int = 4, log: list | None = None, gate: threading.Event | None = None):
    """A runner shaped like the engine's: n_iter batches of `steps` steps, partial results, skip per batch."""

    def run(req: GenerationRequest, ctx) -> JobResult:
        if log is not None:
            log.append(req.prompt)
        if req.prompt == "boom":
            raise RuntimeError("the pipeline exploded")
        if req.prompt == "bad":
            raise RequestError("steps", "must be at least 1")
        if req.prompt == "oom":
            raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        result = JobResult()
        ctx.plan(steps * req.n_iter, req.n_iter)
        for it in range(req.n_iter):
            try:
                ctx.check()
                ctx.begin_pass(steps)
                for s in range(1, steps + 1):
                    if gate is not None:
                        gate.wait(5)
                    time.sleep(step_delay)
                    ctx.on_step(s, latents=s, preview=lambda lat: f"preview-{lat}")
            except BatchSkipped:
                result.skipped_batches += 1
                continue
            except Exception:
                raise
            result.images.append(f"{req.prompt}-{it}")
            ctx.image_done()
            ctx.partial(result)
        return result

    return run


def make_service(**kwargs) -> GenerationService:
    runner = kwargs.pop("runner", None) or fake_runner()
    service = GenerationService(runner, preview_every=kwargs.pop("preview_every", 1), **kwargs)
    service.start()
    return service


def test_jobs_run_in_submission_order_and_finish_done():
    order: list[str] = []
    service = make_service(runner=fake_runner(log=order))
    jobs = [service.submit(GenerationRequest(prompt=f"p{i}")) for i in range(5)]
    assert all(job.wait(5) for job in jobs)
    assert order == [f"p{i}" for i in range(5)]
    assert [job.state for job in jobs] == [DONE] * 5
    assert jobs[2].result.images == ["p2-0"]
    service.stop()


def test_failed_job_fails_alone_with_its_message_and_the_worker_goes_on():
    service = make_service()
    boom = service.submit(GenerationRequest(prompt="boom"))
    bad = service.submit(GenerationRequest(prompt="bad"))
    oom = service.submit(GenerationRequest(prompt="oom"))
    good = service.submit(GenerationRequest(prompt="fine"))
    assert good.wait(5)
    assert boom.state == FAILED and "the pipeline exploded" in boom.error
    assert bad.state == FAILED and bad.error_field == "steps" and "at least 1" in bad.error
    assert oom.state == FAILED and oom.error.startswith("Out of memory") and "offload" in oom.error
    assert good.state == DONE
    service.stop()


def test_progress_reports_steps_eta_and_previews():
    gate = threading.Event()
    service = make_service(runner=fake_runner(gate=gate, steps=4))
    job = service.submit(GenerationRequest(prompt="p", n_iter=2))
    deadline = time.time() + 5
    while job.state != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert job.progress.total_steps == 8
    gate.set()
    assert job.wait(5)
    p = job.progress
    assert (p.done_steps, p.images_done, p.images_total) == (8, 2, 2)
    assert p.fraction == 1.0
    assert p.preview == "preview-4" and p.preview_id == 8
    assert p.eta_seconds == 0
    service.stop()


def test_preview_every_n_steps_only():
    service = make_service(runner=fake_runner(steps=6), preview_every=3)
    job = service.submit(GenerationRequest(prompt="p"))
    assert job.wait(5)
    assert job.progress.preview_id == 2  # steps 3 and 6
    service.stop()


def test_interrupt_keeps_finished_images_and_stops_the_rest():
    service = make_service(runner=fake_runner(step_delay=0.02, steps=5))
    job = service.submit(GenerationRequest(prompt="p", n_iter=50))
    deadline = time.time() + 5
    while job.progress.images_done < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert service.interrupt()
    assert job.wait(5)
    assert job.state == INTERRUPTED
    assert 2 <= len(job.result.images) < 50
    assert job.result.interrupted
    nxt = service.submit(GenerationRequest(prompt="after"))
    assert nxt.wait(5) and nxt.state == DONE
    service.stop()


def test_a_job_past_the_time_budget_stops_keeps_its_images_and_says_why():
    """Issue 12: one allowed request held the worker for its own estimate of 43.6 hours."""
    service = make_service(runner=fake_runner(step_delay=0.02, steps=5), job_timeout=0.5)
    started = time.monotonic()
    job = service.submit(GenerationRequest(prompt="long", n_iter=10_000))
    assert job.wait(10)
    assert time.monotonic() - started < 5  # stopped near the budget, not after 10,000 batches
    assert job.state == INTERRUPTED and job.result.interrupted
    assert 1 <= len(job.result.images) < 10_000
    assert "stopped after 0.5 s" in job.stop_reason and "job_timeout" in job.stop_reason
    assert job.error == job.stop_reason
    nxt = service.submit(GenerationRequest(prompt="after"))  # the next job gets a budget of its own
    assert nxt.wait(5) and nxt.state == DONE and not nxt.stop_reason
    service.job_timeout = 0  # 0 = no limit (a live setting)
    service.stop()


def test_model_switches_and_other_tasks_have_no_time_budget():
    service = make_service(job_timeout=0.05)
    assert service.call(lambda: time.sleep(0.2) or "loaded", timeout=5) == "loaded"
    service.stop()


def test_interrupting_a_queued_job_means_it_never_runs():
    order: list[str] = []
    gate = threading.Event()
    service = make_service(runner=fake_runner(gate=gate, log=order))
    first = service.submit(GenerationRequest(prompt="first"))
    second = service.submit(GenerationRequest(prompt="second"))
    assert service.position(second) in (1, 2)
    assert service.interrupt(second.id)
    gate.set()
    assert first.wait(5) and second.wait(5)
    assert second.state == INTERRUPTED and "second" not in order
    service.stop()


def test_skip_drops_the_current_batch_and_goes_on_with_the_next():
    gate = threading.Event()
    service = make_service(runner=fake_runner(gate=gate, steps=3))
    job = service.submit(GenerationRequest(prompt="p", n_iter=3))
    deadline = time.time() + 5
    while job.state != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert service.skip()
    gate.set()
    assert job.wait(5)
    assert job.state == DONE
    assert job.result.skipped_batches == 1
    assert job.result.images == ["p-1", "p-2"]
    service.stop()


def test_queue_positions_and_a_full_queue_refuses_politely():
    gate = threading.Event()
    service = make_service(runner=fake_runner(gate=gate), max_queue=2)
    running = service.submit(GenerationRequest(prompt="a"))
    deadline = time.time() + 5
    while service.current is None and time.time() < deadline:
        time.sleep(0.01)
    waiting = [service.submit(GenerationRequest(prompt=p)) for p in ("b", "c")]
    assert [service.position(j) for j in waiting] == [1, 2]
    assert service.position(running) == 0
    with pytest.raises(QueueFullError, match="queue is full"):
        service.submit(GenerationRequest(prompt="d"))
    gate.set()
    assert all(j.wait(5) for j in [running, *waiting])
    service.stop()


def test_call_runs_on_the_worker_thread_in_turn_and_reraises():
    service = make_service()
    names: list[str] = []
    assert service.call(lambda: names.append(threading.current_thread().name) or 42, timeout=5) == 42
    assert names == ["generation-worker"]

    def fails():
        raise KeyError("no such checkpoint")

    with pytest.raises(KeyError, match="no such checkpoint"):
        service.call(fails, timeout=5)
    service.stop()


def test_call_without_a_running_worker_fails_at_once_instead_of_hanging():
    service = GenerationService(fake_runner())
    with pytest.raises(RuntimeError, match="worker is not running"):
        service.call(lambda: 1, timeout=5)


def test_a_job_can_be_named_and_a_name_in_use_is_refused():
    service = make_service()
    job = service.submit(GenerationRequest(prompt="p"), job_id="task(abc)")
    assert job.id == "task(abc)" and service.get("task(abc)") is job
    with pytest.raises(ValueError, match="exists already"):
        service.submit(GenerationRequest(prompt="q"), job_id="task(abc)")
    assert job.wait(5)
    service.stop()
