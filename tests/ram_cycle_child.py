"""Run by tests/test_ram_cycle_full_size.py in a fresh process: cycle checkpoints through a budgeted RAM cache.

    python tests/ram_cycle_child.py MODELS_DIR CACHE_DIR BUDGET_GIB PRECISION NAME [NAME ...]

Prints one JSON object: the resident set size (psutil) before the first load, after each load, and the
process's peak (``ru_maxrss``, exact, kernel-kept), with the cache's usage after each load. A fresh process
makes both numbers the manager's alone: nothing from other tests is resident or counted in the peak.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
GIB = 1024**3


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def main(argv: list[str]) -> int:
    models, cache, budget_gib, precision, *names = argv
    # what the first load would import anyway, so that the baseline is the app's, not the first model's
    import diffusers  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    from webui.families.registry import default_families
    from webui.models.catalog import ModelCatalog
    from webui.models.devices import DeviceChoice
    from webui.models.manager import ModelManager

    logging.basicConfig(level=logging.WARNING)
    evicted: list[str] = []

    class Evictions(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("evicted "):
                evicted.append(record.getMessage())

    manager_log = logging.getLogger("webui.models.manager")
    manager_log.setLevel(logging.INFO)
    manager_log.addHandler(Evictions())
    catalog = ModelCatalog(Path(models))
    catalog.refresh()
    manager = ModelManager(
        catalog,
        DeviceChoice("cpu", precision, "test"),
        Path(cache),
        default_families(),
        ram_cache_models=len(names),  # the count never binds: the GiB budget does
        ram_cache_gib=float(budget_gib),
    )
    out = {
        "baseline_rss": rss(),
        "families": {e.name: e.family for e in catalog.usable("checkpoint")},
        "estimates": {n: manager.estimate_bytes(n) for n in dict.fromkeys(names)},
        "steps": [],
    }
    for name in names:
        report = manager.load(name)
        usage = manager.ram_cache_usage()
        out["steps"].append(
            {
                "name": name,
                "from_cache": report.from_cache,
                "seconds": report.seconds,
                "rss": rss(),
                "cached": manager.cached_names(),
                "cache_bytes": usage["bytes"],
                "active_bytes": usage["active_bytes"],
            }
        )
    out["budget_bytes"] = manager.ram_cache_usage()["budget_bytes"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss"] = peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
    out["evicted"] = evicted
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
