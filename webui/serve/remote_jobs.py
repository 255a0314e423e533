"""The ingress's copy of each job sent to a replica: its latest snapshot (streamed from the replica), its
newest preview, which replica runs it, and the queue as the ingress sees it across every replica.

A ``RemoteJob`` has the attributes the queue list reads from a local job (``webui.backend.local_queue``:
id, state, source, request, created, started, ended, progress, error, finished), so the same ETA rule
applies, per replica: the running job's own ETA, plus the estimated runs of the jobs before it there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from webui.backend.local_queue import RATE_JOBS, queue_entry, running_left, sample_units, seconds_per_unit
from webui.backend.records import JobOutcome, JobProgress, JobSnapshot, QueueEntry, QueueList

FINISHED = ("done", "interrupted", "failed")


class RemoteJob:
    def __init__(self, job_id: str, kind: str, payload: Any, source: str, request: Any) -> None:
        self.id, self.kind, self.payload, self.source = job_id, kind, payload, source
        self.request = request  # the GenerationRequest (None for an Extras job), for labels and ETAs
        self.created = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.state = "queued"
        self.error = ""
        self.model_id = ""
        self.replica: Any = None  # webui.serve.deployment.ReplicaInfo of the replica that has it
        self.interrupt_requested = self.skip_requested = False
        self.attempts = 0
        self._snapshot: JobSnapshot | None = None
        self._preview: Any = None
        self._preview_id = 0
        self._done = threading.Event()
        self.arrived = threading.Event()  # its first snapshot came: it is in a replica's queue (or over)
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def progress(self) -> JobProgress:
        snapshot = self._snapshot
        return snapshot.progress if snapshot is not None else JobProgress()

    @property
    def images_done(self) -> int:
        return self.progress.images_done

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    def update(self, snapshot: JobSnapshot, replica: Any) -> None:
        """A snapshot from the replica (its preview kept apart, so that every reader can ask for it)."""
        with self._lock:
            preview = snapshot.progress.preview
            if preview is not None and snapshot.progress.preview_id > self._preview_id:
                self._preview, self._preview_id = preview, snapshot.progress.preview_id
            self._snapshot = replace(snapshot, progress=replace(snapshot.progress, preview=None))
            self.replica = replica
            if snapshot.started is not None:  # the replica's clock: on one machine, the same as ours
                self.started = snapshot.started
            elif snapshot.state == "running" and self.started is None:
                self.started = time.time()
            self.state = snapshot.state
            if snapshot.finished:
                self.ended, self.error = time.time(), snapshot.error
        self.arrived.set()
        if snapshot.finished:
            self._done.set()

    def fail(self, message: str) -> None:
        """The job failed outside a replica's own report (its replica died, the cluster is not there)."""
        with self._lock:
            if self._done.is_set():
                return
            progress = self.progress
            self._snapshot = JobSnapshot(
                id=self.id,
                state="failed",
                source=self.source,
                created=self.created,
                progress=progress,
                error=message,
                n_iter=self._count("n_iter"),
                batch_size=self._count("batch_size"),
                result=JobOutcome(),
            )
            self.state, self.error, self.ended = "failed", message, time.time()
        self.arrived.set()
        self._done.set()

    def restart(self) -> None:
        """Before a retry on another replica: back to queued, nothing of the first try kept."""
        with self._lock:
            self._snapshot, self.replica, self.state, self.started = None, None, "queued", None
            self._preview, self._preview_id = None, 0

    def _count(self, name: str) -> int:
        return int(getattr(self.request, name, 1) or 1) if self.request is not None else 1

    def view(self, preview_after: int | None, position: int) -> JobSnapshot:
        """The snapshot to answer with: the preview only when newer than the caller's ``preview_after``."""
        with self._lock:
            snapshot, preview, preview_id = self._snapshot, self._preview, self._preview_id
        if snapshot is None:
            snapshot = JobSnapshot(
                id=self.id,
                state="queued",
                source=self.source,
                position=position,
                created=self.created,
                n_iter=self._count("n_iter"),
                batch_size=self._count("batch_size"),
            )
        newer = preview_after is not None and preview is not None and preview_id > preview_after
        progress = replace(snapshot.progress, preview=preview if newer else None, preview_id=preview_id)
        return replace(
            snapshot,
            progress=progress,
            interrupt_requested=snapshot.interrupt_requested or self.interrupt_requested,
            skip_requested=snapshot.skip_requested or self.skip_requested,
        )


def replica_of(job: RemoteJob) -> str:
    return job.replica.replica if job.replica is not None else ""


def queue_list(jobs: list[RemoteJob], history: int) -> QueueList:
    """Every waiting and running job, grouped by the replica that has it (those not yet on one last), with
    positions and ETAs within their replica; then up to ``history`` finished ones, newest first."""
    finished = [job for job in reversed(jobs) if job.finished]
    rate = seconds_per_unit(finished[: max(history, RATE_JOBS)])
    groups: dict[str, list[RemoteJob]] = {}
    for job in jobs:
        if not job.finished:
            groups.setdefault(replica_of(job), []).append(job)
    entries: list[QueueEntry] = []
    for name in sorted(groups, key=lambda n: (n == "", n)):
        wait: float | None = 0.0
        group = groups[name]
        for job in (j for j in group if j.state == "running"):
            wait = running_left(job, rate)
            entries.append(queue_entry(job, 0, wait))
        for position, job in enumerate((j for j in group if j.state != "running"), start=1):
            own = 0.0 if job.request is None else (sample_units(job.request) * rate if rate is not None else None)
            wait = wait + own if wait is not None and own is not None else None
            entries.append(queue_entry(job, position, wait))
    done = [queue_entry(job, 0, None) for job in finished[: max(0, history)]]
    return QueueList(jobs=entries, history=done, seconds_per_unit=rate)
