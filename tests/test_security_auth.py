"""Exposure: localhost by default, --listen needs credentials, and with credentials no route is open.

The route matrix walks every route of the composed app (our API, FastAPI's docs, an extension's
route, and all of Gradio's) and sends each a request without credentials: only the login page and
static assets answer, and none of them carries a model name, an output or a password (cf. A1111
#17411 and #17492, where cmd-flags and /internal/* skipped the login).
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.websockets import WebSocket

from tests import headers as H
from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.security_figures import record
from webui.config import Settings, SettingsError, check_exposure, exposure_warning, load_settings
from webui.security import auth as A

ROOT = Path(__file__).resolve().parent.parent
UI_USER, UI_PASS = "alice", "correct horse battery: staple"
API_USER, API_PASS = "robot", "api-pass-1"
SECRET_MODEL = "zz-private-model"

# --- the start-up check ---------------------------------------------------------------------------

EXPOSURE = [
    # host, settings changes, refused?
    ("127.0.0.1", {}, False),
    ("127.8.9.10", {}, False),
    ("localhost", {}, False),
    ("::1", {}, False),
    ("[::1]", {}, False),
    ("0.0.0.0", {}, True),
    ("::", {}, True),
    ("192.168.1.20", {}, True),
    ("my-host.example", {}, True),
    ("0.0.0.0", {"auth": "a:b"}, False),
    ("0.0.0.0", {"auth_file": "users.txt"}, False),
    ("0.0.0.0", {"api_auth": "a:b"}, True),  # the API alone: the UI would still be open
    ("0.0.0.0", {"insecure": True}, False),
]


@pytest.mark.parametrize("host,changes,refused", EXPOSURE)
def test_serving_beyond_localhost_needs_credentials_or_insecure(host, changes, refused):
    message = check_exposure(Settings(host=host, **changes))
    record("exposure", start_up_cases=1, start_up_cases_wrong=int(bool(message) != refused))
    assert bool(message) == refused, message
    if refused:
        assert "--auth user:password" in message and "--insecure" in message and host in message


def test_insecure_start_is_logged_as_such():
    assert "WITHOUT a password" in exposure_warning(Settings(host="0.0.0.0", insecure=True))
    assert exposure_warning(Settings(host="0.0.0.0", auth="a:b")) == ""
    assert exposure_warning(Settings()) == ""


def test_listen_sets_all_interfaces_and_is_refused_without_credentials(tmp_path):
    settings, _ = load_settings(["--listen"], environ={}, base_dir=tmp_path)
    assert settings.host == "0.0.0.0" and check_exposure(settings)
    settings, _ = load_settings(["--listen"], environ={"WEBUI_AUTH": "a:b"}, base_dir=tmp_path)
    assert check_exposure(settings) == ""
    settings, _ = load_settings(["--listen", "--gradio-auth", "a:b"], environ={}, base_dir=tmp_path)
    assert settings.auth == "a:b" and check_exposure(settings) == ""


def test_app_refuses_to_start_on_listen_without_credentials(tmp_path):
    """The real entry point exits with code 2 and the message, before it builds anything."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "webui.app", "--skip-install", "--listen", "--port", str(port)]
    argv += ["--config-file", str(tmp_path / "c.json"), "--models-dir", str(tmp_path / "m")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WEBUI_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "without a password" in done.stderr and "--auth" in done.stderr
    assert not (tmp_path / "m").exists()  # nothing was built


def test_share_links_are_refused(tmp_path):
    with pytest.raises(SettingsError, match="--share is not offered"):
        load_settings(["--share"], environ={}, base_dir=tmp_path)


@pytest.mark.parametrize("value", ["alice", "alice:", ":pw", "a:b,hunter2"])
def test_malformed_credentials_are_refused_without_echoing_them(tmp_path, value):
    with pytest.raises(SettingsError) as info:
        load_settings(["--auth", value], environ={}, base_dir=tmp_path)
    assert "user:password" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_passwords_never_appear_in_the_settings_repr():
    text = repr(Settings(auth="alice:hunter2", api_auth="bot:s3cr3t"))
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "hunter2" not in repr(A.Credentials(ui=(("alice", "hunter2"),)))


# --- credentials ----------------------------------------------------------------------------------


def test_auth_file_lines_comments_and_passwords_with_commas(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# the team\n\nalice: pw with, comma:and colon\nbob:x\n", encoding="utf-8")
    creds = A.load_credentials(Settings(auth="carol:c", auth_file="users.txt"), base=tmp_path)
    assert creds.ui == (("carol", "c"), ("alice", " pw with, comma:and colon"), ("bob", "x"))
    assert creds.api == creds.ui  # the API asks for the same unless api_auth is given
    creds = A.load_credentials(Settings(auth="carol:c", api_auth="bot:b"), base=tmp_path)
    assert creds.api == (("bot", "b"),)


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "not found"),
        ("# nobody\n", "holds no user:password"),
        ("alice:ok\nbob-no-colon\n", "line 2"),
    ],
)
def test_bad_auth_file_is_a_clear_settings_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "users.txt").write_text(content, encoding="utf-8")
    with pytest.raises(SettingsError, match=message):
        A.load_credentials(Settings(auth_file=str(tmp_path / "users.txt")), base=tmp_path)


def test_password_check_accepts_only_matching_pairs():
    check = A.PasswordCheck([("alice", "pw1"), ("bob", "pw2")])
    assert check("alice", "pw1") and check("bob", "pw2")
    for user, password in [
        ("alice", "pw2"),
        ("bob", "pw1"),
        ("alice", "pw1 "),
        ("Alice", "pw1"),
        ("", ""),
        (None, "pw1"),
    ]:
        assert not check(user, password), (user, password)


def test_password_check_compares_every_pair_whatever_matches(monkeypatch):
    """No early exit: a match on the first pair costs as many comparisons as no match at all."""
    calls = []
    real = A.hmac.compare_digest
    monkeypatch.setattr(A.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    check = A.PasswordCheck([("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3")])
    counts = []
    for user, password in [("alice", "pw1"), ("carol", "pw3"), ("mallory", "x"), ("alice", "wrong")]:
        calls.clear()
        check(user, password)
        counts.append(len(calls))
    assert counts == [6, 6, 6, 6]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "header,expected",
    [
        (_basic("a", "b:c"), ("a", "b:c")),
        ("basic " + base64.b64encode(b"a:").decode(), ("a", "")),
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
    ],
)
def test_basic_auth_header_parsing(header, expected):
    assert A.basic_credentials(header) == expected


def test_websocket_routes_of_the_api_are_closed_without_credentials():
    from fastapi import FastAPI
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = FastAPI()

    @app.websocket("/sdapi/v1/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    A.protect_api(app, A.Credentials(api=(("bot", "pw"),)))
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/sdapi/v1/ws") as socket:
        socket.receive_text()
    with client.websocket_connect("/sdapi/v1/ws", headers={"Authorization": _basic("bot", "pw")}) as socket:
        assert socket.receive_text() == "hello"


# --- the composed app with credentials --------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """The composed app (API, docs, the example-tab extension's route, Gradio) with UI and API credentials."""
    from webui.app import build_server

    root = tmp_path_factory.mktemp("secured")
    shutil.copytree(ROOT / "extensions" / "example-tab", root / "ext" / "example-tab")
    H.write_safetensors(root / "models" / "Stable-diffusion" / f"{SECRET_MODEL}.safetensors", H.SD15)
    services = tmp_services(root, auth=f"{UI_USER}:{UI_PASS}", api_auth=f"{API_USER}:{API_PASS}")
    app = build_server(services)
    with serve_api(services, app=app) as url:
        yield url, app


def _walk(routes, prefix=""):
    """(path, method) of every route, through included routers and mounts (Gradio's app is one)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # FastAPI's included router
            context = getattr(route, "include_context", None)
            yield from _walk(inner.routes, prefix + getattr(context, "prefix", ""))
        elif hasattr(route, "routes") and not hasattr(route, "methods"):  # a Mount
            yield from _walk(route.routes, prefix + route.path)
        elif hasattr(route, "methods"):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield prefix + route.path, method


# Routes that answer without a login: the login page itself and static assets. Anything else must refuse.
PUBLIC = re.compile(
    r"^(/|/login/?|/logout|/svelte/.*|/static/.*|/assets/.*|/favicon\.ico|/theme\.css|/robots\.txt"
    r"|/manifest\.json|/pwa_icon.*|/gradio_api/(theme\.css|user/?|token/?|app_id/?|startup-events"
    r"|reset/?|cancel|stream/.*|custom_component/.*|vibe-.*)|/monitoring/\{key\})$"
)
STREAMING = {"/gradio_api/heartbeat/{session_hash}"}  # server-sent events: never ends, carries no data


def test_every_route_refuses_a_request_without_credentials(secured):
    url, app = secured
    routes = sorted(set(_walk(app.router.routes)))
    paths = {p for p, _ in routes}
    # the walk reached our API, the extension's route and Gradio's own routes
    for expected in ("/sdapi/v1/txt2img", "/example-tab/stats", "/gradio_api/upload", "/gradio_api/queue/join"):
        assert expected in paths
    assert len(routes) > 80
    open_routes = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for path, method in routes:
            if path in STREAMING:
                continue
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            r = client.request(method, concrete, json={} if method != "GET" else None)
            text = r.text
            if SECRET_MODEL in text or UI_PASS in text or API_PASS in text:
                record("exposure", answers_leaking_secrets=1)
            assert SECRET_MODEL not in text and UI_PASS not in text and API_PASS not in text, (method, path)
            if r.status_code < 400 and not PUBLIC.match(path):
                open_routes.append(f"{method} {path} -> {r.status_code}")
    record(
        "exposure", requests=len(routes), routes_probed_without_credentials=len(routes), open_routes=len(open_routes)
    )
    assert not open_routes, "open without credentials:\n" + "\n".join(open_routes)
    with httpx.Client(base_url=url, timeout=30) as client:  # the login page in its other forms
        for page in ("/?all_endpoints=true", "/?deep_link=x", "/?page=x"):
            assert SECRET_MODEL not in client.get(page).text, page


def test_api_routes_take_the_api_credentials_only(secured):
    url, _ = secured
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/sdapi/v1/sd-models", "/webui/v1/queue", "/example-tab/stats", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 401
            assert client.get(path, auth=(UI_USER, UI_PASS)).status_code == 401  # --api-auth was given
            assert client.get(path, auth=(API_USER, API_PASS + "x")).status_code == 401
            assert client.get(path, auth=(API_USER, API_PASS)).status_code == 200, path
        refused = client.get("/sdapi/v1/sd-models")
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert "user name and password" in refused.json()["detail"]
        models = client.get("/sdapi/v1/sd-models", auth=(API_USER, API_PASS)).json()
        assert [m["model_name"] for m in models] == [SECRET_MODEL]


def test_ui_login_opens_the_ui_and_nothing_else(secured):
    url, _ = secured
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/login", data={"username": UI_USER, "password": "wrong"}).status_code >= 400
        assert client.get("/config").status_code == 401
        assert client.post("/login", data={"username": API_USER, "password": API_PASS}).status_code >= 400
        assert client.post("/login", data={"username": UI_USER, "password": UI_PASS}).status_code == 200
        config = client.get("/config")
        assert config.status_code == 200 and SECRET_MODEL in config.text  # the page now lists the model
        assert client.get("/sdapi/v1/sd-models").status_code == 401  # the UI's cookie is not API access
