"""Start or join the Ray cluster and deploy (or find) the replicas; what ``RayBackend`` sends jobs through.

``--ray-address ""`` (the default) starts a local cluster on this machine (no dashboard); any other
address joins that cluster. A Serve application named ``webui`` already running there (deployed from
``deploy/serve_config.yaml``) is used as it is; otherwise it is deployed from this app's settings:
``--replicas`` (0: one per GPU the cluster has, else one), each with one GPU, or on a machine without
GPUs ``--replica-threads`` CPU threads (0: the CPU cores shared out).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def python_path(base_dir: Path | str) -> str:
    """PYTHONPATH for Ray's worker processes: the project folder first, so that they import this app."""
    return os.pathsep.join(p for p in (str(base_dir), os.environ.get("PYTHONPATH", "")) if p)


@dataclass(frozen=True)
class Layout:
    """How many replicas, and each one's share of the machine."""

    replicas: int
    threads: int
    gpus_per_replica: float

    def describe(self) -> str:
        each = "1 GPU" if self.gpus_per_replica else f"{self.threads} CPU thread{'s' if self.threads != 1 else ''}"
        return f"{self.replicas} replica{'s' if self.replicas != 1 else ''}, {each} each"


def plan_layout(replicas: int, threads: int, gpus: float, cpus: float) -> Layout:
    """``replicas``/``threads`` as asked (0: chosen): one replica per GPU, else one; CPU threads shared out."""
    whole_gpus = int(gpus)
    count = replicas or max(1, whole_gpus)
    use_gpus = 1.0 if whole_gpus >= count else 0.0  # a replica per GPU, or all on the CPU
    share = threads or max(1, int(cpus) // count)
    return Layout(count, share, use_gpus)


@dataclass
class Cluster:
    """The replicas' handle, the job board, and what was deployed."""

    handle: Any  # ray.serve DeploymentHandle of the Replica deployment
    board: Any  # the JobBoard actor
    layout: Layout | None  # None: an application deployed by someone else (a Serve config file)
    started_here: bool  # a local cluster this process started (and stops)

    def describe(self) -> str:
        what = self.layout.describe() if self.layout is not None else "replicas from the cluster's Serve config"
        where = "a local Ray cluster" if self.started_here else "the Ray cluster joined"
        return f"Ray Serve on {where}: {what}"

    def shutdown(self) -> None:
        import ray
        from ray import serve

        if self.started_here:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


def _init_ray(settings: Any, base_dir: Path, cpus: int | None) -> bool:
    """Connect this process to Ray; True when it started a local cluster."""
    import ray

    from webui.serve.deployment import NAMESPACE

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": python_path(base_dir)}}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, runtime_env=env, logging_level=logging.WARNING)
        return False
    ray.init(
        num_cpus=cpus,
        namespace=NAMESPACE,
        include_dashboard=False,
        runtime_env=env,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True


def _existing_app() -> Any:
    """The handle of a running ``webui`` application (deployed from a config file), or None."""
    from ray import serve

    from webui.serve.deployment import APP_NAME

    try:
        status = serve.status()
    except Exception:  # noqa: BLE001 - Serve is not running on the cluster yet
        return None
    if APP_NAME not in status.applications:
        return None
    return serve.get_app_handle(APP_NAME)


def start_ray(settings: Any, base_dir: Path) -> bool:
    """Connect this process to Ray (a local cluster unless ``ray_address``); True when it started one.

    Call it on the main thread (or one that lives as long as the app): Ray's processes are started with
    Linux's parent-death signal, which fires when the *thread* that started them ends.
    """
    import ray
    import ray.serve  # noqa: F401  (here, not on the deploy thread: its pydantic imports race gradio's there)

    wanted_cpus = None
    if not settings.ray_address:  # a local cluster: enough CPUs for the replicas asked for
        wanted_cpus = max(os.cpu_count() or 1, (settings.replicas or 1) * (settings.replica_threads or 1))
    started = _init_ray(settings, base_dir, wanted_cpus)
    # Ray builds its serialization context (importing pydantic.v1) on the first object it sends: here, while
    # nothing else imports, not on the deploy thread while the page's gradio imports pydantic (a KeyError).
    ray.put(None)
    return started


def deploy(settings: Any, base_dir: Path, started: bool) -> Cluster:
    """Find or deploy the replicas on the cluster ``start_ray`` connected to (blocks until they are ready)."""
    import ray
    from ray import serve

    from webui.serve.deployment import APP_NAME, board_actor, replica_deployment

    board = board_actor()
    handle = None if started else _existing_app()
    if handle is not None:
        log.info("using the Serve application %r already running on the cluster", APP_NAME)
        return Cluster(handle, board, None, started)
    resources = ray.cluster_resources()
    layout = plan_layout(settings.replicas, settings.replica_threads, resources.get("GPU", 0.0), resources.get("CPU", 1.0))
    log.info("deploying %s", layout.describe())
    serve.start(proxy_location="Disabled")  # our own server is the ingress; Serve opens no HTTP port
    worker = settings.with_updates(backend="local")  # a replica runs its jobs in its own process
    app = replica_deployment(
        worker,
        str(base_dir),
        replicas=layout.replicas,
        threads=layout.threads,
        gpus_per_replica=layout.gpus_per_replica,
        models_per_replica=settings.models_per_replica,
    )
    handle = serve.run(app, name=APP_NAME, route_prefix=None)
    return Cluster(handle, board, layout, started)
