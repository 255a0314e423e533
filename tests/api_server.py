"""A real uvicorn server on a free 127.0.0.1 port for API tests (fake engine or the real one)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def build_api_app(services: Any) -> Any:
    """A FastAPI app with only the /sdapi/v1 router (the composed app adds the Gradio UI)."""
    from fastapi import FastAPI

    from webui.api.sdapi import build_sdapi_router

    app = FastAPI(title="Stable Diffusion web UI", docs_url="/docs")
    app.include_router(build_sdapi_router(services.backend))
    return app


@contextmanager
def serve_api(
    services: Any, app: Any = None, start_timeout: float = 20.0, server_options: dict[str, Any] | None = None
) -> Iterator[str]:
    """Serve ``app`` (default: the API over ``services``) on a free 127.0.0.1 port; yield the base URL.

    A given ``app`` (the composed app with the Gradio UI) runs with its ASGI lifespan on: Gradio
    starts its event queue there, and without it every queued UI event would wait forever.
    """
    import uvicorn

    from webui.security.connections import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # the app's own server settings (slow-client timeouts, connection bound); tests may shorten the timeouts
    config = server_config(
        app or build_api_app(services), "127.0.0.1", lifespan="off" if app is None else "on", **(server_options or {})
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
