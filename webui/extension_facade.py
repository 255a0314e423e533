"""``ExtensionFacade``: the app as extensions see it, handed to ``webui_ui_tabs`` and ``webui_app_started``.

It is narrow on purpose: the backend (``webui.backend.Backend``: jobs, models, options, all plain
data), the settings and the extension options read-only, and ``add_route`` for API routes. No
model manager, engine, pipeline or job queue: what an extension builds on this keeps working when
the backend runs in other processes. See docs/EXTENSIONS.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webui.backend import Backend
    from webui.config import Settings


class ExtensionFacade:
    """What ``webui_ui_tabs(webui)`` and ``webui_app_started(app, webui)`` receive (``webui``)."""

    __slots__ = ("_app", "_backend", "_options")

    def __init__(self, backend: Backend, options: Callable[[], Mapping[str, Any]], app: Any = None) -> None:
        self._backend = backend
        self._options = options
        self._app = app  # the FastAPI app, for add_route (None while only the page is built)

    def __repr__(self) -> str:
        return "ExtensionFacade(backend, settings, options, add_route)"

    @property
    def backend(self) -> Backend:
        """Submit jobs, follow them, list and load models, read and change options: plain data in and out."""
        return self._backend

    @property
    def settings(self) -> Settings:
        """The app's settings as they are now (a frozen dataclass: read them, never change them here)."""
        return self._backend.settings()

    @property
    def options(self) -> Mapping[str, Any]:
        """The extension settings' current values (read-only; what every hook gets as ``options``)."""
        return self._options()

    def add_route(
        self, path: str, endpoint: Callable[..., Any], methods: Sequence[str] = ("GET",), **kwargs: Any
    ) -> None:
        """Add an API route (FastAPI's ``add_api_route``); prefix ``path`` with your extension's name.

        Only while the app starts (in ``webui_app_started``, or while the page's tabs are built):
        routes added later would be shadowed by the page mounted at ``/``.
        """
        if self._app is None:
            raise RuntimeError("routes can be added only while the app starts (in webui_app_started)")
        self._app.add_api_route(path, endpoint, methods=list(methods), **kwargs)
