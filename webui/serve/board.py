"""The job board: how interrupt, skip and cancel reach the replica that holds a job.

Serve's handles route a call to some replica; they cannot address the one running a given job. So
the ingress posts a job's control actions here, and the replica that runs the job takes them: its
stream of snapshots for the job waits on ``take`` between snapshots (a long poll that is also its
pause), so an action arrives within one wait. Actions posted before the job reached a replica wait
here until it does (an interrupted queued job then never runs).

A plain class: ``cluster`` makes it a Ray actor (async, no CPU of its own). It holds nothing else.
"""

from __future__ import annotations

import asyncio

ACTIONS = ("interrupt", "skip", "cancel")
MAX_JOBS = 10_000  # jobs with actions not yet taken that are kept (the oldest are dropped past it)


class JobBoard:
    def __init__(self) -> None:
        self._actions: dict[str, list[str]] = {}
        self._posted: dict[str, asyncio.Event] = {}

    def _event(self, job_id: str) -> asyncio.Event:
        event = self._posted.get(job_id)
        if event is None:
            event = self._posted[job_id] = asyncio.Event()
        return event

    async def post(self, job_id: str, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown job action {action!r}; these are: {', '.join(ACTIONS)}")
        actions = self._actions.setdefault(job_id, [])
        if action not in actions:
            actions.append(action)
        while len(self._actions) > MAX_JOBS:
            oldest = next(iter(self._actions))
            self.forget_now(oldest)
        self._event(job_id).set()

    async def take(self, job_id: str, timeout: float) -> list[str]:
        """The actions posted for the job since the last take, waiting up to ``timeout`` s for one."""
        if not self._actions.get(job_id):
            try:
                await asyncio.wait_for(self._event(job_id).wait(), timeout)
            except asyncio.TimeoutError:
                pass
        actions = self._actions.pop(job_id, [])
        event = self._posted.get(job_id)
        if event is not None:
            event.clear()
        return actions

    def forget_now(self, job_id: str) -> None:
        self._actions.pop(job_id, None)
        event = self._posted.pop(job_id, None)
        if event is not None:
            event.set()  # a take still waiting returns at once

    async def forget(self, job_id: str) -> None:
        """The job has finished: drop what is left of it."""
        self.forget_now(job_id)

    async def pending(self) -> int:
        return len(self._actions)
