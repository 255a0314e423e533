"""Issue 12, bounded work: slow clients are dropped, password guessing slows down, uploads cannot pile up.

Through a real uvicorn server on 127.0.0.1 with the app's own server settings
(``webui.security.connections.server_config``), timeouts shortened so the test takes seconds.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import select
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.security_figures import record

FAST = {"header_timeout": 1.0, "body_idle_timeout": 1.0}


def _slow_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(2.5)  # longer than both timeouts: a long job the client waits for
        return {"done": True}

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    return app


def _closed(sock: socket.socket) -> bool:
    """True once the server closed the connection (readable with no data, or reset)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _open_half(url: str, count: int, payload: bytes) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(payload)
        socks.append(s)
    return socks


def test_slowloris_connections_are_closed_and_the_server_keeps_serving():
    """Issue 12: 400 of 400 half-open connections were still held after 20 s."""
    with serve_api(None, app=_slow_app(), server_options=FAST) as url:
        socks = _open_half(url, 400, b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        try:
            with httpx.Client(base_url=url, timeout=10) as client:  # a normal client is served meanwhile
                assert client.post("/echo", json={"a": 1}).json() == {"a": 1}
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline and not all(_closed(s) for s in socks):
                time.sleep(0.2)
            held = sum(not _closed(s) for s in socks)
        finally:
            for s in socks:
                s.close()
        record("web", requests=400, slow_connections=400, slow_connections_held=held)
        assert held == 0
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/echo", json={"b": 2}).json() == {"b": 2}


def test_a_body_that_stops_arriving_is_dropped_but_a_long_answer_is_not():
    with serve_api(None, app=_slow_app(), server_options=FAST) as url:
        (stalled,) = _open_half(
            url, 1, b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"a\": "
        )
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not _closed(stalled):
                time.sleep(0.1)
            assert _closed(stalled)
        finally:
            stalled.close()
        with httpx.Client(base_url=url, timeout=10) as client:  # 2.5 s of work after a complete request
            assert client.get("/slow").json() == {"done": True}


# --- failed logins ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from webui.app import build_server

    root = tmp_path_factory.mktemp("throttle")
    services = tmp_services(root, auth="admin:right-password")
    with serve_api(services, app=build_server(services)) as url:
        yield url


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_wrong_passwords_on_the_login_form_are_throttled(secured):
    """Issue 12: 300 wrong passwords at 424/s were never throttled."""
    statuses = []
    with httpx.Client(base_url=secured, timeout=10) as client:
        for i in range(20):
            r = client.post("/login", data={"username": "admin", "password": f"guess-{i}"})
            statuses.append(r.status_code)
        locked = client.post("/login", data={"username": "admin", "password": "right-password"})
    record("web", requests=21, wrong_passwords=20, wrong_passwords_compared=statuses.count(400))
    assert statuses[:5] == [400] * 5  # people mistype: the first few cost nothing
    assert statuses[5:] == [429] * 15  # then every attempt waits, and is not even compared
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert "wait" in locked.json()["detail"]


def test_wrong_api_passwords_are_throttled_per_client(tmp_path):
    from webui.app import build_server

    services = tmp_services(tmp_path, api_auth="bot:secret")
    with serve_api(services, app=build_server(services)) as url, httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/sdapi/v1/sd-models").status_code == 401  # no credentials: not a guess
        statuses = [c.get("/sdapi/v1/sd-models", headers=_basic("bot", f"x{i}")).status_code for i in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        assert c.get("/sdapi/v1/sd-models", headers=_basic("bot", "secret")).status_code == 429  # still locked


def test_the_lock_out_doubles_and_a_success_clears_it():
    from webui.security.throttle import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(free=2, base_delay=1.0, max_delay=8.0, clock=lambda: now[0])
    throttle.failed("a")
    assert throttle.retry_after("a") == 0  # one typo costs nothing
    waits = []
    for _ in range(5):
        throttle.failed("a")
        waits.append(throttle.retry_after("a"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert throttle.retry_after("b") == 0  # per client
    now[0] += 8.0
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    assert throttle.retry_after("a") == 0  # the count started again


# --- uploads ----------------------------------------------------------------------------------------------


def _png_bytes(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_bounded_in_number_size_and_age(tmp_path):
    from webui.security.uploads import UploadStore

    store = UploadStore(tmp_path, max_entries=3, max_bytes=10_000, max_age=3600)
    now = time.time()
    made = []
    for i in range(6):
        path = store.new_home(f"{i}.png")
        path.write_bytes(b"x" * 1000)
        os.utime(path.parent, (now - 100 + i, now - 100 + i))
        made.append(path.parent)
    assert store.prune(now) == 3 and [p.exists() for p in made] == [False] * 3 + [True] * 3  # the oldest go
    big = store.new_home("big.png")
    big.write_bytes(b"x" * 9_500)
    assert store.prune(now) == 3 and [p.name for p in store.folder.iterdir()] == [big.parent.name]  # 10 kB
    os.utime(big.parent, (now - 7200, now - 7200))
    assert store.prune(now) >= 1 and not big.exists()  # past its age


def test_each_upload_request_is_bounded_and_each_upload_gets_its_own_folder(tmp_path):
    from webui.app import build_server
    from webui.security.uploads import UPLOADS_SUBFOLDER

    services = tmp_services(tmp_path)
    app = build_server(services)
    with serve_api(services, app=app) as url, httpx.Client(base_url=url, timeout=30) as client:
        files = [("files", (f"{i}.png", _png_bytes("red"), "image/png")) for i in range(17)]
        r = client.post("/gradio_api/upload", files=files)
        assert r.status_code == 415 and "at most 16" in r.json()["detail"]
        r = client.post("/gradio_api/upload", files=files[:2])
        assert r.status_code == 200 and len(r.json()) == 2
        first, second = (Path(p) for p in r.json())
        assert first.parents[1].name == second.parents[1].name == UPLOADS_SUBFOLDER
        assert first.parent != second.parent and first.exists() and second.exists()


def test_the_same_image_uploaded_twice_at_once_gives_each_request_a_copy_of_its_own(tmp_path):
    """Gradio stores identical uploads at one path; the inpaint editor sends its unchanged layer again and
    again, so the second request used to find the file already moved away (a flaky inpaint test)."""
    from webui.security.uploads import UploadStore, _check_and_move

    store = UploadStore(tmp_path)
    stored = tmp_path / "3f2a" / "layer_0.png"  # Gradio's folder named after the bytes
    stored.parent.mkdir()
    stored.write_bytes(_png_bytes("white"))
    first, problem = _check_and_move([str(stored)], store, None)
    assert problem == "" and not stored.exists()
    second, problem = _check_and_move([str(stored)], store, None)  # the second request, same path, now gone
    assert problem == "", problem
    assert first != second and Path(first[0]).read_bytes() == Path(second[0]).read_bytes() == _png_bytes("white")


def test_keeping_an_upload_leaves_gradios_folder_for_a_request_still_renaming_into_it(tmp_path):
    """Two requests with the same bytes share Gradio's content-named folder; the first used to remove
    it, the second's rename then failed after its answer and the inpaint page waited for ever."""
    from webui.security.uploads import EMPTY_FOLDER_SECONDS, UploadStore, _check_and_move

    store = UploadStore(tmp_path)
    stored = tmp_path / "3f2a" / "layer_0.png"
    stored.parent.mkdir()
    stored.write_bytes(_png_bytes("white"))
    kept, problem = _check_and_move([str(stored)], store, None)
    assert problem == "" and stored.parent.is_dir() and not stored.exists()
    os.rename(_write(tmp_path / "tmp-second", _png_bytes("white")), stored)  # the second request's rename
    assert stored.exists()
    old = time.time() - EMPTY_FOLDER_SECONDS - 1
    stored.unlink()
    os.utime(stored.parent, (old, old))
    store.prune()
    assert not stored.parent.exists() and Path(kept[0]).exists()  # old and empty: swept; the kept file stays


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
