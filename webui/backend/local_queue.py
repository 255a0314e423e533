"""The queue as a list (``Backend.queue_list``): every waiting and running job with its owner, position and
ETA, and the session's finished jobs; plain records built from the generation service's jobs.

ETA of a waiting job: the running job's own ETA (its progress), plus the estimated run of every job before
it, plus its own. A run is estimated from its size: ``steps x n_iter x batch_size x (width x height / 512²)``
"sample units" (img2img's steps scaled by its denoising strength, hires fix's second pass added), times the
seconds per unit the last finished jobs of this session took. Before any job finished there is no rate:
the ETA is None ("unknown") rather than a guess.
"""

from __future__ import annotations

import time
from typing import Any

from webui.backend.records import QueueEntry, QueueList

RATE_JOBS = 10  # finished jobs the seconds-per-unit rate is taken from
DEFAULT_STEPS = 20  # a request that leaves steps to the family default (A1111's 20)
DEFAULT_SIDE = 512
LABEL_PROMPT_CHARS = 60


def sample_units(request: Any) -> float:
    """How much sampling a request asks for, in units of one 512x512 step of one image."""
    steps = request.steps or DEFAULT_STEPS
    area = (request.width or DEFAULT_SIDE) * (request.height or DEFAULT_SIDE) / (DEFAULT_SIDE * DEFAULT_SIDE)
    if request.task != "txt2img":
        steps = max(1, int(steps * request.denoising_strength))
    units = steps * area
    if request.task == "txt2img" and request.enable_hr:
        scale = float(request.hr_scale or 1.0)
        hires = request.hr_second_pass_steps or steps
        units += hires * max(0.1, request.denoising_strength) * area * scale * scale
    return units * request.n_iter * request.batch_size


def seconds_per_unit(finished: list[Any]) -> float | None:
    """The rate of the last ``RATE_JOBS`` generations that ran to the end (None before any did)."""
    seconds = units = 0.0
    used = 0
    for job in finished:
        if job.request is None or job.state != "done" or not job.started or not job.ended:
            continue
        seconds += max(0.0, job.ended - job.started)
        units += sample_units(job.request)
        used += 1
        if used >= RATE_JOBS:
            break
    return seconds / units if units > 0 else None


def job_label(job: Any) -> str:
    """What a job makes, in a few words; a task's own name (a model load ...)."""
    req = job.request
    if req is None:
        return job.source
    prompt = " ".join((req.prompt or "").split())
    if len(prompt) > LABEL_PROMPT_CHARS:
        prompt = prompt[: LABEL_PROMPT_CHARS - 1] + "…"
    size = f"{req.width}x{req.height}" if req.width and req.height else "default size"
    n = req.n_iter * req.batch_size
    steps = f"{req.steps} steps" if req.steps else "default steps"
    return f"{req.task} {size}, {steps}, {n} image{'s' if n != 1 else ''}: {prompt or '(no prompt)'}"


def queue_entry(job: Any, position: int, eta: float | None) -> QueueEntry:
    progress = job.progress
    return QueueEntry(
        id=job.id,
        state=job.state,
        owner=job.source,
        label=job_label(job),
        is_task=job.request is None,
        position=position,
        created=job.created,
        started=job.started,
        finished=job.ended,
        fraction=progress.fraction if job.state == "running" else (1.0 if job.state == "done" else 0.0),
        eta_seconds=eta,
        error=job.error if job.finished else "",
    )


def running_left(job: Any, rate: float | None) -> float | None:
    """Seconds the running job has left: its own ETA (from its steps), else its estimate less the time it ran."""
    if job.progress.eta_seconds is not None:
        return float(job.progress.eta_seconds)
    if job.request is None:
        return 0.0  # a task (a model load): no estimate, counted as nothing
    if rate is None:
        return None
    ran = time.time() - (job.started or time.time())
    return max(0.0, sample_units(job.request) * rate - ran)


def queue_list(generation: Any, history: int) -> QueueList:
    """The running job, the waiting ones in the order they will run (with ETAs), then the history."""
    finished = generation.finished_jobs(max(history, RATE_JOBS))
    rate = seconds_per_unit(finished)
    jobs: list[QueueEntry] = []
    current = generation.current
    wait: float | None = 0.0
    if current is not None and not current.finished:
        wait = running_left(current, rate)
        jobs.append(queue_entry(current, 0, wait))
    for position, job in enumerate(generation.waiting(), start=1):
        own = 0.0 if job.request is None else (sample_units(job.request) * rate if rate is not None else None)
        wait = wait + own if wait is not None and own is not None else None
        jobs.append(queue_entry(job, position, wait))
    done = [queue_entry(job, 0, None) for job in finished[: max(0, history)]]
    return QueueList(jobs=jobs, history=done, seconds_per_unit=rate)
