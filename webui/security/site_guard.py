"""Only this machine's own pages drive the app: Host names it serves, Origins of its own page.

Two attacks need no password and no bug in the app, only a browser that visits a hostile page:

* **DNS rebinding.** ``attacker.example`` first resolves to the attacker's server, then to 127.0.0.1;
  the page's scripts now read and drive ``http://attacker.example:7860`` as their own origin. Every
  such request carries ``Host: attacker.example:7860``, so the app answers only Host names it serves:
  localhost, 127.0.0.0/8 and [::1] by default; with ``--listen`` also this machine's own names and
  addresses; and the names given with ``--allowed-hosts`` (a reverse proxy's name).
* **Cross-site requests.** A page on ``evil.example`` can post a form or a ``text/plain`` fetch to
  127.0.0.1 without asking (a "simple" request): uploads, interrupts, unloading the model. Browsers
  name the page that sent a request in ``Origin`` (``Referer`` when they omit it), so a state-changing
  request (POST, PUT, PATCH, DELETE, a WebSocket) from another origin is refused, as is any request with
  a foreign ``Origin``. Clients that are not browsers send neither header (Open WebUI, SillyTavern,
  LibreChat and webuiapi call the API from their servers) and keep working.

Cross-origin reads are granted only to ``--cors-allow-origins``/``--cors-allow-origins-regex``
(A1111's flags), through Starlette's ``CORSMiddleware`` (``cors_middleware_options``); Gradio then adds
no CORS headers of its own (it would grant any origin whose Host is not localhost).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STATE_CHANGING_GETS = frozenset({"/logout", "/logout/"})  # Gradio logs out on a GET: an <img> could do it


def split_host(value: str) -> tuple[str, str]:
    """("name", "port") of a Host header or the authority of a URL; the name lower-case, without [] or a
    trailing dot; the port "" when absent."""
    text = value.strip().lower()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        name, _, port = text.partition(":")
    else:
        name, port = text, ""  # a bare IPv6 address, or no port
    return name.rstrip("."), port


def _is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def machine_names() -> set[str]:
    """This machine's host name and the addresses of its network interfaces (what ``--listen`` serves)."""
    names: set[str] = set()
    hostname = socket.gethostname().lower()
    if hostname:
        names |= {hostname, f"{hostname}.local", hostname.split(".")[0]}
    try:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                if address.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(address.address.split("%")[0].lower())
    except Exception:  # noqa: BLE001 - without the interface list, the names given with --allowed-hosts remain
        log.debug("cannot list this machine's addresses", exc_info=True)
    return names


def _origin_patterns(origins: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip())


@dataclass(frozen=True)
class SitePolicy:
    """Which Host names the app serves and which other origins may call it (CORS)."""

    hosts: frozenset[str]
    extra_hosts: frozenset[str] = frozenset()  # given with --allowed-hosts: their pages may call the app too
    cors_origins: tuple[str, ...] = ()
    cors_regex: str = ""

    @classmethod
    def from_settings(cls, settings: Any, names: Iterable[str] | None = None) -> SitePolicy:
        """The policy for these settings; ``names`` overrides the machine's own names (tests)."""
        from webui.config import is_loopback

        extra = {split_host(h)[0] for h in str(getattr(settings, "allowed_hosts", "")).split(",") if h.strip()}
        hosts = set(LOOPBACK_NAMES) | extra
        if not is_loopback(settings.host):  # --listen: the addresses and names of this machine
            hosts |= set(machine_names() if names is None else names)
            if settings.host not in ("0.0.0.0", "::", ""):
                hosts.add(split_host(settings.host)[0])
        return cls(
            frozenset(hosts),
            frozenset(extra),
            _origin_patterns(getattr(settings, "cors_allow_origins", "")),
            str(getattr(settings, "cors_allow_origins_regex", "") or ""),
        )

    def host_ok(self, host_header: str | None) -> bool:
        if host_header is None:  # HTTP/1.0 without Host: not a browser (browsers always send it)
            return True
        name, _ = split_host(host_header)
        return name in self.hosts or _is_loopback(name)

    def cors_ok(self, origin: str) -> bool:
        origin = origin.rstrip("/")
        if "*" in self.cors_origins or origin in self.cors_origins:
            return True
        return bool(self.cors_regex) and re.fullmatch(self.cors_regex, origin) is not None

    def origin_ok(self, origin: str, host_header: str | None) -> bool:
        """Same origin as the page the app served (the request's Host), an --allowed-hosts name, or CORS."""
        if origin.strip().lower() == "null":  # sandboxed iframes, file:// pages, some redirects
            return self.cors_ok("null")
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if host_header is not None and split_host(parts.netloc) == split_host(host_header):
            return True
        return split_host(parts.netloc)[0] in self.extra_hosts or self.cors_ok(origin)

    def cors_middleware_options(self) -> dict[str, Any]:
        """Keyword arguments for Starlette's ``CORSMiddleware`` (no origin at all by default)."""
        return {
            "allow_origins": list(self.cors_origins),
            "allow_origin_regex": self.cors_regex or None,
            "allow_methods": ["*"],
            "allow_headers": ["*"],
            "allow_credentials": True,
        }


def _headers(scope: dict) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for key, value in scope.get("headers") or ():
        found.setdefault(key.lower(), value.decode("latin-1"))
    return found


def refusal(scope: dict, policy: SitePolicy) -> tuple[int, str] | None:
    """(status, message) when the request must not reach the app, else None."""
    headers = _headers(scope)
    host = headers.get(b"host")
    if not policy.host_ok(host):
        shown = " or ".join(sorted(policy.hosts)[:6])
        return 400, (
            f"this app does not answer to the host name {split_host(host or '')[0]!r} (a page that renamed"
            f" 127.0.0.1 to reach it, or an unlisted name). It answers to {shown}; to reach it under another"
            " name, start it with --allowed-hosts NAME"
        )
    origin = headers.get(b"origin")
    changing = (
        scope["type"] == "websocket"
        or scope.get("method", "GET") in STATE_CHANGING
        or scope.get("path") in STATE_CHANGING_GETS
    )
    if origin is not None:
        if not policy.origin_ok(origin, host):
            return 403, (
                f"refused a request from the web page at {origin[:200]!r}: only this app's own page may use it."
                " To let another site's page call it, start the app with --cors-allow-origins ORIGIN"
            )
        return None
    referer = headers.get(b"referer")
    if changing and referer:
        parts = urlsplit(referer)
        if parts.scheme in ("http", "https") and not policy.origin_ok(f"{parts.scheme}://{parts.netloc}", host):
            return 403, (
                "refused a request sent by another site's page (its Referer): only this app's own page may use"
                " it. To let another site's page call it, start the app with --cors-allow-origins ORIGIN"
            )
    return None


async def send_json_error(send: Any, status: int, error: str, detail: str, headers: Iterable = ()) -> None:
    """The API's error shape (``{"error", "detail", "field", "valid"}``) as a raw ASGI answer."""
    body = json.dumps({"error": error, "detail": detail, "field": None, "valid": None}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class SiteGuard:
    """ASGI middleware (outermost): refuse foreign Host names and requests from other sites' pages."""

    def __init__(self, app: Any, policy: SitePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = refusal(scope, self.policy)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, message = refused
        log.warning("refused %s %s: %s", scope.get("method", "WS"), scope.get("path"), message)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_json_error(send, status, "Forbidden" if status == 403 else "BadHost", message)


def protect_site(app: Any, policy: SitePolicy) -> None:
    """CORS as configured (none by default), then ``SiteGuard`` outermost. Call after every other middleware."""
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, **policy.cors_middleware_options())
    app.add_middleware(SiteGuard, policy=policy)
