"""Failed logins slow down per client: guessing passwords at 424 a second is no longer possible.

``LoginThrottle`` counts wrong passwords per client address. The first ``free`` attempts cost nothing
(people mistype); the ``free``-th failure locks the client out for ``base_delay`` seconds, and each one
after it for twice as long as the last, up to ``max_delay``. While locked, every login attempt from that client, right or
wrong, is answered 429 with ``Retry-After`` and never compared (so a lock-out cannot be used to test
passwords). A success clears the count; counts older than ``forget_after`` seconds are forgotten, and at
most ``max_clients`` addresses are remembered.

It guards Gradio's login form (``LoginThrottleMiddleware``, ``POST /login``) and the API's HTTP basic
auth (``webui.security.auth.ApiAuthMiddleware``) with one shared throttle.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.security.site_guard import send_json_error

LOGIN_PATHS = ("/login", "/login/")


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        free: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        forget_after: float = 900.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base_delay, self.max_delay = free, base_delay, max_delay
        self.forget_after, self.max_clients, self.clock = forget_after, max_clients, clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            record = self._current(client)
            return max(0.0, record.locked_until - self.clock()) if record else 0.0

    def failed(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            record = self._current(client) or _Record()
            record.failures += 1
            record.last = now
            beyond = record.failures - self.free + 1  # the (free+1)-th attempt already waits
            if beyond > 0:
                record.locked_until = now + min(self.max_delay, self.base_delay * 2 ** (beyond - 1))
            self._records[client] = record
            self._records.move_to_end(client)
            while len(self._records) > self.max_clients:
                self._records.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._records.pop(client, None)

    def _current(self, client: str) -> _Record | None:
        record = self._records.get(client)
        if record is not None and self.clock() - record.last > self.forget_after:
            del self._records[client]
            return None
        return record


def client_of(scope: dict) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def send_throttled(send: Any, wait: float) -> None:
    seconds = max(1, math.ceil(wait))
    await send_json_error(
        send,
        429,
        "TooManyAttempts",
        f"too many wrong passwords from this address; wait {seconds} s before trying again",
        [(b"retry-after", str(seconds).encode())],
    )


class LoginThrottleMiddleware:
    """ASGI middleware: Gradio's ``POST /login`` answers 429 while the client is locked out."""

    def __init__(self, app: Any, throttle: LoginThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        client = client_of(scope)
        wait = self.throttle.retry_after(client)
        if wait > 0:
            await send_throttled(send, wait)
            return
        status: list[int] = []

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] == 200:
            self.throttle.succeeded(client)
        elif status and status[0] in (400, 401, 403):
            self.throttle.failed(client)
