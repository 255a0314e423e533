"""Step statistics of the last job: written by the worker thread, read by web server threads."""

from __future__ import annotations

import threading
from typing import Any


class StepStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job_id = ""
        self._steps: list[dict[str, Any]] = []

    def record(self, event: Any) -> None:
        """One denoising step: a new job id starts a new record."""
        latents = event.latents
        row = {
            "step": event.step,
            "total_steps": event.total_steps,
            "pass": event.pass_label,
            "std": round(float(latents.float().std()), 5),
            "mean": round(float(latents.float().mean()), 5),
        }
        with self._lock:
            if event.job_id != self._job_id:
                self._job_id, self._steps = event.job_id, []
            self._steps.append(row)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"job_id": self._job_id, "steps": len(self._steps), "per_step": [dict(r) for r in self._steps]}

    def markdown(self) -> str:
        snap = self.snapshot()
        if not snap["steps"]:
            return "No job has run yet."
        rows = [
            f"| {r['pass']} | {r['step']}/{r['total_steps']} | {r['std']} | {r['mean']} |" for r in snap["per_step"]
        ]
        head = f"Job `{snap['job_id']}`: {snap['steps']} steps\n\n| pass | step | latent std | latent mean |\n|---|---|---|---|"
        return "\n".join([head, *rows])
