"""Serve the composed app (API + Gradio UI) for the browser tests: ``tests.api_server.serve_api`` with the lifespan on."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from tests.api_server import serve_api

START_TIMEOUT_S = 60


def serve_app(app: Any) -> AbstractContextManager[str]:
    """Run ``app`` under uvicorn in a thread; the context yields its base URL and stops it afterwards."""
    return serve_api(None, app=app, start_timeout=START_TIMEOUT_S)
