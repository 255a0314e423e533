"""Connections that cannot be held open for free: a deadline for the headers, an idle limit for the body.

uvicorn closes an idle keep-alive connection after a few seconds, but it has no deadline for a request
that arrives slowly: a client that sends a header byte now and then (slowloris) holds a connection, and
400 of them were all still held after 20 s. ``guarded_h11_protocol`` is uvicorn's h11 protocol class
with two timers of its own (uvicorn's documented way to choose the protocol is ``Config(http=...)``):

* the request line and headers must arrive within ``header_timeout`` seconds of the connection (or of
  the previous response on a kept-alive connection);
* while a body arrives, ``body_idle_timeout`` seconds without a byte close the connection (a 100 MB
  upload at any real speed keeps sending).

Once a request is complete the timers stop: a long generation that the client waits for is not cut.
``server_config`` builds the uvicorn config the app (and the tests' server) runs with: this protocol,
a bound on concurrent connections, and the usual keep-alive.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 1024  # beyond this uvicorn answers 503 instead of starting more work
KEEP_ALIVE = 5


def guarded_h11_protocol(header_timeout: float = HEADER_TIMEOUT, body_idle_timeout: float = BODY_IDLE_TIMEOUT) -> type:
    """A subclass of uvicorn's ``H11Protocol`` that drops connections whose request arrives too slowly."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._slow_timer = None
            self._arm(header_timeout, "its headers")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self._arm(body_idle_timeout, "its body")  # reset by every chunk
            elif state is not h11.IDLE:  # the request is complete (or the connection changed protocol)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm(header_timeout + self.timeout_keep_alive, "its next request's headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._slow_timer = self.loop.call_later(seconds, self._too_slow, what, seconds)

        def _disarm(self) -> None:
            timer = getattr(self, "_slow_timer", None)
            if timer is not None:
                timer.cancel()
                self._slow_timer = None

        def _too_slow(self, what: str, seconds: float) -> None:
            self._slow_timer = None
            if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                return
            log.info("closed a connection from %s that did not send %s within %g s", self.client, what, seconds)
            self.transport.close()

    return GuardedH11Protocol


def server_config(
    app: Any,
    host: str,
    port: int | None = None,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_idle_timeout: float = BODY_IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    **options: Any,
) -> Any:
    """``uvicorn.Config`` for ``app`` with the guarded protocol and the connection bound."""
    import uvicorn

    kwargs: dict[str, Any] = {
        "host": host,
        "log_level": "warning",
        "timeout_graceful_shutdown": 2,
        "timeout_keep_alive": KEEP_ALIVE,
        "limit_concurrency": max_connections,
        "http": guarded_h11_protocol(header_timeout, body_idle_timeout),
        **options,
    }
    if port is not None:
        kwargs["port"] = port
    return uvicorn.Config(app, **kwargs)
