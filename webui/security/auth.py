"""Credentials: the Gradio login for the UI and HTTP basic auth for every other route.

* ``load_credentials(settings, base)`` reads ``--auth``/``--auth-file`` (the UI login) and ``--api-auth``
  (defaults to the UI's) into a ``Credentials``; a bad or missing auth file is a ``SettingsError``.
* ``PasswordCheck`` compares a user name and password against every known pair in constant time
  (sha256 of both sides, ``hmac.compare_digest``, no early exit), so neither timing nor length tells
  an attacker which part was wrong.
* ``gradio_auth_options(credentials)`` are the keyword arguments of ``gr.mount_gradio_app`` that turn
  on Gradio's login page (Gradio then refuses its file, upload, queue and config routes without it).
* ``protect_api(app, credentials)`` adds ``ApiAuthMiddleware``: every request to a route that is not
  the Gradio mount (``/sdapi/v1/*``, ``/docs``, ``/openapi.json``, routes added by extensions) needs
  HTTP basic credentials, as A1111's ``--api-auth`` does, so no route is left open when auth is on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.config import Settings, SettingsError
from webui.config_checks import credential_pairs

log = logging.getLogger(__name__)

REALM = "Stable Diffusion web UI"
# Paths that are never Gradio's, even when no route matches them (an unknown API path still asks for auth).
API_PATH_PREFIXES = ("/sdapi/", "/webui/", "/docs", "/redoc", "/openapi.json")
AUTH_MESSAGE = "Log in with the user name and password this web UI was started with (--auth or --auth-file)."

Pair = tuple[str, str]


@dataclass(frozen=True)
class Credentials:
    """Who may use the UI and who may call the API; empty tuples mean no login."""

    ui: tuple[Pair, ...] = ()
    api: tuple[Pair, ...] = ()

    def __repr__(self) -> str:  # never print a password
        return f"Credentials(ui={[u for u, _ in self.ui]}, api={[u for u, _ in self.api]})"

    @property
    def enabled(self) -> bool:
        return bool(self.ui or self.api)


def read_auth_file(path: Path) -> list[Pair]:
    """One ``user:password`` per line (blank lines and ``#`` comments skipped); the password may hold commas."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"auth file {path} not found: create it with one user:password per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read auth file {path}: {exc}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise SettingsError(f"auth file {path}, line {number}: write user:password with both parts non-empty")
        pairs.append((user.strip(), password))
    if not pairs:
        raise SettingsError(f"auth file {path} holds no user:password line")
    return pairs


def load_credentials(settings: Settings, base: Path) -> Credentials:
    """The UI pairs (``auth`` then ``auth_file``) and the API pairs (``api_auth``, else the UI's)."""
    ui = credential_pairs(settings.auth)
    if settings.auth_file.strip():
        ui += read_auth_file(settings.path("auth_file", base))
    api = credential_pairs(settings.api_auth) or ui
    return Credentials(ui=tuple(ui), api=tuple(api))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class PasswordCheck:
    """``check(user, password) -> bool`` against every pair, in time independent of where they differ."""

    def __init__(self, pairs: Iterable[Pair]) -> None:
        self._digests = [(_digest(u), _digest(p)) for u, p in pairs]
        if not self._digests:
            raise ValueError("PasswordCheck needs at least one user:password pair")

    def __call__(self, username: str | None, password: str | None) -> bool:
        if not isinstance(username, str) or not isinstance(password, str):
            return False
        user, secret = _digest(username), _digest(password)
        ok = 0
        for u, p in self._digests:  # no break: every pair is compared
            ok |= hmac.compare_digest(u, user) & hmac.compare_digest(p, secret)
        return bool(ok)

    def __repr__(self) -> str:
        return f"PasswordCheck({len(self._digests)} pair(s))"


def gradio_auth_options(credentials: Credentials) -> dict[str, Any]:
    """Keyword arguments for ``gr.mount_gradio_app``: the login page when the UI has credentials."""
    if not credentials.ui:
        return {}
    return {"auth": PasswordCheck(credentials.ui), "auth_message": AUTH_MESSAGE}


def basic_credentials(header: str | None) -> Pair | None:
    """(user, password) from an ``Authorization: Basic ...`` header; None when absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _route_matches(route: Any, scope: dict) -> bool:
    from starlette.routing import Match

    probe = {k: v for k, v in scope.items() if k != "fastapi"}  # FastAPI keeps per-request state there
    try:
        match, _ = route.matches(probe)
    except Exception:  # noqa: BLE001 - a route that cannot judge this request does not claim it
        return False
    return match != Match.NONE


def _is_gradio_mount(route: Any) -> bool:
    from starlette.routing import Mount

    return isinstance(route, Mount) and route.path in ("", "/")


class ApiAuthMiddleware:
    """ASGI middleware: HTTP basic auth on every route except the Gradio app mounted at ``/``.

    Gradio enforces its own login (``gradio_auth_options``). Everything else the FastAPI app routes
    (the API, its docs, routes extensions added, even ones added after start-up) is checked here,
    for HTTP and WebSocket requests alike.
    """

    def __init__(self, app: Any, check: PasswordCheck, routes: Any, throttle: Any = None) -> None:
        self.app = app
        self.check = check
        self.router = routes
        self.throttle = throttle  # webui.security.throttle.LoginThrottle: wrong passwords slow down per client

    def _is_api(self, scope: dict) -> bool:
        path = scope.get("path", "")
        if path.startswith(API_PATH_PREFIXES):
            return True
        return any(not _is_gradio_mount(r) and _route_matches(r, scope) for r in self.router.routes)

    def authorized(self, scope: dict) -> bool:
        pair = basic_credentials(_header(scope, b"authorization"))
        return pair is not None and self.check(*pair)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not self._is_api(scope):
            await self.app(scope, receive, send)
            return
        from webui.security.throttle import client_of, send_throttled

        client = client_of(scope)
        wait = self.throttle.retry_after(client) if self.throttle is not None else 0.0
        if wait > 0:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await send_throttled(send, wait)
            return
        if self.authorized(scope):
            if self.throttle is not None:
                self.throttle.succeeded(client)
            await self.app(scope, receive, send)
            return
        if self.throttle is not None and _header(scope, b"authorization"):  # a wrong guess, not a missing login
            self.throttle.failed(client)
        log.info("refused %s %s: no valid API credentials", scope.get("method", "WS"), scope.get("path"))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {
                "error": "Unauthorized",
                "detail": "this API needs a user name and password (HTTP basic auth): the ones given with"
                " --api-auth, or with --auth when --api-auth is not set",
                "field": None,
                "valid": None,
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def protect_api(app: Any, credentials: Credentials, throttle: Any = None) -> None:
    """Require ``credentials.api`` on every non-Gradio route of ``app`` (nothing to do without them)."""
    if credentials.api:
        check = PasswordCheck(credentials.api)
        app.add_middleware(ApiAuthMiddleware, check=check, routes=app.router, throttle=throttle)
