"""The out-of-memory wrapper around a batch's stages: retry once with the next stronger memory mode, or say which helps.

The worker survives either way; the user reads which mode to turn on (Settings > Memory). The
model handle switches the mode (``ModelHandle.escalate_memory``) and writes the advice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from webui.generation.service import BatchSkipped, JobFailed, JobInterrupted

if TYPE_CHECKING:
    from webui.generation.plan import Job


def retry_out_of_memory(run: Callable[[], list[Any]], job: Job) -> list[Any]:
    """``run()``; after out of memory, once more with a stronger memory mode (when allowed), else a JobFailed."""
    from webui.memory.planner import is_out_of_memory

    model, req = job.model, job.req
    try:
        return run()
    except (JobInterrupted, BatchSkipped):
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if not model.escalate_memory(req.batch_size, allowed=job.parts.oom_retry):
            raise JobFailed(model.oom_message(job.width, job.height, req.batch_size)) from None
    try:
        return run()
    except Exception as exc:
        if is_out_of_memory(exc):
            model.release_memory()
            raise JobFailed(model.oom_message(job.width, job.height, req.batch_size)) from None
        raise
