"""What the UI may serve: Gradio's own upload cache and nothing of the app's private files; no remote fetches.

Gradio 6 serves ``/gradio_api/file=<path>`` only for files in its upload folder (``GRADIO_TEMP_DIR``),
its examples cache, ``allowed_paths`` and static paths, after resolving ``..`` and symlinks; the UI
shows generated images from that cache (PIL images are copied there), never from ``outputs/``.

* ``gradio_file_options(paths, settings)``: keyword arguments for ``gr.mount_gradio_app``: no allowed
  paths, the app's private files blocked (models, extensions, the settings and auth files, the hash
  cache) so that no later ``allowed_paths`` or static path can expose them, and an upload size cap.
* ``RemoteFetchGuard``: Gradio's ``file=`` route fetches any public ``http(s)`` URL for the caller,
  and on Windows a ``\\\\server\\share`` path would open an SMB connection. The app works offline and
  never needs either, so those requests get a 403 before Gradio sees them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MAX_UPLOAD_SIZE = "100mb"  # a 4096x4096 PNG with an alpha channel is about 64 MB
FILE_ROUTE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/gradio_api/proxy=", "/proxy=")
_REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*://|//|\\\\|[a-z][a-z0-9+.-]*:(?![\\/]))", re.IGNORECASE)


def is_remote_target(target: str) -> bool:
    """True for a URL (``http://``, ``//host``, ``data:``...) or a UNC path; False for a local path (``C:\\x`` too)."""
    return bool(_REMOTE.match(target))


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, with symlinks and ``..`` resolved, lies in ``folder`` (False when it cannot be resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def private_paths(paths: Any, settings: Any = None, base: Path | None = None) -> list[Path]:
    """The app's files no web request should read: models, extensions, settings, auth file, hash cache."""
    found = [
        Path(paths.models),
        Path(paths.extensions),
        Path(paths.config_file),
        Path(paths.config_file).with_name("extensions.json"),
        Path(paths.cache) / "hashes.json",
    ]
    if settings is not None and getattr(settings, "auth_file", "").strip():
        found.append(settings.path("auth_file", base))
    return found


def gradio_file_options(paths: Any, settings: Any = None, base: Path | None = None) -> dict[str, Any]:
    """``allowed_paths``, ``blocked_paths`` and ``max_file_size`` for ``gr.mount_gradio_app``.

    A private folder that holds the outputs or Gradio's upload folder is not blocked: that would hide
    every generated image from the page.
    """
    from gradio.utils import get_upload_folder

    keep = [Path(get_upload_folder()), Path(paths.outputs)]
    blocked = [p for p in private_paths(paths, settings, base) if not any(is_inside(k, p) for k in keep)]
    return {"allowed_paths": [], "blocked_paths": [str(p) for p in blocked], "max_file_size": MAX_UPLOAD_SIZE}


class RemoteFetchGuard:
    """ASGI middleware: 403 for Gradio file/proxy requests that name a URL or a UNC path."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        prefix = next((p for p in FILE_ROUTE_PREFIXES if path.startswith(p)), None)
        if prefix is None or not is_remote_target(path[len(prefix) :]):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "this app serves only its own files; it does not fetch URLs"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def protect_files(app: Any) -> None:
    """Add ``RemoteFetchGuard`` to ``app`` (before it starts serving)."""
    app.add_middleware(RemoteFetchGuard)
