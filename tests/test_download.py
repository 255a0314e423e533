"""Default-checkpoint downloader against a local HTTP server (127.0.0.1, no network)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import struct
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from webui.models import download as dl
from webui.models.download import (
    DEFAULT_CHECKPOINTS,
    DefaultCheckpoint,
    DownloadCancelled,
    DownloadError,
    UnsafePathError,
    download_default,
    download_file,
    find_default,
    part_path,
    safe_destination,
)

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
TIMEOUT = 5.0


@dataclass
class ServedFile:
    """What the test server serves and what it saw; tests change it between calls."""

    data: bytes
    url: str = ""
    cut_after: int | None = None  # the next response stops after this many body bytes
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    ranges: list[str | None] = field(default_factory=list)  # Range header of each request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_cut(self) -> int | None:
        with self.lock:
            cut, self.cut_after = self.cut_after, None
            return cut

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _handler(served: ServedFile) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT  # a stuck client cannot hold a server thread forever

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            with served.lock:
                served.ranges.append(rng)
            if self.path == "/redirect":  # like Hugging Face sending clients to its CDN
                self.send_response(302)
                self.send_header("Location", served.url)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/" + served.url.rsplit("/", 1)[-1]:
                self.send_error(404)
                return
            data, start = served.data, 0
            if rng and not served.ignore_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = served.take_cut()
            try:
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client cancelled

    return Handler


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(1234).randbytes(3 * 1024 * 1024 + 17)


@pytest.fixture
def server(payload: bytes, monkeypatch: pytest.MonkeyPatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    served = ServedFile(data=payload)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/model.bin"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


def _get(served: ServedFile, dest: Path, **kw) -> Path:
    kw.setdefault("sha256", served.sha256)
    kw.setdefault("expected_size", len(served.data))
    return download_file(served.url, dest, timeout=TIMEOUT, **kw)


def test_full_download_lands_in_place_without_part(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    assert _get(server, dest) == dest
    assert dest.read_bytes() == server.data
    assert not part_path(dest).exists()
    assert server.ranges == [None]


def test_interrupted_download_keeps_part_then_resumes_with_range(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    server.cut_after = 1_000_000
    with pytest.raises(DownloadError, match="resume") as info:
        _get(server, dest)
    assert info.value.resumable
    assert not dest.exists()
    assert part_path(dest).stat().st_size == 1_000_000

    _get(server, dest)
    assert server.ranges[-1] == "bytes=1000000-"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == server.sha256
    assert not part_path(dest).exists()


def test_resume_through_a_redirect_keeps_the_range(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    server.cut_after = 700_000
    with pytest.raises(DownloadError):
        _get(server, dest)
    redirect = server.url.rsplit("/", 1)[0] + "/redirect"
    download_file(redirect, dest, sha256=server.sha256, expected_size=len(server.data), timeout=TIMEOUT)
    assert server.ranges[-2:] == ["bytes=700000-", "bytes=700000-"]
    assert dest.read_bytes() == server.data


def test_wrong_hash_deletes_everything(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        _get(server, dest, sha256=wrong)
    assert wrong in str(info.value) and server.sha256 in str(info.value)
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_server_ignoring_range_restarts_from_zero(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    server.cut_after = 500_000
    with pytest.raises(DownloadError):
        _get(server, dest)
    server.ignore_range = True
    _get(server, dest)
    assert server.ranges[-1] == "bytes=500000-"
    assert dest.read_bytes() == server.data


def test_cancel_keeps_part_for_resume(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    cancel = threading.Event()
    with pytest.raises(DownloadCancelled) as info:
        _get(server, dest, cancel=cancel, chunk_size=256 * 1024, progress=lambda done, total: cancel.set())
    assert info.value.resumable
    assert part_path(dest).stat().st_size == 256 * 1024
    assert not dest.exists()

    _get(server, dest)
    assert server.ranges[-1] == f"bytes={256 * 1024}-"
    assert dest.read_bytes() == server.data


def test_cancel_before_start_makes_no_request(server: ServedFile, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        _get(server, tmp_path / "model.bin", cancel=cancel)
    assert server.ranges == []


def test_progress_is_monotonic_and_ends_at_total(server: ServedFile, tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    _get(server, tmp_path / "model.bin", chunk_size=256 * 1024, progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert len(calls) > 3
    assert done == sorted(done)
    assert calls[-1] == (len(server.data), len(server.data))
    assert {t for _, t in calls} == {len(server.data)}


def test_complete_part_answered_416_is_verified_and_moved(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    part_path(dest).write_bytes(server.data)
    _get(server, dest, expected_size=None)
    assert server.ranges == [f"bytes={len(server.data)}-"]
    assert dest.read_bytes() == server.data


def test_complete_part_of_known_size_needs_no_request(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    part_path(dest).write_bytes(server.data)
    _get(server, dest)
    assert server.ranges == []
    assert dest.read_bytes() == server.data


def test_oversized_part_is_discarded(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    part_path(dest).write_bytes(server.data + b"junk")
    _get(server, dest)
    assert server.ranges == [None]
    assert dest.read_bytes() == server.data


def test_size_announced_by_server_differs_from_expected(server: ServedFile, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    with pytest.raises(DownloadError, match="has changed"):
        _get(server, dest, expected_size=len(server.data) + 1, sha256=None)
    assert not dest.exists() and not part_path(dest).exists()


def test_http_error_is_reported(server: ServedFile, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "-missing", tmp_path / "x.bin", sha256=None, expected_size=None, timeout=TIMEOUT)


def test_connection_refused_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot connect") as info:
        download_file(f"http://127.0.0.1:{port}/m.bin", tmp_path / "m.bin", timeout=TIMEOUT)
    assert not info.value.resumable


def test_not_enough_disk_space_fails_before_downloading(
    server: ServedFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DownloadError, match="not enough free disk space"):
        _get(server, tmp_path / "model.bin")
    assert server.ranges == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/m.bin", "javascript:alert(1)", "m.bin"])
def test_only_http_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="only http"):
        download_file(url, tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 8


@pytest.mark.parametrize("valid", [True, False])
def test_without_sha_a_safetensors_header_is_checked(server: ServedFile, tmp_path: Path, valid: bool) -> None:
    server.data = _safetensors_bytes() if valid else b"<html>rate limited</html>"
    server.url = server.url.rsplit("/", 1)[0] + "/m.safetensors"
    dest = tmp_path / "m.safetensors"
    if valid:
        _get(server, dest, sha256=None, expected_size=None)
        assert dest.read_bytes() == server.data
    else:
        with pytest.raises(DownloadError, match="not a usable safetensors"):
            _get(server, dest, sha256=None, expected_size=None)
        assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.parametrize(
    ("subfolder", "name"),
    [
        ("Stable-diffusion", "../evil.safetensors"),
        ("Stable-diffusion", ".."),
        ("Stable-diffusion", "."),
        ("Stable-diffusion", ""),
        ("Stable-diffusion", "/etc/passwd"),
        ("Stable-diffusion", "a/b.safetensors"),
        ("Stable-diffusion", "a\\b.safetensors"),
        ("Stable-diffusion", "C:evil.safetensors"),
        ("../outside", "m.safetensors"),
        ("/abs", "m.safetensors"),
        ("a/../../x", "m.safetensors"),
    ],
)
def test_safe_destination_refuses_escapes(tmp_path: Path, subfolder: str, name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_destination(tmp_path, subfolder, name)


def test_safe_destination_accepts_plain_names(tmp_path: Path) -> None:
    assert safe_destination(tmp_path, "Stable-diffusion", "m.safetensors") == tmp_path / "Stable-diffusion" / "m.safetensors"
    assert safe_destination(tmp_path, "Lora/sdxl", "x.safetensors") == tmp_path / "Lora" / "sdxl" / "x.safetensors"


def test_download_default_saves_under_stable_diffusion(server: ServedFile, tmp_path: Path) -> None:
    entry = replace(
        DEFAULT_CHECKPOINTS[0], url=server.url, file_name="model.bin", size=len(server.data), sha256=server.sha256
    )
    path = download_default(entry, tmp_path, timeout=TIMEOUT)
    assert path == tmp_path / "Stable-diffusion" / "model.bin"
    assert path.read_bytes() == server.data
    # Already there: returned as is, without asking the server again.
    assert download_default(entry, tmp_path, timeout=TIMEOUT) == path
    assert server.ranges == [None]


def test_download_default_refuses_unsafe_file_name(server: ServedFile, tmp_path: Path) -> None:
    entry = replace(DEFAULT_CHECKPOINTS[0], url=server.url, file_name="../../evil.bin")
    with pytest.raises(UnsafePathError):
        download_default(entry, tmp_path / "models", timeout=TIMEOUT)
    assert server.ranges == []
    assert not (tmp_path / "evil.bin").exists()


def test_default_table_is_well_formed(tmp_path: Path) -> None:
    assert len({e.name for e in DEFAULT_CHECKPOINTS}) == len(DEFAULT_CHECKPOINTS)
    for entry in DEFAULT_CHECKPOINTS:
        assert isinstance(entry, DefaultCheckpoint)
        assert entry.url.startswith("https://") and entry.url.endswith("/" + entry.file_name)
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        safe_destination(tmp_path, "Stable-diffusion", entry.file_name)
    assert find_default("sdxl").family == "sdxl"
    with pytest.raises(KeyError, match="sd15"):
        find_default("sd9")


def test_t5_tokenizer_is_fetched_once_into_its_folder(server: ServedFile, tmp_path: Path) -> None:
    base = server.url.rsplit("/", 1)[0]
    dest = tmp_path / "models" / "text_encoder" / "t5_tokenizer"
    files = (("model.bin", len(server.data), server.sha256),)  # the server's one file stands in for spiece.model
    assert dl.download_t5_tokenizer(dest, base_url=base, files=files, timeout=TIMEOUT) == dest
    assert (dest / "model.bin").read_bytes() == server.data
    assert "T5Tokenizer" in (dest / "tokenizer_config.json").read_text()
    dl.download_t5_tokenizer(dest, base_url=base, files=files, timeout=TIMEOUT)
    assert server.ranges == [None]  # the second call found everything in place
