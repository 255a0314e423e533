"""Gradio's own routes get the API's checks: a 4xx in JSON for a malformed body, and only uploaded images.

Gradio answers a plain-text 500 to what its JSON parser accepts and its handlers cannot use (``NaN``,
``Infinity``, ``1e999``, a lone surrogate ``"\\ud800"``, an ``fn_index`` of 99999 or -1), on every POST
route under ``/gradio_api/`` (``queue/join``, ``run/*``, ``call/*``, ``cancel``, ``reset``, ``stream/*``).
``GradioRequestGuard`` reads such a body first (at most ``max_bytes``), refuses it with the same
checks and message shape as the A1111 API (``webui.api.body_guard``), and passes a good body on
unchanged. For the events (``queue/join``, ``run``, ``api``, ``call``) it also checks what Gradio would
later open as a file: every file reference in the event's data (``{"path": ...}``) must name a file inside
the upload folder (after symlinks are resolved) that is a PNG, JPEG or WebP image, and never a URL
(Gradio would download a public URL and hand it to PIL). Gradio refuses paths outside the upload
folder itself too (``test_gradio_still_refuses_paths_it_did_not_upload`` checks that it still does);
this guard does not depend on that.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from webui.security.files import is_inside
from webui.security.site_guard import send_json_error

PREFIX = "/gradio_api/"
EVENT_ROUTES = re.compile(r"^/gradio_api/(?:queue/join|run/|api/|call/)")
SKIPPED = ("/gradio_api/upload", "/gradio_api/upload/")  # multipart: UploadGuard checks those
MAX_EVENT_BYTES = 32 * 1024 * 1024  # an event carries text and file references, never image bytes
FILE_KEYS = frozenset({"path", "url", "size", "orig_name", "mime_type", "is_stream", "meta"})
_URL_LIKE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:|//|\\\\)", re.IGNORECASE)


class BodyRefused(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def _is_file_ref(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    meta = value.get("meta")
    if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
        return True
    return isinstance(value.get("path"), str) and set(value) <= FILE_KEYS


def file_refs(value: Any) -> list[str]:
    """Every file an event's data names (Gradio's FileData dicts, at any depth): its path, else its URL."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if _is_file_ref(item):
            found.append(item.get("path") or str(item.get("url") or ""))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def file_problem(path: str, upload_root: Path) -> str:
    """ "" for a reference to an uploaded image, else why the event may not use it."""
    from webui.security.images import image_file_problem

    if not path:
        return "names no file; upload the image instead"
    if _URL_LIKE.match(path) and not re.match(r"^[a-z]:[\\/]", path, re.IGNORECASE):
        return "files are not fetched from a URL; upload the image instead"
    if "\x00" in path or not is_inside(Path(path), upload_root):
        return "names a file that was not uploaded to this app; upload the image instead"
    return image_file_problem(path)


def check_event(parsed: Any, fns: Any, upload_root: Path) -> None:
    """Raise ``BodyRefused`` for an event body Gradio would fail on or that names a file it must not open."""
    if not isinstance(parsed, dict):
        raise BodyRefused(422, "RequestError", "the event body must be a JSON object")
    if "data" in parsed and not isinstance(parsed["data"], list):
        raise BodyRefused(422, "RequestError", "data: must be a list of the event's input values")
    for key in ("fn_index", "trigger_id"):
        value = parsed.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise BodyRefused(422, "RequestError", f"{key}: must be a whole number, got {value!r}")
    fn_index = parsed.get("fn_index")
    if fn_index is not None and fns is not None and fn_index not in fns:
        raise BodyRefused(404, "NotFound", f"fn_index: this page has no event {fn_index}; reload the page")
    for path in file_refs([parsed.get("data"), parsed.get("event_data")]):
        problem = file_problem(path, upload_root)
        if problem:
            raise BodyRefused(422, "NotAnImage", f"an image input {problem}")


def check_body(raw: bytes, path: str, fns: Any, upload_root: Path) -> None:
    """Raise ``BodyRefused`` for a body no Gradio handler should see."""
    from webui.api.body_guard import check_body as api_check_body
    from webui.api.errors import ApiError

    try:
        api_check_body(raw, MAX_EVENT_BYTES)
    except ApiError as exc:
        raise BodyRefused(exc.status, exc.error, f"{exc.field}: {exc.detail}" if exc.field else exc.detail) from None
    if not EVENT_ROUTES.match(path) or not raw.strip():
        return
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise BodyRefused(422, "RequestError", "the body is not valid JSON; send a JSON object in UTF-8") from None
    check_event(parsed, fns, upload_root)


async def _read(receive: Any, limit: int) -> tuple[bytes, list[dict]]:
    """The whole request body (BodyRefused past ``limit``) and the messages read."""
    chunks, size, messages = [], 0, []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyRefused(413, "RequestTooLarge", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


class GradioRequestGuard:
    """ASGI middleware for the POST routes under ``/gradio_api/`` (see the module docstring)."""

    def __init__(self, app: Any, blocks: Any, upload_root: Path, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.app = app
        self.blocks = blocks
        self.upload_root = Path(upload_root)
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.startswith(PREFIX) or path in SKIPPED:
            await self.app(scope, receive, send)
            return
        try:
            raw, messages = await _read(receive, self.max_bytes)
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(check_body, raw, path, getattr(self.blocks, "fns", None), self.upload_root)
        except BodyRefused as exc:
            await send_json_error(send, exc.status, exc.error, exc.detail)
            return
        replay = [{"type": "http.request", "body": raw, "more_body": False}]
        if messages and messages[-1]["type"] != "http.request":
            replay.append(messages[-1])  # a disconnect seen while reading

        async def replayed() -> dict:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)
