"""The terminal's view of the job queue: a progress bar per job (tqdm, on stderr) and a line when it ends.

A1111 users watch the console: a bar per job with its steps and speed, then a line saying what
came out. ``ConsoleProgress.watch(job)`` follows one job from the progress it publishes (the
generation worker calls it for every job it runs); ``JobBar.close()`` ends the bar and logs the
line. The bar is drawn only on a terminal (``enabled=None``), so logs of servers and tests get the
one line per job and no carriage-return noise; nothing here can fail a job.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

log = logging.getLogger(__name__)


class JobBar:
    """One job's bar (or none), updated from the job's ``Progress`` snapshots."""

    def __init__(self, job: Any, stream: IO[str] | None, enabled: bool) -> None:
        self.job = job
        self.started = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            task = getattr(job.request, "task", "job")
            self.bar = tqdm(
                total=None, desc=f"{task} {job.number}", unit="step", file=stream, leave=True
            )

    def update(self, progress: Any) -> None:
        bar = self.bar
        if bar is None:
            return
        try:
            if progress.total_steps and bar.total != progress.total_steps:
                bar.total = progress.total_steps
            if progress.done_steps != bar.n:
                bar.update(progress.done_steps - bar.n)
        except Exception:  # noqa: BLE001 - a console bar must never fail a job
            log.debug("console progress bar failed", exc_info=True)

    def close(self) -> None:
        """End the bar and log what the job did (one line)."""
        if self.bar is not None:
            try:
                self.bar.close()
            except Exception:  # noqa: BLE001
                log.debug("console progress bar failed", exc_info=True)
        log.info("%s", finished_line(self.job, time.monotonic() - self.started))


def finished_line(job: Any, seconds: float) -> str:
    """``txt2img job 3 done: 2 images in 4.1 s (20 steps, 4.9 steps/s)``, or why it did not finish."""
    task = getattr(job.request, "task", "job")
    head = f"{task} job {job.number} ({job.source})"
    images = len(job.result.images)
    made = f"{images} image{'s' if images != 1 else ''} in {seconds:.1f} s"
    steps = job.progress.done_steps
    speed = f" ({steps} steps, {steps / seconds:.1f} steps/s)" if steps and seconds > 0 else ""
    if job.state == "failed":
        return f"{head} failed after {seconds:.1f} s: {job.error}"
    if job.state == "interrupted":
        return f"{head} interrupted: {made}{speed}" + (f"; {job.error}" if job.error else "")
    return f"{head} done: {made}{speed}"


class ConsoleProgress:
    """Makes a ``JobBar`` per job; ``enabled``: draw bars (None: only when ``stream`` is a terminal)."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = enabled

    def _draws(self, stream: IO[str]) -> bool:
        if self.enabled is not None:
            return self.enabled
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):
            return False

    def watch(self, job: Any) -> JobBar:
        """A bar for ``job``, fed by its progress updates from now on."""
        stream = self.stream if self.stream is not None else sys.stderr
        bar = JobBar(job, stream, self._draws(stream))
        job.on_progress = bar.update
        return bar
