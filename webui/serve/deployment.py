"""The Serve deployment: each replica is today's worker (its own services, model manager, RAM cache and
generation queue on one device), and ``build_app`` for a Serve config file (``deploy/serve_config.yaml``).

A job reaches a replica as one streaming call, ``run``: the replica queues it on its own generation
worker and streams the job's snapshots (progress, previews, the result) back until it ends. The call
carries the checkpoint's hash as Serve's multiplexed model id: ``home`` (``@serve.multiplexed``, around the
load: the job that follows loads the checkpoint on the worker) makes the replica a home of that model, and
the router (``webui.serve.router``) then sends that id's jobs to the replicas that hold it, so a mixed stream
of models stops swapping once each model has a home. Control actions come
from the job board (``webui.serve.board``) while the stream waits between snapshots.

Imports ``ray.serve`` (the ``ray`` extra): only ``webui.serve.cluster`` and Serve itself import this.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from webui.serve.board import JobBoard

log = logging.getLogger(__name__)

APP_NAME = "webui"  # the Serve application
DEPLOYMENT_NAME = "Replica"
NAMESPACE = "webui"  # the Ray namespace of the board (and of the ingress's driver)
BOARD_NAME = "webui-job-board"
# A replica takes this many jobs at once and queues them on its own worker: a job for a model it holds is
# never turned away to a replica without it (Serve's router falls back to another replica only when the
# replicas holding the model are full).
MAX_ONGOING = 100
SNAPSHOT_WAIT_S = 0.2  # the longest a running job's stream waits between two looks at it
# What ``build_app`` reads from a Serve config file's ``args`` (see deploy/serve_config.yaml).
BUILD_ARGS = ("replicas", "replica_threads", "gpus_per_replica", "models_per_replica", "config_file", "base_dir")


@dataclass(frozen=True)
class ReplicaInfo:
    """Which replica ran a job, as the ingress records it."""

    replica: str  # Serve's replica tag
    pid: int
    model_changes: int  # how often this replica's active checkpoint changed (its first load included): ModelManager.switches
    active: str  # the checkpoint it holds active now ("" none)


class ModelHome:
    """What Serve's multiplexed cache holds for a checkpoint: its name. The weights are the model manager's
    (its RAM cache, budgeted in bytes); Serve's count only decides where jobs go."""

    def __init__(self, model_id: str, name: str) -> None:
        self.model_id, self.name = model_id, name


def board_actor() -> Any:
    """The cluster's one job board (made by whoever asks first: the ingress or a replica)."""
    actor = ray.remote(JobBoard).options(
        name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", num_cpus=0
    )
    return actor.remote()


def _changed(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return True
    strip = lambda s: (s.state, s.position, replace(s.progress, preview=None), s.interrupt_requested, s.skip_requested)  # noqa: E731
    return strip(a) != strip(b) or b.progress.preview is not None


class ReplicaCore:
    """A replica's work; ``replica_class`` adds the multiplexed ``home`` with the configured model count."""

    def __init__(self, settings: Any, base_dir: str, threads: int) -> None:
        from webui.app import build_services, prepare_environment

        prepare_environment(settings)
        self.services = build_services(settings, Path(base_dir))
        warm_up = self.services.warm_up
        if warm_up is not None:
            warm_up.start().get()  # torch, diffusers and the device, before the first job
        if threads:
            import torch

            torch.set_num_threads(threads)
        generation = self.services.generation
        assert generation is not None and self.services.backend is not None
        generation.start()
        self.backend = self.services.backend
        self.board = board_actor()
        try:
            self.tag = str(serve.get_replica_context().replica_tag)
        except Exception:  # noqa: BLE001 - outside Serve (a test building one directly)
            self.tag = f"pid {os.getpid()}"
        self._names: dict[str, str] = {}  # model id -> checkpoint name, from the jobs that named it
        log.info("replica %s ready (pid %d, %s)", self.tag, os.getpid(), self.backend.device_description())

    def info(self) -> ReplicaInfo:
        manager = self.services.manager
        entry = manager.current_entry
        return ReplicaInfo(self.tag, os.getpid(), int(manager.switches), entry.name if entry is not None else "")

    async def _load_home(self, model_id: str) -> ModelHome:
        """Make this replica a home of the checkpoint. The load itself is the job's first part, on the
        generation worker in the job's turn: loading here, beside the queue, would let jobs that came later
        for another model slip in between (a swap more, and not first come first served)."""
        return ModelHome(model_id, self._names[model_id])

    def _apply(self, action: str, job_id: str) -> None:
        from webui.backend.records import BackendError

        try:
            if action == "cancel":
                self.backend.cancel(job_id)
            else:
                getattr(self.backend, action)(job_id)
        except BackendError as exc:  # it started (cancel) or ended meanwhile
            log.info("job %s: %s not done: %s", job_id, action, exc)

    async def run(self, kind: str, payload: Any, job_id: str, source: str) -> AsyncIterator[tuple[Any, ReplicaInfo]]:
        """Queue a job here and stream ``(snapshot, replica info)`` until it has finished."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            self._names[model_id] = payload.sd_model_checkpoint
            await self.home(model_id)  # type: ignore[attr-defined]
        submit = self.backend.submit if kind == "generate" else self.backend.submit_extras
        last = submit(payload, source, job_id)
        yield last, self.info()
        preview_id, finished = 0, False
        try:
            while not finished:
                for action in await self.board.take.remote(job_id, SNAPSHOT_WAIT_S):
                    self._apply(action, job_id)
                snapshot = self.backend.job(job_id, preview_after=preview_id)
                preview_id = max(preview_id, snapshot.progress.preview_id if snapshot.progress.preview is not None else 0)
                finished = snapshot.finished
                if finished or _changed(last, snapshot):
                    last = snapshot
                    yield snapshot, self.info()
        finally:
            if not finished:  # the ingress went away (or cancelled the call): the job must not run on unseen
                self.backend.interrupt(job_id)
            self.board.forget.remote(job_id)

    def check_health(self) -> None:
        """Serve's health check: a replica whose generation worker died is restarted."""
        generation = self.services.generation
        thread = getattr(generation, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the generation worker of this replica has stopped")


def replica_class(models_per_replica: int) -> type:
    """The deployment class, with Serve's model multiplexing bounded to ``models_per_replica`` homes."""

    class Replica(ReplicaCore):
        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def home(self, model_id: str) -> ModelHome:
            return await self._load_home(model_id)

    return Replica


def replica_deployment(
    settings: Any,
    base_dir: str,
    *,
    replicas: int,
    threads: int,
    gpus_per_replica: float,
    models_per_replica: int,
) -> Any:
    """The bound Serve application: ``replicas`` copies of ``Replica``, each with its CPU/GPU share."""
    from webui.serve.cluster import python_path

    env = {"PYTHONPATH": python_path(base_dir)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    options = {
        "num_cpus": threads if not gpus_per_replica else 1,
        "num_gpus": gpus_per_replica,
        "runtime_env": {"env_vars": env},
    }
    from ray.serve.config import RequestRouterConfig

    deployment = serve.deployment(
        replica_class(models_per_replica),
        request_router_config=RequestRouterConfig(request_router_class="webui.serve.router:ModelHomeRouter"),
        name=DEPLOYMENT_NAME,
        num_replicas=replicas,
        max_ongoing_requests=MAX_ONGOING,
        ray_actor_options=options,
        health_check_period_s=2,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=5,
    )
    return deployment.bind(settings, str(base_dir), threads)


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder (``import_path: webui.serve.deployment:build_app``): the replicas read the
    settings of ``config_file`` (relative to ``base_dir``, the project folder on every node)."""
    from webui.config import load_settings

    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ValueError(f"unknown args {', '.join(unknown)} for webui.serve.deployment:build_app; these are: {', '.join(BUILD_ARGS)}")
    base = str(args.get("base_dir") or Path(__file__).resolve().parents[2])
    argv = ["--config-file", str(args["config_file"])] if args.get("config_file") else []
    settings, _ = load_settings(argv, base_dir=Path(base))
    replicas = int(args.get("replicas", 1))
    if replicas < 1:
        raise ValueError("replicas must be 1 or more in a Serve config file (one per GPU of the cluster)")
    return replica_deployment(
        settings,
        base,
        replicas=replicas,
        threads=int(args.get("replica_threads", 0)),
        gpus_per_replica=float(args.get("gpus_per_replica", 0)),
        models_per_replica=int(args.get("models_per_replica", settings.models_per_replica)),
    )
