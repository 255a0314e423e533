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
    app.include_router(build_sdapi_router(services))
    return app


@contextmanager
def serve_api(services: Any, app: Any = None) -> Iterator[str]:
    """Serve ``app`` (default: the API over ``services``) on a free 127.0.0.1 port; yield the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app or build_api_app(services), log_level="warning", lifespan="off" if app is None else "on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
