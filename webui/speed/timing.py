"""One way to time alternatives: each case in turn, best of a few rounds, after an untimed warm-up round.

Taking turns means that other load on the machine (a shared VM, a browser) hits every case alike;
the best round is the one least disturbed. The warm-up round pays kernel selection and caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


def cuda_sync(device: Any) -> Callable[[], None]:
    """What to call around a timed region on ``device``: ``torch.cuda.synchronize`` on CUDA, else nothing."""
    if getattr(device, "type", str(device)) != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


def best_ms(
    cases: Mapping[K, Callable[[], Any]],
    rounds: int,
    *,
    before: Callable[[K], Any] | None = None,
    sync: Callable[[], None] = lambda: None,
) -> dict[K, float]:
    """Milliseconds of the fastest of ``rounds`` runs of each case; ``before(key)`` runs untimed first."""
    best = {key: float("inf") for key in cases}
    for r in range(rounds + 1):  # round 0 warms up
        for key, run in cases.items():
            if before is not None:
                before(key)
            sync()
            start = time.perf_counter()
            run()
            sync()
            if r:
                best[key] = min(best[key], time.perf_counter() - start)
    return {key: seconds * 1e3 for key, seconds in best.items()}
