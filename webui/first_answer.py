"""Call a function once, after the app has sent its first complete HTTP response.

The app imports torch and diffusers on a background thread (``webui.app``'s warm-up). Python runs one
thread at a time, so that import, started as the server began to listen, slowed the first page by up to
a second. ``FirstAnswer(app, then)`` wraps the ASGI app and calls ``then`` once the first answer is out
(the page, or whatever a client asked for first); ``webui.app.serve`` also calls it when nobody asks
for anything soon after the server listens.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]


class FirstAnswer:
    def __init__(self, app: Any, then: Callable[[], Any]) -> None:
        self.app = app
        self._then = then
        self._called = threading.Event()

    def _call_once(self) -> None:
        if not self._called.is_set():
            self._called.set()
            self._then()

    async def __call__(
        self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or self._called.is_set():
            await self.app(scope, receive, send)
            return

        async def send_then_call(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._call_once()

        await self.app(scope, receive, send_then_call)
