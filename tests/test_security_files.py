"""Files: the server hands out only what Gradio itself cached, never a file named by a request.

Every route that takes a path or a file name is tried with traversal payloads (``..``, absolute
paths, URL-encoded and double-encoded forms, backslashes, NUL, symlinks planted in the upload and
outputs folders, URLs for SSRF): Gradio's ``file=`` routes, its static routes, every UI event that
takes an image (the path inside the event's input, the CVE-2024-1561 pattern), our API's model,
VAE and LoRA names, the output file names and the Extensions tab's names. Uploads are images or
refused before use.
"""

from __future__ import annotations

import http.client
import http.server
import json
import secrets
import shutil
import struct
import threading
import zlib
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests import headers as H
from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.security_figures import record

MARK = "TOPSECRET-" + secrets.token_hex(4)
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=")
FILE_COMPONENTS = {"Image", "ImageEditor", "Gallery", "File", "Files", "Video", "Audio", "UploadButton", "Model3D"}


def _png_with_infotext(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (16, 16), "red").save(path, pnginfo=info)
    return path


def _hit_recorder(hits: list[str]) -> type:
    """A request handler that records every request it gets (an SSRF target) in ``hits``."""

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(MARK.encode())

        def log_message(self, *args) -> None:
            pass

    return Recorder


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The composed app over a folder with secrets beside it, symlinks planted, and an SSRF target."""
    from gradio.utils import get_upload_folder

    from webui.app import build_server

    root = tmp_path_factory.mktemp("files")
    secret_txt = root / "secret.txt"
    secret_txt.write_text(MARK)
    secret_png = _png_with_infotext(root / "secret.png", MARK)
    H.write_safetensors(root / "models" / "Stable-diffusion" / "inside.safetensors", H.SD15, metadata={"m": MARK})
    H.write_safetensors(root / "outside" / "outside-model.safetensors", H.SD15)
    (root / "config.json").write_text(json.dumps({"filename_pattern": "[seed]"}))
    services = tmp_services(root)
    upload_dir = Path(get_upload_folder()) / f"k1-test-{secrets.token_hex(6)}"
    upload_dir.mkdir(parents=True)
    (upload_dir / "link.png").symlink_to(secret_png)
    (services.paths.outputs / "link.txt").symlink_to(secret_txt)
    hits: list[str] = []
    hit_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _hit_recorder(hits))
    threading.Thread(target=hit_server.serve_forever, daemon=True).start()
    app = build_server(services)
    try:
        with serve_api(services, app=app) as url:
            yield {
                "url": url,
                "app": app,
                "services": services,
                "root": root,
                "secret_txt": secret_txt,
                "secret_png": secret_png,
                "upload_dir": upload_dir,
                "upload_root": Path(get_upload_folder()),
                "hit": f"127.0.0.1:{hit_server.server_address[1]}",
                "hits": hits,
            }
    finally:
        hit_server.shutdown()
        shutil.rmtree(upload_dir, ignore_errors=True)


def raw_get(url: str, target: str) -> tuple[int, str]:
    """GET with the request target sent byte for byte (no client-side normalising of ``..`` or %-escapes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _payloads(site: dict) -> list[str]:
    secret = str(site["secret_txt"])
    up = str(site["upload_dir"])
    depth = "../" * 12
    return [
        secret,
        "/etc/passwd",
        str(site["root"] / "config.json"),
        str(site["root"] / "models" / "Stable-diffusion" / "inside.safetensors"),
        depth + secret.lstrip("/"),
        f"{up}/../../../../../../..{secret}",
        f"{site['upload_root']}/../{Path(secret).relative_to('/')}",
        quote(secret, safe=""),
        quote(depth, safe="") + quote(secret.lstrip("/"), safe=""),
        "..%2f" * 12 + secret.lstrip("/"),
        "%2e%2e/" * 12 + secret.lstrip("/"),
        "%252e%252e%252f" * 12 + secret.lstrip("/"),
        "..\\" * 12 + secret.lstrip("/").replace("/", "\\"),
        secret + "%00.png",
        f"{up}/link.png",
        str(site["services"].paths.outputs / "link.txt"),
        f"http://{site['hit']}/ssrf",
        f"https://{site['hit']}/ssrf",
        f"//{site['hit']}/ssrf",
        f"file://{secret}",
        f"\\\\{site['hit'].split(':')[0]}\\share\\x.png",
    ]


def test_file_routes_serve_no_file_the_app_did_not_cache(site):
    leaks, statuses = [], []
    for route in FILE_ROUTES:
        for payload in _payloads(site):
            status, body = raw_get(site["url"], route + payload)
            statuses.append(status)
            if MARK in body or "root:x:0:0" in body:
                leaks.append((route, payload, status))
    record("files", requests=len(statuses), files_leaked=len(leaks), ssrf_requests=len(site["hits"]))
    assert not leaks
    assert all(s in (400, 401, 403, 404, 405) for s in statuses), statuses
    assert site["hits"] == []  # no request was made on a client's behalf (SSRF)


@pytest.mark.parametrize(
    "target,remote",
    [
        ("https://example.com/a.png", True),
        ("http://10.0.0.1/", True),
        ("//example.com/x", True),
        ("data:image/png;base64,AAAA", True),
        ("\\\\server\\share\\x.png", True),
        ("/tmp/gradio/abc/x.png", False),
        ("C:\\Users\\me\\x.png", False),
        ("C:/Users/me/x.png", False),
        ("relative/x.png", False),
    ],
)
def test_remote_targets_are_told_apart_from_local_paths(target, remote):
    from webui.security.files import is_remote_target

    assert is_remote_target(target) is remote


def test_a_public_url_is_refused_before_gradio_could_fetch_it(site):
    for route in ("/gradio_api/file=", "/gradio_api/file/", "/gradio_api/proxy="):
        status, body = raw_get(site["url"], route + "https://example.com/picture.png")
        assert status == 403 and "does not fetch URLs" in body, (route, status, body[:200])


def test_file_route_still_serves_a_real_upload(site):
    """The control: the refusals above are not a broken route."""
    with httpx.Client(base_url=site["url"], timeout=30) as client:
        png = site["secret_png"].read_bytes()
        (path,) = client.post("/gradio_api/upload", files={"files": ("mine.png", png, "image/png")}).json()
        assert client.get(f"/gradio_api/file={path}").content == png


@pytest.mark.parametrize(
    "target",
    [
        "/static/" + "../" * 10 + "etc/passwd",
        "/static/" + "..%2f" * 10 + "etc/passwd",
        "/assets/" + "..%2f" * 10 + "etc/passwd",
        "/assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/svelte/" + "..%2f" * 10 + "etc/passwd",
        "/gradio_api/custom_component/x/y/z/" + "..%2f" * 10 + "etc%2fpasswd",
        "/favicon.ico/../../../../etc/passwd",
        "/gradio_api/proxy=http://127.0.0.1/",
    ],
)
def test_static_routes_do_not_traverse(site, target):
    status, body = raw_get(site["url"], target)
    assert "root:x:0:0" not in body and MARK not in body, (target, status)


# --- paths inside UI events (the value of an image input) -----------------------------------------


def _gradio_blocks(app):
    mount = next(r for r in app.router.routes if getattr(r, "path", None) in ("", "/") and hasattr(r, "app"))
    return mount.app.get_blocks()


def _file_value(kind: str, path: str) -> object:
    data = {"path": path, "meta": {"_type": "gradio.FileData"}}
    if kind == "Gallery":
        return [{"image": data, "caption": None}]
    if kind == "ImageEditor":
        return {"background": data, "layers": [], "composite": data, "id": None}
    return data


def _call(client: httpx.Client, api_name: str, data: list) -> str:
    """Run a UI event through Gradio's HTTP API; the event stream's text (``event: complete`` or ``error``),
    or ``refused <status>: <answer>`` when the app's guard refused the event before Gradio ran it."""
    started = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if started.status_code != 200:
        assert started.status_code in (404, 422) and started.json()["detail"], started.text
        return f"refused {started.status_code}: {started.text}"
    return client.get(f"/gradio_api/call/{api_name}/{started.json()['event_id']}").text


def _refused(text: str) -> bool:
    return text.startswith("refused ") or "event: error" in text


def _file_events(app) -> list:
    blocks = _gradio_blocks(app)
    return [fn for fn in blocks.fns.values() if FILE_COMPONENTS & {type(b).__name__ for b in fn.inputs}]


def _event_data(fn, path: str) -> list:
    data = []
    for block in fn.inputs:
        kind = type(block).__name__
        data.append(_file_value(kind, path) if kind in FILE_COMPONENTS else getattr(block, "value", None))
    return data


def test_every_image_input_refuses_a_path_it_did_not_receive_as_an_upload(site):
    events = _file_events(site["app"])
    assert len(events) >= 5  # img2img, inpaint, PNG Info and the galleries' "send to"
    before = set(site["upload_root"].rglob("secret*"))
    failures = []
    with httpx.Client(base_url=site["url"], timeout=60) as client:
        for fn in events:
            for path in (str(site["secret_png"]), "../" * 12 + str(site["secret_png"]).lstrip("/"), "/etc/passwd"):
                text = _call(client, fn.api_name, _event_data(fn, path))
                record(
                    "files",
                    requests=1,
                    event_path_injections=1,
                    event_injections_accepted=int(not _refused(text)),
                )
                if MARK in text or "root:x:0:0" in text or not _refused(text):
                    failures.append(f"{fn.api_name} {path}: {text[:200]}")
                elif "not uploaded" not in text:
                    failures.append(f"{fn.api_name} {path}: refused for another reason: {text[:200]}")
    assert not failures, "\n".join(failures)
    assert set(site["upload_root"].rglob("secret*")) == before  # nothing was copied into the cache


def test_gradio_itself_still_refuses_paths_it_did_not_upload(site):
    """Gradio's own check, without the app's guard in front: it runs only while ``blocks.has_launched`` is
    set, which ``launch()`` sets and ``mount_gradio_app`` does not (``webui.security.mount`` sets it). If a
    Gradio upgrade renames that switch, this fails: an event would copy any readable file into the cache."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from gradio import processing_utils
    from gradio.context import LocalContext
    from gradio.exceptions import InvalidPathError

    blocks = _gradio_blocks(site["app"])
    image = next(b for b in blocks.blocks.values() if type(b).__name__ == "Image")

    def preprocess(path: str) -> None:  # in a thread of its own: no event loop of an earlier test in the way
        LocalContext.blocks.set(blocks)  # what Gradio sets while it runs an event
        value = {"path": path, "meta": {"_type": "gradio.FileData"}}
        asyncio.run(processing_utils.async_move_files_to_cache(value, image, check_in_upload_folder=True))

    with ThreadPoolExecutor(1) as pool:
        for path in (str(site["secret_png"]), "/etc/passwd"):
            with pytest.raises(InvalidPathError, match="not uploaded by a user"):
                pool.submit(preprocess, path).result()


def test_png_info_reads_an_uploaded_image(site):
    """The control for the test above: the same event with a real upload returns the infotext."""
    with httpx.Client(base_url=site["url"], timeout=60) as client:
        png = site["secret_png"].read_bytes()
        (path,) = client.post("/gradio_api/upload", files={"files": ("photo.png", png, "image/png")}).json()
        assert MARK in _call(client, "show", [_file_value("Image", path)])


def test_an_event_input_url_is_not_fetched_from_a_private_address(site):
    url = f"http://{site['hit']}/ssrf.png"
    with httpx.Client(base_url=site["url"], timeout=60) as client:
        for value in (_file_value("Image", url), {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}):
            text = _call(client, "show", [value])
            assert MARK not in text and _refused(text), text[:300]
    assert site["hits"] == []


# --- uploads that are not images -------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png() -> bytes:
    """A 50 kB-wide, 50 kB-tall PNG header over a few bytes: a decompression bomb if decoded."""
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


NOT_IMAGES = {
    "text.png": b"just some text, not an image",
    "page.png": b"<html><script>alert(document.cookie)</script></html>",
    "truncated.png": b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))[:10],
    "bomb.png": _bomb_png(),
    "model.png": H.header_bytes(H.SD15)[0],
}


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_uploads_that_are_not_images_are_refused_and_not_kept(site, name):
    before = set(site["upload_root"].rglob("*"))
    with httpx.Client(base_url=site["url"], timeout=60) as client:
        r = client.post("/gradio_api/upload", files={"files": (name, NOT_IMAGES[name], "image/png")})
        record("files", requests=1, non_image_uploads=1, non_image_uploads_accepted=int(r.status_code == 200))
        assert r.status_code == 415, r.text
        assert name in r.json()["detail"] and ("not" in r.json()["detail"] or "pixels" in r.json()["detail"])
        assert client.get("/sdapi/v1/sd-models").status_code == 200  # still serving
    assert set(site["upload_root"].rglob("*")) <= before  # nothing of it was kept


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_a_non_image_planted_in_the_upload_folder_is_refused_by_every_image_input(site, name):
    """Whatever reaches the upload folder another way, an event never hands it to PIL unless it is an image."""
    planted = site["upload_dir"] / name
    planted.write_bytes(NOT_IMAGES[name])
    failures = []
    with httpx.Client(base_url=site["url"], timeout=60) as client:
        for fn in _file_events(site["app"]):
            if any(type(b).__name__ == "Gallery" for b in fn.inputs):
                continue  # galleries are outputs the page fills itself; their "send to" reads the job's images
            text = _call(client, fn.api_name, _event_data(fn, str(planted)))
            record("files", requests=1, non_image_events=1, non_image_events_accepted=int(not _refused(text)))
            if not _refused(text):
                failures.append(f"{fn.api_name}: {text[:200]}")
    assert not failures, "\n".join(failures)
    assert site["services"].generation.waiting() == []  # no job was queued from a bad file


# --- names our API and UI turn into paths -----------------------------------------------------------


def _name_payloads(site: dict) -> list[str]:
    outside = site["root"] / "outside" / "outside-model.safetensors"
    return [
        "../outside/outside-model.safetensors",
        "../../outside/outside-model",
        str(outside),
        str(outside).replace("/", "\\"),
        "Stable-diffusion/../../outside/outside-model.safetensors",
        "%2e%2e%2foutside%2foutside-model.safetensors",
        "/etc/passwd",
    ]


def test_api_model_vae_and_lora_names_never_reach_outside_the_models_folder(site):
    with httpx.Client(base_url=site["url"], timeout=20) as client:
        for name in _name_payloads(site):
            for body in (
                {"prompt": "x", "steps": 1, "override_settings": {"sd_model_checkpoint": name}},
                {"prompt": "x", "steps": 1, "override_settings": {"sd_vae": name}},
                {"prompt": f"x <lora:{name}:1>", "steps": 1},
                {"prompt": "x", "steps": 1, "refiner_checkpoint": name, "refiner_switch_at": 0.5},
            ):
                r = client.post("/sdapi/v1/txt2img", json=body)
                record("files", requests=1, api_name_traversals=1, api_names_resolved=int(r.status_code != 404))
                assert r.status_code == 404, (name, body, r.status_code, r.text[:200])
                assert MARK not in r.text
            r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
            assert r.status_code == 404, (name, r.text[:200])
    assert site["services"].manager.current_entry is None  # nothing was loaded
    assert site["services"].generation.waiting() == []


def test_output_file_names_stay_inside_the_outputs_folder(tmp_path):
    from webui.outputs.writer import OutputError, OutputWriter

    outputs = tmp_path / "outputs"
    writer = OutputWriter(outputs, filename_pattern="../../[prompt]/[model_name]/..\\[sampler]")
    tokens = {"prompt": "../../../etc/evil", "model_name": "/abs/../../x", "sampler": "..\\..\\y"}
    saved = writer.save(Image.new("RGB", (8, 8)), category="txt2img", infotext="", seed=1, tokens=tokens)
    assert saved.resolve().is_relative_to(outputs.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    # a date folder that is a symlink out of the outputs folder is refused, and nothing is written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (outputs / "img2img-images").mkdir()
    writer = OutputWriter(outputs, date_format="linked")
    (outputs / "img2img-images" / "linked").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="outside the outputs folder"):
        writer.save(Image.new("RGB", (8, 8)), category="img2img", infotext="", seed=1)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["../../etc", "/tmp", "..\\x", "example-tab/../..", ""])
def test_extension_actions_take_only_known_extension_names(site, name):
    from webui.ui.extensions_tab import install_requirements, set_enabled

    state = site["services"].paths.config_file.with_name("extensions.json")
    before = state.read_bytes() if state.exists() else None
    backend = site["services"].backend
    for message in (
        set_enabled(backend, name, True),
        set_enabled(backend, name, False),
        install_requirements(backend, name),
    ):
        assert "unknown extension" in message or "Pick an extension" in message, message
    assert (state.read_bytes() if state.exists() else None) == before


def test_private_files_are_blocked_unless_they_hold_the_pages_images(tmp_path):
    from types import SimpleNamespace

    from webui.config import Settings
    from webui.security.files import gradio_file_options

    paths = SimpleNamespace(
        models=tmp_path / "models",
        extensions=tmp_path / "extensions",
        config_file=tmp_path / "config.json",
        cache=tmp_path / "cache",
        outputs=tmp_path / "outputs",
    )
    options = gradio_file_options(paths, Settings(auth_file=str(tmp_path / "users.txt")))
    blocked = set(options["blocked_paths"])
    for private in ("models", "extensions", "config.json", "extensions.json", "cache/hashes.json", "users.txt"):
        assert str(tmp_path / private) in blocked, private
    assert options["allowed_paths"] == [] and options["max_file_size"]
    paths.outputs = paths.models / "outputs"  # outputs inside the models folder: blocking it would hide them
    assert str(paths.models) not in gradio_file_options(paths)["blocked_paths"]
