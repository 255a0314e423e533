"""Out of memory during a batch: retry once with the next stronger memory mode, or say which mode helps.

The worker survives either way; the user reads which mode to turn on (Settings > Memory).
"""

from __future__ import annotations

import logging
from typing import Any

from webui.generation.service import BatchSkipped, JobFailed, JobInterrupted

log = logging.getLogger(__name__)


def run_guarded(engine: Any, job: Any, batch: list[tuple[int, int]], ctx: Any) -> list[Any]:
    from webui.memory.planner import is_out_of_memory

    try:
        return engine._run_batch(job, batch, ctx)
    except (JobInterrupted, BatchSkipped):
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if not escalate_memory(engine, job):
            raise JobFailed(message(engine, job)) from None
    try:
        return engine._run_batch(job, batch, ctx)
    except Exception as exc:
        if is_out_of_memory(exc):
            release(engine)
            raise JobFailed(message(engine, job)) from None
        raise


def release(engine: Any) -> None:
    from webui.memory.apply import release_memory

    release_memory(engine.manager.device.device)


def escalate_memory(engine: Any, job: Any) -> bool:
    """Switch the model to the next stronger memory mode (when allowed and one is left)."""
    from webui.memory.planner import escalate

    release(engine)
    manager = engine.manager
    registry = getattr(manager, "memory_registry", None)
    if not engine.oom_retry or registry is None:
        return False
    new = escalate(manager.memory_plan, registry, job.family, manager.device.device, batch_size=job.req.batch_size)
    if new is None:
        return False
    log.warning("out of memory: retrying with memory modes %s", new.describe())
    manager.set_memory_plan(new)
    return True


def message(engine: Any, job: Any) -> str:
    from webui.memory.planner import oom_message

    manager = engine.manager
    registry = getattr(manager, "memory_registry", None)
    if registry is None:
        return "Out of memory. Use a smaller size or batch size; the app keeps running."
    return oom_message(
        manager.memory_plan,
        registry,
        job.family,
        manager.device.device,
        width=job.width,
        height=job.height,
        batch_size=job.req.batch_size,
    )
