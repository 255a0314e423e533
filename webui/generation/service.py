"""The job queue: one worker thread owns the device; every job from the UI or the API goes through it.

A ``Job`` publishes immutable ``Progress`` snapshots (step, total, ETA, live preview), can be
interrupted (stop now, keep the images already finished) or skipped (drop the current batch,
go on with the next), and ends ``done``, ``interrupted`` or ``failed`` with a message a user can
act on. A job that fails never takes the worker down: the next job runs.

The service knows nothing about models or pipelines: it runs a ``runner(request, ctx)``
callable (``webui.generation.engine.Engine.run`` in the app, a fake in tests).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from webui.generation.requests import GenerationRequest, RequestError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, INTERRUPTED, FAILED = "queued", "running", "done", "interrupted", "failed"
FINISHED = (DONE, INTERRUPTED, FAILED)


class JobInterrupted(Exception):
    """Raised inside the runner when the user pressed Interrupt: stop now, keep finished images."""


class JobTimedOut(JobInterrupted):
    """The job ran past the job time budget (``job_timeout``): it stops as if interrupted."""


class BatchSkipped(Exception):
    """Raised inside the runner when the user pressed Skip: drop the current batch, go on."""


class QueueFullError(RuntimeError):
    pass


class JobFailed(RuntimeError):
    """A failure whose message is already written for the user (e.g. out of memory, with the mode that helps)."""


@dataclass(frozen=True)
class Progress:
    step: int = 0  # step within the current pass
    steps: int = 0  # steps of the current pass
    done_steps: int = 0  # over the whole job
    total_steps: int = 0
    images_done: int = 0
    images_total: int = 0
    eta_seconds: float | None = None
    started_at: float | None = None
    preview: Any = None  # PIL image of the latest preview
    preview_id: int = 0  # increases with every new preview
    textinfo: str = ""

    @property
    def fraction(self) -> float:
        if not self.total_steps:
            return 0.0
        return min(1.0, self.done_steps / self.total_steps)


@dataclass
class JobResult:
    images: list[Any] = field(default_factory=list)  # PIL images, in order
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # saved files ("" when not saved)
    info: dict[str, Any] = field(default_factory=dict)  # A1111 ``Processed.js()``-style summary
    interrupted: bool = False
    skipped_batches: int = 0


class JobContext:
    """What the runner sees of its job: progress reporting and the interrupt/skip flags."""

    def __init__(
        self,
        job: Job,
        preview_every: int,
        preview_fn: Callable[[Any], Any] | None = None,
        timeout: float = 0.0,
    ) -> None:
        self._job = job
        self.preview_every = max(0, int(preview_every))
        self.preview_fn = preview_fn
        self._pass_base = 0
        self.timeout = float(timeout or 0)
        self._deadline = time.monotonic() + self.timeout if self.timeout > 0 else None

    @property
    def job_id(self) -> str:
        return self._job.id

    def check(self) -> None:
        """Raise if the user asked to stop or the job ran out of time; call between passes and images."""
        if self._deadline is not None and time.monotonic() > self._deadline and not self._job.stop_reason:
            self._job.stop_reason = (
                f"stopped after {self.timeout:g} s, the longest one job may run (the job_timeout setting,"
                " --job-timeout); the images finished by then are kept. Ask for fewer images or steps,"
                " or raise the limit"
            )
            log.warning("job %s: %s", self._job.id, self._job.stop_reason)
            self._job.interrupt_event.set()
        if self._job.interrupt_event.is_set():
            if self._job.stop_reason:
                raise JobTimedOut(self._job.stop_reason)
            raise JobInterrupted()
        if self._job.skip_event.is_set():
            self._job.skip_event.clear()
            raise BatchSkipped()

    def plan(self, total_steps: int, images_total: int) -> None:
        self._job._update(total_steps=int(total_steps), images_total=int(images_total))

    def begin_pass(self, steps: int, label: str = "") -> None:
        self._pass_base = self._job.progress.done_steps
        self._job._update(step=0, steps=int(steps), textinfo=label)

    def on_step(self, step: int, latents: Any = None, preview: Callable[[Any], Any] | None = None) -> None:
        """Step ``step`` (1-based) of the current pass finished; may render a preview; raises to stop."""
        job = self._job
        p = job.progress
        done = self._pass_base + step
        changes: dict[str, Any] = {"step": step, "done_steps": done}
        if p.started_at and p.total_steps:
            elapsed = time.monotonic() - p.started_at
            changes["eta_seconds"] = elapsed / max(done, 1) * max(p.total_steps - done, 0)
        render = preview or self.preview_fn
        if latents is not None and render and self.preview_every and step % self.preview_every == 0:
            try:
                changes["preview"] = render(latents)
                changes["preview_id"] = p.preview_id + 1
            except Exception:  # a preview must never fail a job
                log.debug("preview failed", exc_info=True)
        job._update(**changes)
        self.check()

    def finish_pass(self, steps: int) -> None:
        """Count a pass as fully done (a pass can end early: img2img runs strength x steps)."""
        self._job._update(done_steps=self._pass_base + steps)

    def image_done(self, count: int = 1) -> None:
        self._job._update(images_done=self._job.progress.images_done + count)

    def partial(self, result: JobResult) -> None:
        """Publish what is finished so far (an interrupted job keeps these)."""
        self._job.result = result


class Job:
    def __init__(self, request: GenerationRequest, source: str, number: int, job_id: str | None = None) -> None:
        self.id = job_id or uuid.uuid4().hex[:12]
        self.request = request
        self.source = source
        self.number = number
        self.created = time.time()
        self.started: float | None = None  # time.time() when it began to run
        self.ended: float | None = None  # time.time() when it finished
        self.state = QUEUED
        self.error: str = ""
        self.error_field: str = ""
        self.stop_reason: str = ""  # why the app stopped the job itself (the time budget), "" otherwise
        self.result: JobResult = JobResult()
        self.exception: BaseException | None = None
        self.action: Callable[[], Any] | None = None  # a non-generation task (model switch)
        self.work: Callable[[JobContext], JobResult] | None = None  # a job that is not a generation (Extras)
        self.progress = Progress()
        self.on_progress: Callable[[Progress], None] | None = None  # the console's bar (webui.generation.console)
        self.interrupt_event = threading.Event()
        self.skip_event = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self.progress = progress = replace(self.progress, **changes)
        if self.on_progress is not None:
            self.on_progress(progress)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def interrupt(self) -> None:
        self.interrupt_event.set()

    def skip(self) -> None:
        self.skip_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _finish(self, state: str, error: str = "", error_field: str = "") -> None:
        self.state, self.error, self.error_field = state, error, error_field
        self.ended = time.time()
        self._done.set()


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """A message a user can act on, and the request field at fault ('' when none)."""
    if isinstance(exc, RequestError):
        return str(exc), exc.field
    if isinstance(exc, JobFailed):
        return str(exc), ""
    from webui.models.ram_budget import NotEnoughMemoryError

    if isinstance(exc, NotEnoughMemoryError):  # a load refused before it started: the message says what to free
        return str(exc), ""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        hint = "Try a smaller size or batch size, or a memory-saving mode (model CPU offload, VAE tiling)"
        return f"Out of memory. {hint}; the app keeps running.", ""
    return f"{name}: {exc}", ""


class GenerationService:
    """FIFO queue of jobs, one worker thread, bounded history of finished jobs."""

    def __init__(
        self,
        runner: Callable[[GenerationRequest, JobContext], JobResult],
        *,
        preview_every: int = 5,
        preview_fn: Callable[[Any], Any] | None = None,
        max_queue: int = 100,
        history: int = 200,
        job_timeout: float = 0.0,
        console: Any = None,
    ) -> None:
        self._runner = runner
        self.console = console  # webui.generation.console.ConsoleProgress: a terminal bar per job (None: none)
        self.preview_every = preview_every
        self.job_timeout = job_timeout  # seconds one job may hold the worker (0 = no limit)
        self._preview_fn = preview_fn
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._max_queue = max_queue
        self._history = history
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: list[Job] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._current: Job | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for job in waiting:
            job._finish(INTERRUPTED, "the server is shutting down")
        if self._current:
            self._current.interrupt()
        self._queue.put(None)
        if self._thread:
            self._thread.join(timeout)

    # -- submitting and controlling jobs -------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        source: str = "api",
        action: Callable[[], Any] | None = None,
        work: Callable[[JobContext], JobResult] | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Queue a job; ``job_id`` names it (A1111's ``force_task_id``; None: a new random id). ``ValueError``
        for an id a job known here already has."""
        with self._lock:
            if len(self._waiting) >= self._max_queue:
                raise QueueFullError(f"the queue is full ({self._max_queue} jobs waiting); try again later")
            if job_id and job_id in self._jobs:
                raise ValueError(f"a job with the id {job_id!r} exists already; leave force_task_id out or use a new one")
            job = Job(request, source, next(self._counter), job_id)
            job.action = action
            job.work = work  # runs like a generation (progress, interrupt, time budget) with no request
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._trim_history()
        self._queue.put(job)
        return job

    def call(self, action: Callable[[], Any], timeout: float | None = None, label: str = "task") -> Any:
        """Run ``action`` on the worker thread (it owns the device: model switches go here) and return its value.

        It waits its turn behind the jobs already queued; its exception is re-raised here.
        """
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"cannot run {label}: the generation worker is not running (start the service first)")
        job = self.submit(None, source=label, action=action)  # type: ignore[arg-type]
        if not job.wait(timeout):
            raise TimeoutError(f"{label} did not finish within {timeout} s; it is still queued or running")
        if job.state == FAILED:
            raise job.exception or RuntimeError(job.error)
        return job.result.info.get("value")

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(f"no job {job_id!r}; it may have finished long ago") from None

    @property
    def current(self) -> Job | None:
        return self._current

    def waiting(self) -> list[Job]:
        with self._lock:
            return list(self._waiting)

    def position(self, job: Job) -> int:
        """0 while running or finished, else 1 for the next job to run, 2 after it ..."""
        with self._lock:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return 0

    def finished_jobs(self, limit: int) -> list[Job]:
        """The session's finished jobs still kept (``history`` of them at most), the last to end first."""
        with self._lock:
            done = [job for job in self._jobs.values() if job.finished]
        done.sort(key=lambda job: job.ended or 0.0, reverse=True)
        return done[: max(0, limit)]

    def cancel(self, job_id: str) -> bool:
        """Take a job that waits out of the queue (it ends ``interrupted`` without running); False when it is
        running or finished already (the running one stops with ``interrupt``). ``KeyError``: no such job."""
        job = self.get(job_id)
        with self._lock:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
            job.interrupt()
            job._finish(INTERRUPTED, "cancelled before it ran")
        return True

    def move(self, job_id: str, position: int) -> bool:
        """Put a waiting job at ``position`` (1 = next to run; past the end: last); False when it does not wait."""
        job = self.get(job_id)
        with self._lock:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
            self._waiting.insert(max(0, int(position) - 1), job)
        return True

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt one job (queued: it never runs) or, with no id, the running one."""
        job = self._current if job_id is None else self.get(job_id)
        if job is None or job.finished:
            return False
        job.interrupt()
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
                job._finish(INTERRUPTED)
        return True

    def skip(self, job_id: str | None = None) -> bool:
        job = self._current if job_id is None else self.get(job_id)
        if job is None or job.finished:
            return False
        job.skip()
        return True

    # -- the worker -------------------------------------------------------------
    def _work(self) -> None:
        while True:
            token = self._queue.get()  # one per submitted job: it wakes the worker; the order is ``_waiting``'s
            if token is None:
                return
            with self._lock:
                if not self._waiting:  # its job was interrupted or cancelled while queued
                    continue
                job = self._waiting.pop(0)
                self._current = job
            bar = self.console.watch(job) if self.console is not None and job.action is None else None
            try:
                self._run(job)
            finally:
                self._current = None
                if bar is not None:
                    bar.close()

    def _run(self, job: Job) -> None:
        job.started = time.time()
        job.state = RUNNING
        job._update(started_at=time.monotonic())
        ctx = JobContext(job, self.preview_every, self._preview_fn, timeout=0 if job.action else self.job_timeout)
        try:
            ctx.check()
            if job.action is not None:
                job.result = JobResult(info={"value": job.action()})
            elif job.work is not None:
                job.result = job.work(ctx)
            else:
                job.result = self._runner(job.request, ctx)
        except JobInterrupted:
            job.result.interrupted = True
            job._finish(INTERRUPTED, job.stop_reason)
            return
        except Exception as exc:  # the worker survives every job
            message, field_name = describe_failure(exc)
            job.exception = exc
            if not isinstance(exc, RequestError) and job.action is None:
                log.exception("job %s failed", job.id)
            job._finish(FAILED, message, field_name)
            return
        job._finish(INTERRUPTED if job.result.interrupted else DONE, job.stop_reason)

    def _trim_history(self) -> None:
        while len(self._jobs) > self._history:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.finished:
                break
            del self._jobs[oldest_id]
