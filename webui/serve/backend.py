"""``RayBackend``: the ``webui.backend.Backend`` protocol with the jobs on Ray Serve replicas.

It is a ``LocalBackend`` over the ingress's own services for everything that reads the folders and the
settings (model lists, styles, outputs, settings, extensions); what needs a device goes to the replicas:

- ``submit`` names the job (A1111's ``force_task_id`` or a new id), resolves its checkpoint (the request's,
  else the client's default set with ``load_model``, else the app's next one) and streams it to a
  replica, with the checkpoint's sha256 as Serve's multiplexed model id: a replica that holds the model
  gets it (``webui.serve.deployment``);
- ``job`` / ``wait`` / ``queue`` / ``queue_list`` answer from the ingress's copy of every job (its latest
  snapshot and preview, ``webui.serve.remote_jobs``), across all replicas;
- ``interrupt`` / ``skip`` / ``cancel`` post to the job board, which the replica running the job reads;
- a replica that dies under a job fails that job with a message (or, with ``ray_retry_failed``, runs it
  once more elsewhere when none of its images was finished, so nothing is written twice); the other jobs
  go on and Serve starts a new replica.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from webui.backend.local import LocalBackend
from webui.backend.local_models import family_info, family_label, model_info
from webui.backend.records import (
    ControlResult,
    JobSnapshot,
    LoadedModel,
    LoadReport,
    NotFound,
    QueueFull,
    QueueList,
    QueueState,
    Refused,
)
from webui.generation.requests import RequestError
from webui.serve.remote_jobs import RemoteJob, queue_list, replica_of

if TYPE_CHECKING:
    from webui.app import Services
    from webui.deferred import Deferred
    from webui.serve.cluster import Cluster

log = logging.getLogger(__name__)

MAX_WAITING = 100  # jobs waiting across the cluster before submit answers QueueFull (as the in-process queue)
ARRIVAL_WAIT_S = 2.0  # the longest the dispatcher waits for a job to reach its replica before sending the next
HISTORY = 500  # finished jobs kept for job() / the queue list
REPLICA_GONE = (
    "the replica running this job stopped (its process ended: out of memory, a crash, or it was killed)."
    " Ray Serve starts a new one; the other jobs go on. Send the job again"
)


def _replica_died(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


def _cause(exc: BaseException) -> BaseException:
    """The replica's own exception inside Ray's wrapper (a RayTaskError)."""
    return getattr(exc, "cause", None) or exc


class RayBackend(LocalBackend):
    """See the module docstring. ``cluster`` gives the ``Cluster`` (it waits while the replicas start)."""

    def __init__(self, services: Services, cluster: Deferred[Cluster], retry_failed: bool = False) -> None:
        super().__init__(services)
        self._started = cluster
        self._cluster: Callable[[], Cluster] = cluster.get
        self._retry = retry_failed
        self._jobs: OrderedDict[str, RemoteJob] = OrderedDict()
        self._lock = threading.Lock()
        self._defaults: dict[str, str] = {}  # client -> its default checkpoint (POST /options sd_model_checkpoint)
        self._last_model = ""  # the checkpoint of the latest job, what ``loaded`` reports
        self._outbox: queue.Queue[RemoteJob] = queue.Queue()  # jobs not yet sent to a replica, in order
        self._dispatcher: threading.Thread | None = None

    # --- jobs ---------------------------------------------------------------------------------------

    def _remote(self, job_id: str) -> RemoteJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; it may have finished long ago", "job", job_id)
        return job

    def _position(self, job: RemoteJob) -> int:
        if job.state != "queued":
            return 0
        with self._lock:
            ahead = [j for j in self._jobs.values() if j.state == "queued" and replica_of(j) == replica_of(job)]
        return 1 + ahead.index(job) if job in ahead else 0

    def _add(self, job: RemoteJob) -> None:
        with self._lock:
            if job.id in self._jobs:
                raise RequestError("force_task_id", f"a job with the id {job.id!r} exists already; use a new one")
            if sum(1 for j in self._jobs.values() if j.state == "queued") >= MAX_WAITING:
                raise QueueFull(f"the queue is full ({MAX_WAITING} jobs waiting); try again later")
            self._jobs[job.id] = job
            while len(self._jobs) > HISTORY:
                oldest = next((k for k, j in self._jobs.items() if j.finished), None)
                if oldest is None:
                    break
                del self._jobs[oldest]

    def _checkpoint(self, name: str, client: str) -> Any:
        """The catalog entry a job runs on: the one it names, else the client's default, else the app's next one."""
        catalog = self._services.catalog
        name = name or self._defaults.get(client) or ""
        if not name:
            chosen = super().next_checkpoint()
            if chosen is None:
                raise NotFound("no checkpoint is installed; put one in models/Stable-diffusion", "checkpoint", "")
            name = chosen.name
        try:
            return catalog.find(name, kind="checkpoint")
        except KeyError as exc:
            valid = [e.name for e in catalog.usable("checkpoint")]
            raise NotFound(str(exc.args[0] if exc.args else exc), "checkpoint", name, valid, "sd_model_checkpoint") from None

    def _model_id(self, entry: Any) -> str:
        """Serve's multiplexed model id: the checkpoint's sha256 (its name for a diffusers folder)."""
        digest = None if entry.format == "diffusers" else self._services.hashes.get(entry.path)
        return digest or f"folder:{entry.name}"

    def submit(self, request: Any, source: str = "api", job_id: str | None = None) -> JobSnapshot:
        return self._enqueue(RemoteJob(job_id or uuid.uuid4().hex[:12], "generate", request, source, request))

    def submit_extras(self, request: Any, source: str = "api", job_id: str | None = None) -> JobSnapshot:
        from webui.backend.local_upscale import check

        checked = check(self._services, request)
        return self._enqueue(RemoteJob(job_id or uuid.uuid4().hex[:12], "extras", checked, source, None))

    def _enqueue(self, job: RemoteJob) -> JobSnapshot:
        """Jobs leave for the replicas one at a time, in the order they came (``_dispatcher``): a replica
        queues them in that order, first come first served, as the in-process queue does."""
        self._add(job)
        self._outbox.put(job)
        with self._lock:
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(target=self._dispatch_all, name="ray-dispatch", daemon=True)
                self._dispatcher.start()
        return job.view(None, self._position(job))

    def _dispatch_all(self) -> None:
        """The dispatcher thread: send each job on (its stream is read by a thread of its own)."""
        while True:
            job = self._outbox.get()
            try:
                stream = self._dispatch(job)
            except Exception as exc:  # noqa: BLE001 - the cluster did not start, an unknown checkpoint ...
                self._failed(job, exc)
                continue
            threading.Thread(target=self._follow, args=(job, stream), name=f"ray-job-{job.id}", daemon=True).start()
            # The next job leaves once this one is in its replica's queue: routed side by side, a later job
            # could reach the same replica first. Bounded, so that a slow replica holds back no one for long.
            job.arrived.wait(ARRIVAL_WAIT_S)

    def _dispatch(self, job: RemoteJob) -> Any:
        cluster = self._cluster()
        if job.kind != "generate":
            return cluster.handle.options(stream=True).run.remote(job.kind, job.payload, job.id, job.source)
        entry = self._checkpoint(job.payload.sd_model_checkpoint, job.source)
        job.payload = job.payload.replace(sd_model_checkpoint=entry.name)
        job.model_id = job.model_id or self._model_id(entry)
        self._last_model = entry.name
        handle = cluster.handle.options(stream=True, multiplexed_model_id=job.model_id)
        return handle.run.remote(job.kind, job.payload, job.id, job.source)

    def _follow(self, job: RemoteJob, stream: Any) -> None:
        """Keep the job's snapshots until it ends (the job's own thread); a dead replica as the module says."""
        tries = 2 if self._retry else 1
        while True:
            job.attempts += 1
            try:
                for snapshot, replica in stream:
                    job.update(snapshot, replica)
                if not job.finished:
                    job.fail("the replica ended the job's stream before the job finished; send it again")
                return
            except Exception as exc:  # noqa: BLE001 - every failure ends as the job's message
                if not (_replica_died(exc) and job.attempts < tries and job.images_done == 0 and not job.finished):
                    self._failed(job, exc)
                    return
                log.warning("job %s: its replica died; running it once more on another one", job.id)
                job.restart()
                try:
                    stream = self._dispatch(job)
                except Exception as again:  # noqa: BLE001
                    self._failed(job, again)
                    return

    def _failed(self, job: RemoteJob, exc: BaseException) -> None:
        if job.finished:
            return
        if _replica_died(exc):
            done = job.images_done
            saved = f" The {done} image(s) it finished before are saved." if done else ""
            log.warning("job %s failed: its replica died (%s)", job.id, type(exc).__name__)
            job.fail(REPLICA_GONE + "." + saved)
            return
        cause = _cause(exc)
        message = getattr(cause, "message", None) or f"{type(cause).__name__}: {cause}"
        log.warning("job %s failed: %s", job.id, message)
        job.fail(str(message))

    def job(self, job_id: str, preview_after: int | None = None) -> JobSnapshot:
        job = self._remote(job_id)
        return job.view(preview_after, self._position(job))

    def wait(self, job_id: str, timeout: float, preview_after: int | None = None) -> JobSnapshot:
        job = self._remote(job_id)
        job.wait(timeout)
        return job.view(preview_after, self._position(job))

    def _current(self) -> RemoteJob | None:
        """The job ``/progress`` shows: the running job that started first (None: none runs)."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.state == "running" and not j.finished]
        return min(running, key=lambda j: j.started or j.created) if running else None

    def queue(self, preview: bool = True) -> QueueState:
        current = self._current()
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.state == "queued" and not j.finished)
        snapshot = current.view(-1 if preview else None, 0) if current is not None else None
        return QueueState(snapshot, waiting)

    def queue_list(self, history: int = 50) -> QueueList:
        with self._lock:
            jobs = list(self._jobs.values())
        return queue_list(jobs, history)

    def _post(self, job: RemoteJob, action: str) -> None:
        import ray

        ray.get(self._cluster().board.post.remote(job.id, action), timeout=30)

    def _control(self, action: str, job_id: str | None) -> ControlResult:
        job = self._current() if job_id is None else self._remote(job_id)
        if job is None or job.finished:
            return ControlResult(False, job.id if job is not None else "")
        setattr(job, f"{action}_requested", True)
        self._post(job, action)
        return ControlResult(True, job.id)

    def interrupt(self, job_id: str | None = None) -> ControlResult:
        return self._control("interrupt", job_id)

    def skip(self, job_id: str | None = None) -> ControlResult:
        return self._control("skip", job_id)

    def cancel(self, job_id: str) -> ControlResult:
        job = self._remote(job_id)
        if job.finished:
            raise Refused(f"job {job_id} has finished already ({job.state}); there is nothing to cancel")
        if job.state == "running":
            raise Refused(f"job {job_id} is running; only a waiting job can be cancelled. Stop it with Interrupt")
        self._post(job, "cancel")
        return ControlResult(True, job_id)

    def move_job(self, job_id: str, position: int) -> ControlResult:
        self._remote(job_id)
        raise Refused("on the Ray backend each job waits at the replica that holds its model; jobs are not reordered")

    # --- models: a default per client, no global load ----------------------------------------------

    def load_model(
        self, name: str, timeout: float | None = None, source: str = "model load", client: str = ""
    ) -> LoadReport:
        entry = self._checkpoint(name, client)
        self._defaults[client] = self._last_model = entry.name
        note = "on the Ray backend a replica loads it with the first job that uses it; it is this client's default"
        label = family_label(self._services, entry.family)
        return LoadReport(entry.name, entry.family or "", label, 0.0, False, (note,))

    def unload_model(self, timeout: float | None = None, source: str = "unloading the checkpoint") -> None:
        log.info("unload asked: on the Ray backend each replica keeps the models it is the home of")

    def set_vae(self, name: str | None, timeout: float | None = None, source: str = "VAE switch") -> str:
        return name or "Automatic"  # every request names its VAE; the replica applies it with the job

    def loaded(self) -> LoadedModel | None:
        if not self._last_model:
            return None
        try:
            entry = self._services.catalog.find(self._last_model, kind="checkpoint")
        except KeyError:
            return None
        families = self._services.families
        if not entry.family or entry.family not in families:
            return None
        return LoadedModel(model_info(self._services, entry), family_info(families.get(entry.family)), ())

    def next_checkpoint(self) -> Any:
        name = self._defaults.get("")
        if name:
            try:
                return model_info(self._services, self._services.catalog.find(name, kind="checkpoint"))
            except KeyError:
                pass
        return super().next_checkpoint()

    def device_description(self, wait: bool = True) -> str | None:
        """What runs the jobs; never waits for the replicas to start (``wait=False``: None until they have)."""
        if not self._started.ready():
            return None if not wait else "Ray Serve: the replicas are starting"
        with self._lock:
            replicas = sorted({replica_of(j) for j in self._jobs.values() if j.replica is not None})
        seen = f"; {len(replicas)} replica(s) have run jobs" if replicas else ""
        try:
            return self._cluster().describe() + seen
        except Exception as exc:  # noqa: BLE001 - the cluster did not start: say why
            return f"Ray Serve did not start: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Stop the local Ray cluster this app started (a joined cluster keeps running)."""
        if self._started.ready() and self._started.error() is None:
            self._cluster().shutdown()

    def replica_stats(self) -> dict[str, dict[str, Any]]:
        """Per replica seen: its pid, model changes so far and active checkpoint (the benchmark's swap count)."""
        with self._lock:
            infos = [j.replica for j in self._jobs.values() if j.replica is not None]
        stats: dict[str, dict[str, Any]] = {}
        for info in infos:
            seen = stats.get(info.replica)
            if seen is None or info.model_changes >= seen["model_changes"]:
                stats[info.replica] = {"pid": info.pid, "model_changes": info.model_changes, "active": info.active}
        return stats
