"""The settings and flags of the Ray Serve backend (``--backend ray``, issue 17).

Pure standard library, like ``webui.config`` (which merges these into ``Settings``): ``launch.py
--help`` works on a bare Python, and the launcher reads ``--backend`` before anything is installed
to know whether to install the ``ray`` extra.
"""

from __future__ import annotations

import argparse
from typing import Any

from webui.config_checks import not_negative, one_of

BACKENDS = ("local", "ray")

# setting -> argparse dest (the same name): what ``webui.config`` copies from the command line.
SERVE_CLI_FIELDS = ("backend", "replicas", "replica_threads", "ray_address", "ray_retry_failed", "models_per_replica")

SERVE_CHECKS: dict[str, Any] = {
    "backend": one_of("--backend", BACKENDS),
    "replicas": not_negative("replicas", "0 (one per GPU found, else one) or more"),
    "replica_threads": not_negative("replica_threads", "0 (the CPU cores shared out) or more"),
    "models_per_replica": lambda value: "" if value >= 1 else f"models_per_replica must be 1 or more, got {value}",
}


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--replicas``, ``--replica-threads``, ``--ray-address``, ``--ray-retry-failed``,
    ``--models-per-replica``."""
    g = p.add_argument_group("more than one GPU (Ray Serve)")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        help="where jobs run: local (default, in this process) or ray (Ray Serve replicas, one per GPU;"
        " the launcher installs the ray extra)",
    )
    g.add_argument(
        "--replicas",
        type=int,
        help="with --backend ray: how many workers (default 0: one per GPU found, one on a machine without)",
    )
    g.add_argument(
        "--replica-threads",
        type=int,
        help="with --backend ray: torch threads of each CPU replica (default 0: the CPU cores shared out)",
    )
    g.add_argument(
        "--ray-address",
        help="with --backend ray: join this Ray cluster (auto, or ray://head:10001) instead of starting one here",
    )
    g.add_argument(
        "--ray-retry-failed",
        action="store_const",
        const=True,
        help="with --backend ray: run a job once more on another replica when its replica died under it"
        " (default: the job fails with a message)",
    )
    g.add_argument(
        "--models-per-replica",
        type=int,
        help="with --backend ray: checkpoints a replica is the home of at once (default 1: each model gets its own"
        " replica while there are enough; the RAM cache still bounds the memory they take)",
    )
