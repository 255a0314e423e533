"""Issue 12, tried as an attacker would: through the running app, over HTTP from 127.0.0.1 only.

* another site's page (DNS rebinding: a foreign Host; cross-site "simple" requests: a foreign Origin or
  Referer) cannot read or drive the app, and nothing grants it CORS; A1111 clients that send no Origin
  keep working;
* uploads are images only, stored under unguessable names; the settings that decide which code runs
  cannot be set from the page, so "upload, point the extensions folder at it, restart" is closed;
* no request data reaches an external decoder: a fake Ghostscript on the PATH records every run;
* every malformed body on Gradio's routes gets a 4xx in JSON;
* prompt weights that would overflow are a 422 naming the field; a job past the time budget stops.

The counts go to ``scripts/security_report.py`` (suite ``web``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import stat
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.security_figures import record
from webui.models.demo import demo_checkpoint_name, write_demo_models

SD15 = demo_checkpoint_name("sd15")
SMALL = {"steps": 2, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": SD15}}


def _png(color: str = "red", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _count(response: httpx.Response, **figures: int) -> httpx.Response:
    record("web", requests=1, server_errors=int(response.status_code >= 500), **figures)
    return response


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from tests.lora_files import write_kohya_unet_family
    from webui.app import build_server
    from webui.models.demo import build_tiny_pipeline

    root = tmp_path_factory.mktemp("web")
    write_demo_models(root / "models", ("sd15",))
    (root / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    write_kohya_unet_family(build_tiny_pipeline("sd15"), root / "models" / "Lora" / "anything.safetensors")
    services = tmp_services(root)
    services.generation.start()
    try:
        with serve_api(services, app=build_server(services)) as url:
            yield url, services, root
    finally:
        services.generation.stop()


@pytest.fixture
def client(app_url):
    with httpx.Client(base_url=app_url[0], timeout=120) as c:
        yield c


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


# --- hosts: DNS rebinding ---------------------------------------------------------------------------------


FOREIGN_READS = [("GET", "/config"), ("GET", "/"), ("GET", "/sdapi/v1/options"), ("GET", "/sdapi/v1/sd-models")]
FOREIGN_WRITES = [
    ("POST", "/sdapi/v1/options", {"json": {"samples_format": "jpg"}}),
    ("POST", "/sdapi/v1/txt2img", {"json": {"prompt": "rebound", **SMALL}}),
    ("POST", "/sdapi/v1/interrupt", {}),
    ("POST", "/sdapi/v1/unload-checkpoint", {}),
    ("POST", "/gradio_api/upload", {"files": {"files": ("a.png", _png(), "image/png")}}),
]


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example.", "127.0.0.1.nip.io", "192.168.1.50"])
def test_a_foreign_host_name_is_refused_on_every_route(app_url, client, host):
    url, services, _ = app_url
    header = {"Host": f"{host}:{_port(url)}"}
    for method, path in FOREIGN_READS:
        r = _count(client.request(method, path, headers=header), host_tries=1, cross_site_effects=0)
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
        assert r.json()["error"] == "BadHost" and "--allowed-hosts" in r.json()["detail"]
        assert "access-control-allow-origin" not in r.headers
    for method, path, kwargs in FOREIGN_WRITES:
        r = _count(client.request(method, path, headers=header, **kwargs), host_tries=1)
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
    assert services.settings.samples_format == "png" and services.generation.waiting() == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "127.0.0.2"])
def test_the_loopback_names_are_served(app_url, client, host):
    url, _, _ = app_url
    r = _count(client.get("/sdapi/v1/sd-models", headers={"Host": f"{host}:{_port(url)}"}))
    assert r.status_code == 200 and SD15 in r.text


@pytest.mark.parametrize(
    ("settings", "host", "served"),
    [
        ({"host": "127.0.0.1"}, "evil.example", False),
        ({"host": "127.0.0.1"}, "localhost", True),
        ({"host": "127.0.0.1", "allowed_hosts": "sd.example.lan"}, "sd.example.lan", True),
        ({"host": "127.0.0.1", "allowed_hosts": "sd.example.lan"}, "SD.example.lan.", True),
        ({"host": "0.0.0.0"}, "10.0.0.7", True),  # --listen: this machine's own address
        ({"host": "0.0.0.0"}, "mybox", True),
        ({"host": "0.0.0.0"}, "mybox.local", True),
        ({"host": "0.0.0.0"}, "evil.example", False),  # --listen does not mean any name
        ({"host": "0.0.0.0"}, "10.0.0.8", False),
        ({"host": "192.168.1.4"}, "192.168.1.4", True),
    ],
)
def test_which_host_names_are_served(settings, host, served):
    from webui.config import Settings
    from webui.security.site_guard import SitePolicy

    policy = SitePolicy.from_settings(Settings(**settings), names={"10.0.0.7", "mybox", "mybox.local"})
    assert policy.host_ok(f"{host}:7860") is served


def test_the_machines_own_names_are_found_for_listen():
    from webui.security.site_guard import machine_names

    names = machine_names()
    assert "127.0.0.1" in names and any(n not in ("127.0.0.1", "::1") for n in names)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a:1", ("a", "1")), ("[::1]:80", ("::1", "80")), ("::1", ("::1", "")), ("A.B.:9", ("a.b", "9")), ("x", ("x", ""))],
)
def test_host_headers_are_split_into_name_and_port(value, expected):
    from webui.security.site_guard import split_host

    assert split_host(value) == expected


# --- origins: cross-site requests ---------------------------------------------------------------------


CROSS_SITE = [  # what a page on evil.example can send without asking (no preflight)
    ("/sdapi/v1/interrupt", {"content": b"", "headers": {"Content-Type": "text/plain"}}),
    ("/sdapi/v1/unload-checkpoint", {"content": b"x", "headers": {"Content-Type": "text/plain"}}),
    ("/sdapi/v1/options", {"content": b'{"samples_format": "jpg"}', "headers": {"Content-Type": "text/plain"}}),
    ("/sdapi/v1/txt2img", {"content": json.dumps({"prompt": "csrf", **SMALL}).encode()}),
    ("/gradio_api/upload", {"files": {"files": ("a.png", _png(), "image/png")}}),  # a multipart form post
    ("/gradio_api/queue/join", {"content": b'{"data": [], "fn_index": 0, "session_hash": "x"}'}),
    ("/login", {"data": {"username": "a", "password": "b"}}),
]


@pytest.mark.parametrize(
    "sender",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed iframe or a file:// page
        {"Origin": "http://localhost:3000"},  # another local web app is another site too
        {"Referer": "http://evil.example/page.html"},  # browsers that send no Origin send the Referer
    ],
    ids=["origin", "null-origin", "other-local-port", "referer"],
)
def test_a_cross_site_request_changes_nothing(app_url, client, sender):
    url, services, root = app_url
    loaded = services.manager.current_entry
    uploads = set((root / "cache").rglob("*"))
    for path, kwargs in CROSS_SITE:
        headers = {**kwargs.pop("headers", {}), **sender} if "headers" in kwargs else sender
        r = _count(client.post(path, headers=headers, **kwargs), origin_tries=1)
        effect = r.status_code < 400
        record("web", cross_site_effects=int(effect))
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert "only this app's own page" in r.json()["detail"] and "access-control-allow-origin" not in r.headers
    assert services.manager.current_entry is loaded and services.settings.samples_format == "png"
    assert set((root / "cache").rglob("*")) == uploads  # nothing was uploaded


def test_another_sites_page_cannot_log_the_user_out_with_an_image_tag(client):
    r = _count(client.get("/logout", headers={"Referer": "http://evil.example/page.html"}, follow_redirects=False))
    assert r.status_code == 403


def test_a_foreign_origin_cannot_read_either(app_url, client):
    r = _count(client.get("/config", headers={"Origin": "http://evil.example"}))
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_clients_without_origin_and_the_apps_own_page_keep_working(app_url, client):
    """Open WebUI, SillyTavern, LibreChat and webuiapi call from their servers: no Origin, no Referer."""
    url, services, _ = app_url
    assert _count(client.get("/sdapi/v1/sd-models")).status_code == 200
    assert _count(client.get("/sdapi/v1/options")).status_code == 200
    r = _count(client.post("/sdapi/v1/txt2img", json={"prompt": "a client", "seed": 1, **SMALL}))
    assert r.status_code == 200 and r.json()["images"], r.text[:300]
    same = {"Origin": url, "Referer": f"{url}/?__theme=dark"}  # what the app's own page sends
    r = _count(client.post("/gradio_api/upload", headers=same, files={"files": ("a.png", _png(), "image/png")}))
    assert r.status_code == 200, r.text
    r = _count(client.post("/sdapi/v1/interrupt", headers=same))
    assert r.status_code == 200


def test_no_origin_is_granted_cors_by_default(app_url, client):
    url, _, _ = app_url
    for origin in ("http://evil.example", "http://localhost:3000"):
        pre = client.options(
            "/sdapi/v1/txt2img", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert pre.status_code in (400, 403) and "access-control-allow-origin" not in pre.headers
    own = client.get("/config", headers={"Origin": url})  # same origin: no CORS header needed, none given
    assert own.status_code == 200 and "access-control-allow-origin" not in own.headers


def test_cors_allow_origins_grants_exactly_the_origins_named(tmp_path):
    from webui.app import build_server

    services = tmp_services(tmp_path, cors_allow_origins="http://localhost:3000")
    with serve_api(services, app=build_server(services)) as url, httpx.Client(base_url=url, timeout=60) as c:
        friend = {"Origin": "http://localhost:3000"}
        pre = c.options("/sdapi/v1/sd-models", headers={**friend, "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = c.get("/sdapi/v1/sd-models", headers=friend)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert c.post("/sdapi/v1/interrupt", headers=friend).status_code == 200
        other = c.post("/sdapi/v1/interrupt", headers={"Origin": "http://evil.example"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


# --- code planted through the page ------------------------------------------------------------------------


POLYGLOT = b'name = "planted"\nentry = "main"\n# import os; os.system("touch /tmp/pwned")\n'


def test_uploads_land_under_unguessable_names_and_only_images(app_url, client):
    import hashlib

    _, _, root = app_url
    png = _png("blue")
    first = _count(client.post("/gradio_api/upload", files={"files": ("a.png", png, "image/png")})).json()[0]
    again = _count(client.post("/gradio_api/upload", files={"files": ("a.png", png, "image/png")})).json()[0]
    assert first != again  # the same bytes twice: two folders
    for path in (first, again):
        folder = Path(path).parent.name
        assert re.fullmatch(r"[0-9a-f]{32}", folder) and folder != hashlib.sha256(png).hexdigest()
        assert Path(path).read_bytes() == png
    for name in ("extension.toml", "main.py"):
        r = _count(client.post("/gradio_api/upload", files={"files": (name, POLYGLOT, "text/plain")}))
        assert r.status_code == 415 and "not an image" in r.json()["detail"]
    assert not [p for p in (root / "cache").rglob("*") if p.name in ("extension.toml", "main.py")]


def test_the_extensions_folder_cannot_be_pointed_anywhere_from_the_page_or_the_api(app_url, client):
    """The full chain of issue 12 item 1: nothing of it works any more."""
    from webui.ui.settings_apply import save_settings as page_save

    _, services, root = app_url
    before = services.settings
    result = page_save(services.backend, {"extensions_dir": str(root / "cache" / "gradio")})
    assert not result.ok and "cannot be changed from the browser" in result.errors["extensions_dir"]
    r = _count(client.post("/sdapi/v1/options", json={"extensions_dir": str(root / "cache"), "cache_dir": "/"}))
    assert r.status_code == 200 and set(r.json()["ignored"]) == {"extensions_dir", "cache_dir"}
    assert services.settings == before
    config = root / "config.json"
    assert not config.exists() or "extensions_dir" not in json.loads(config.read_text())


# --- no external decoder ----------------------------------------------------------------------------------


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch):
    """A ``gs`` on the PATH that records each run (PIL's EPS plugin looks it up lazily and caches it)."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "gs-ran.txt"
    folder = tmp_path / "bin"
    folder.mkdir()
    gs = folder / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\n[ "$1" = "--version" ] && echo 10.0 && exit 0\nexit 1\n')
    gs.chmod(gs.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # PIL's cached lookup: find ours
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None, raising=False)
    return marker


def test_the_fake_ghostscript_would_catch_a_decode(fake_ghostscript):
    """The control: plain PIL, with no allow-list, runs Ghostscript on these bytes."""
    with pytest.raises(Exception), Image.open(io.BytesIO(EPS)) as image:  # noqa: B017 - gs "fails" after running
        image.load()
    assert fake_ghostscript.exists()


def test_request_images_never_reach_ghostscript(app_url, client, fake_ghostscript):
    _, _, root = app_url
    eps64 = base64.b64encode(EPS).decode()
    init = base64.b64encode(_png("gray", 64)).decode()
    attempts = [
        client.post("/sdapi/v1/png-info", json={"image": eps64}),
        client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + eps64}),
        client.post("/sdapi/v1/img2img", json={"init_images": [eps64], **SMALL}),
        client.post("/sdapi/v1/img2img", json={"init_images": [init], "mask": eps64, **SMALL}),
        client.post("/gradio_api/upload", files={"files": ("photo.png", EPS, "image/png")}),
    ]
    planted = root / "cache" / "gradio" / "uploads" / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    (planted / "photo.png").write_bytes(EPS)  # reached the upload folder some other way
    file_value = {"path": str(planted / "photo.png"), "meta": {"_type": "gradio.FileData"}}
    attempts.append(client.post("/gradio_api/call/show", json={"data": [file_value]}))
    record("web", code_executions=int(fake_ghostscript.exists()))
    shutil.rmtree(planted)
    assert not fake_ghostscript.exists(), f"Ghostscript ran: {fake_ghostscript.read_text()}"
    for r in attempts:
        _count(r, decode_tries=1)
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text[:200])


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO", "PPM", "TGA"])
def test_formats_beyond_png_jpeg_and_webp_are_refused_as_init_images(client, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(buf, format=fmt)
    body = {"init_images": [base64.b64encode(buf.getvalue()).decode()], **SMALL}
    r = _count(client.post("/sdapi/v1/img2img", json=body), decode_tries=1)
    assert r.status_code == 422 and r.json()["field"] == "init_images[0]" and "PNG, JPEG or WebP" in r.text


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_accepted(client, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(buf, format=fmt)
    body = {"init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.5, **SMALL}
    assert _count(client.post("/sdapi/v1/img2img", json=body)).status_code == 200


# --- malformed bodies on Gradio's routes --------------------------------------------------------------------


GRADIO_POSTS = [
    "/gradio_api/queue/join",
    "/gradio_api/run/predict",
    "/gradio_api/call/predict",
    "/gradio_api/api/predict",
    "/gradio_api/cancel",
    "/gradio_api/reset",
    "/gradio_api/stream/x",
    "/gradio_api/stream/x/close",
]
BAD_BODIES = {
    "NaN": b'{"data": [NaN], "fn_index": 0, "session_hash": "s"}',
    "Infinity": b'{"data": [Infinity], "fn_index": 0, "session_hash": "s"}',
    "1e999": b'{"data": [1e999], "fn_index": 0, "session_hash": "s"}',
    "surrogate": b'{"data": ["\\ud800"], "fn_index": 0, "session_hash": "s"}',
    "deep": b'{"data": ' + b"[" * 200 + b"]" * 200 + b', "fn_index": 0, "session_hash": "s"}',
}


@pytest.mark.parametrize("route", GRADIO_POSTS)
@pytest.mark.parametrize("kind", sorted(BAD_BODIES))
def test_malformed_bodies_get_a_4xx_in_json_on_gradios_routes(client, route, kind):
    r = _count(client.post(route, content=BAD_BODIES[kind], headers={"Content-Type": "application/json"}))
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert r.headers["content-type"].startswith("application/json") and r.json()["detail"]


@pytest.mark.parametrize("fn_index", [99999, -1, "0", True, 1.5])
def test_an_unknown_event_is_a_4xx_in_json(client, fn_index):
    body = {"data": [], "fn_index": fn_index, "session_hash": "s"}
    r = _count(client.post("/gradio_api/queue/join", json=body))
    assert r.status_code in (404, 422) and "fn_index" in r.json()["detail"]


# --- prompts that would overflow, jobs that would never end -----------------------------------------------


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("prompt", "(" * 1000 + "x"),
        ("negative_prompt", "(" * 1000 + "x"),
        ("prompt", "a cat <lora:anything:1e30>"),
        ("negative_prompt", "<lora:anything:-1e30>"),
    ],
)
def test_weights_that_would_overflow_are_a_422_naming_the_prompt(client, field, text):
    r = _count(client.post("/sdapi/v1/txt2img", json={field: text, **SMALL}))
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert "weight" in r.json()["detail"] and "NaN" not in r.text and "precision" not in r.text


def test_a_job_past_the_time_budget_answers_what_it_finished_and_says_why(app_url, client):
    _, services, _ = app_url
    services.generation.job_timeout = 1.0
    try:
        body = {"prompt": "long", "n_iter": 100, "batch_size": 1, "seed": 3, **SMALL, "steps": 20}
        r = _count(client.post("/sdapi/v1/txt2img", json=body))
    finally:
        services.generation.job_timeout = 3600
    assert r.status_code == 200, r.text[:300]
    info = json.loads(r.json()["info"])
    assert info["interrupted"] is True and len(r.json()["images"]) < 100
    assert any("job_timeout" in w for w in info.get("warnings", [])), info.get("warnings")
