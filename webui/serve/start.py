"""``build_ray_backend``: what ``webui.app`` builds for ``--backend ray`` (needs no ``ray`` to import)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.config_checks import SettingsError
from webui.deferred import Deferred

if TYPE_CHECKING:
    from webui.app import Services

RAY_MISSING = (
    "--backend ray needs the ray extra (Ray Serve): start with python launch.py --backend ray, which installs it,"
    " or pip install 'ray[serve]' into this environment"
)


def build_ray_backend(services: Services, root: Path) -> Any:
    """The jobs on Ray Serve replicas: Ray starts (or is joined) here, on the calling thread (the main one, see
    ``webui.serve.cluster.start_ray``), and the replicas are deployed behind while the page is built and served.
    ``root``: the project folder the replicas import the app from."""
    if importlib.util.find_spec("ray") is None:
        raise SettingsError(RAY_MISSING)
    from webui.serve.backend import RayBackend
    from webui.serve.cluster import deploy, start_ray

    settings = services.settings
    started = start_ray(settings, root)
    cluster = Deferred(lambda: deploy(settings, root, started), name="ray-serve").start()
    services.backend = RayBackend(services, cluster, settings.ray_retry_failed)
    return services.backend
