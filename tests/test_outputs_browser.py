"""The outputs browser: the index of outputs/ (order, pages, filters), details, trash, refusals, thumbnails."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from webui.backend import NotFound, Refused
from webui.backend.local_outputs import OutputsBrowser
from webui.outputs.writer import encode_image

BASE_NS = 1_700_000_000 * 10**9
INFOTEXT = (
    "a red fox in snow\nNegative prompt: blurry\nSteps: 7, Sampler: Euler a, CFG scale: 5, Seed: 4242, Size: 32x32"
)

# (relative path, minutes after BASE): the expected order is by mtime, newest first, across folders.
TREE = (
    ("txt2img-images/2026-11-30/00001-1.png", 1),
    ("txt2img-images/2026-11-30/00002-2.png", 2),
    ("txt2img-images/2026-12-01/00001-3.png", 5),
    ("img2img-images/2026-12-01/00001-4.png", 4),
    ("txt2img-grids/2026-12-01/grid-0001.png", 6),
    ("extras-images/2026-12-01/00001.jpg", 3),
    ("txt2img-images/2026-12-01/00002-5.webp", 7),
)


def _write(path: Path, minutes: int, infotext: str = "", color=(90, 20, 200), fmt: str = "png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(Image.new("RGB", (32, 32), color), infotext, fmt))
    stamp = BASE_NS + minutes * 60 * 10**9
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    for rel, minutes in TREE:
        fmt = Path(rel).suffix[1:].replace("jpg", "jpg")
        _write(root / rel, minutes, INFOTEXT if rel.endswith("00001-3.png") else "", fmt=fmt)
    # Never listed: hidden files (the writer's temp files), the trash, text files, other folders.
    (root / "txt2img-images/2026-12-01/.123-abcdef0123456789.png.tmp").write_bytes(b"x")
    _write(root / ".trash/2026-11-01/txt2img-images/old.png", 9)
    (root / "txt2img-images/2026-12-01/00001-3.txt").write_text(INFOTEXT)
    _write(root / "somewhere-else/x.png", 9)
    return root


@pytest.fixture
def browser(tree: Path, tmp_path: Path) -> OutputsBrowser:
    return OutputsBrowser(tree, tmp_path / "cache" / "thumbnails")


def _ids(page) -> list[str]:
    return [e.id for e in page.entries]


NEWEST_FIRST = [rel for rel, _ in sorted(TREE, key=lambda t: -t[1])]


def test_every_image_newest_first_and_nothing_else(browser):
    page = browser.page(1, "all", "", 36)
    assert _ids(page) == NEWEST_FIRST
    assert page.total == len(TREE) and page.pages == 1 and page.dates == ("2026-12-01", "2026-11-30")


def test_pages_split_the_list_and_a_page_past_the_end_is_the_last(browser):
    pages = [browser.page(n, "all", "", 3) for n in (1, 2, 3)]
    assert [p.pages for p in pages] == [3, 3, 3]
    assert [i for p in pages for i in _ids(p)] == NEWEST_FIRST
    assert _ids(browser.page(99, "all", "", 3)) == NEWEST_FIRST[6:] and browser.page(99, "all", "", 3).page == 3
    assert browser.page(0, "all", "", 3).page == 1


@pytest.mark.parametrize(
    ("folder", "date", "expected"),
    [
        ("txt2img", "", ["txt2img-images/2026-12-01/00002-5.webp", "txt2img-images/2026-12-01/00001-3.png",
                         "txt2img-images/2026-11-30/00002-2.png", "txt2img-images/2026-11-30/00001-1.png"]),
        ("txt2img", "2026-11-30", ["txt2img-images/2026-11-30/00002-2.png", "txt2img-images/2026-11-30/00001-1.png"]),
        ("img2img", "", ["img2img-images/2026-12-01/00001-4.png"]),
        ("grids", "", ["txt2img-grids/2026-12-01/grid-0001.png"]),
        ("extras", "2026-12-01", ["extras-images/2026-12-01/00001.jpg"]),
        ("img2img", "2026-11-30", []),
    ],
)  # fmt: skip
def test_folder_and_date_filters(browser, folder, date, expected):
    assert _ids(browser.page(1, folder, date, 36)) == expected


def test_an_unknown_folder_filter_is_refused_with_the_valid_ones(browser):
    with pytest.raises(Refused, match="txt2img"):
        browser.page(1, "../models", "", 36)


def test_a_new_image_is_listed_and_a_removed_one_is_gone_on_the_next_listing(browser, tree):
    browser.page(1, "all", "", 36)
    _write(tree / "txt2img-images/2026-12-02/00001-9.png", 60)
    (tree / "txt2img-images/2026-11-30/00001-1.png").unlink()
    ids = _ids(browser.page(1, "all", "", 36))
    assert ids[0] == "txt2img-images/2026-12-02/00001-9.png"
    assert "txt2img-images/2026-11-30/00001-1.png" not in ids


def test_an_unchanged_folder_is_not_scanned_again(browser, tree):
    """The index keeps each folder's scan while the folder's mtime stays (and is old enough to trust)."""
    folder = tree / "txt2img-images/2026-11-30"
    old = BASE_NS  # long ago: the mtime is trustworthy
    os.utime(folder, ns=(old, old))
    browser.page(1, "all", "", 36)
    scan = browser.index._scans["txt2img-images/2026-11-30"]
    browser.page(1, "all", "", 36)
    assert browser.index._scans["txt2img-images/2026-11-30"] is scan
    _write(folder / "00003-x.png", 0)  # the folder's mtime moves: scanned again
    browser.page(1, "all", "", 36)
    assert browser.index._scans["txt2img-images/2026-11-30"] is not scan


def test_a_change_in_the_same_clock_tick_as_the_last_scan_is_not_missed(browser, tree):
    """A folder whose mtime is recent may change again without its mtime moving: it is scanned again."""
    folder = tree / "txt2img-images/2026-11-30"
    recent = time.time_ns()
    os.utime(folder, ns=(recent, recent))
    browser.page(1, "all", "", 36)
    _write(folder / "00003-same-tick.png", 90)
    os.utime(folder, ns=(recent, recent))  # as if the change came within the same tick
    assert "txt2img-images/2026-11-30/00003-same-tick.png" in _ids(browser.page(1, "all", "", 36))


def test_info_reads_the_infotext_and_says_where_the_folder_is(browser, tree):
    info = browser.info("txt2img-images/2026-12-01/00001-3.png")
    assert info.infotext == INFOTEXT
    assert info.parameters["Prompt"] == "a red fox in snow" and info.parameters["Seed"] == "4242"
    assert (info.width, info.height) == (32, 32)
    assert Path(info.folder_path) == tree / "txt2img-images" / "2026-12-01"
    assert browser.info("txt2img-images/2026-11-30/00001-1.png").infotext == ""


def test_the_page_shows_the_infotext_rows_and_sends_the_image_and_infotext(browser):
    from webui.ui.outputs_tab import read_for_send, show_entry

    image_id = "txt2img-images/2026-12-01/00001-3.png"
    image, line, text, rows, folder, message = show_entry(_Backend(browser), image_id)
    assert image.size == (32, 32) and "00001-3.png" in line and text == INFOTEXT and message == ""
    assert ["Prompt", "a red fox in snow"] in rows and ["Seed", "4242"] in rows
    assert folder.endswith("2026-12-01")
    sent_image, sent_text = read_for_send(_Backend(browser), image_id, text)
    assert sent_image.size == (32, 32) and sent_text == INFOTEXT
    assert show_entry(_Backend(browser), "../../etc/passwd")[-1]  # refused in words, no exception


def test_trash_moves_the_image_and_its_sidecar_and_the_list_forgets_it(browser, tree):
    image_id = "txt2img-images/2026-12-01/00001-3.png"
    done = browser.trash(image_id)
    day = datetime.now().strftime("%Y-%m-%d")
    moved = tree / ".trash" / day / "txt2img-images" / "2026-12-01" / "00001-3.png"
    assert [Path(p) for p in done.moved_to] == [moved, moved.with_suffix(".txt")]
    assert moved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and moved.with_suffix(".txt").read_text() == INFOTEXT
    assert not (tree / image_id).exists() and not (tree / image_id).with_suffix(".txt").exists()
    assert image_id not in _ids(browser.page(1, "all", "", 36))
    with pytest.raises(NotFound):
        browser.info(image_id)


def test_a_second_image_of_the_same_name_trashed_the_same_day_keeps_the_first(browser, tree):
    image_id = "txt2img-images/2026-11-30/00001-1.png"
    first = Path(browser.trash(image_id).moved_to[0])
    _write(tree / image_id, 30, color=(1, 2, 3))
    second = Path(browser.trash(image_id).moved_to[0])
    assert first != second and first.exists() and second.exists() and second.name == "00001-1-1.png"


@pytest.mark.parametrize(
    "bad_id",
    [
        "../outside.png",
        "txt2img-images/../../outside.png",
        "txt2img-images/2026-12-01/../../../outside.png",
        "/etc/passwd",
        "",
        None,
        42,
        "txt2img-images\\..\\..\\outside.png",
        ".trash/2026-11-01/txt2img-images/old.png",
        "somewhere-else/x.png",
        "txt2img-images/2026-12-01/.123-abcdef0123456789.png.tmp",
        "txt2img-images/2026-12-01/00001-3.txt",
        "txt2img-images/2026-12-01/missing.png",
    ],
)
def test_ids_that_are_not_listed_images_are_refused_before_any_file_is_touched(browser, tree, bad_id):
    (tree.parent / "outside.png").write_bytes(encode_image(Image.new("RGB", (8, 8)), "secret", "png"))
    for action in (browser.info, browser.image, browser.thumbnail, browser.trash):
        with pytest.raises(NotFound):
            action(bad_id)
    assert (tree.parent / "outside.png").exists()
    assert (tree / ".trash/2026-11-01/txt2img-images/old.png").exists()


@pytest.mark.parametrize(
    "bad_id",
    ["txt2img-images/../../x.png", "txt2img-images/./a.png", "txt2img-images//a.png", "/txt2img-images/a.png",
     "models/x.safetensors", "txt2img-images/.hidden.png", "txt2img-images\\a.png", "txt2img-images/a\x00.png"],
)  # fmt: skip
def test_the_id_check_alone_refuses_paths_that_leave_or_hide_in_the_folder(bad_id):
    """The first of the two checks (the second: the id must be one the index lists now)."""
    from webui.outputs.browse import OutputRefused, check_id

    with pytest.raises(OutputRefused):
        check_id(bad_id)
    assert check_id("txt2img-images/2026-12-01/00001-3.png") == "txt2img-images/2026-12-01/00001-3.png"


def test_symlinks_out_of_the_folder_are_neither_listed_nor_followed(browser, tree, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    _write(secret / "private.png", 100, "private")
    (tree / "txt2img-images/2026-12-01/link.png").symlink_to(secret / "private.png")
    (tree / "txt2img-images/linked-day").symlink_to(secret, target_is_directory=True)
    (tree / "grids-elsewhere").symlink_to(secret, target_is_directory=True)
    ids = _ids(browser.page(1, "all", "", 36))
    assert ids == NEWEST_FIRST
    for bad in ("txt2img-images/2026-12-01/link.png", "txt2img-images/linked-day/private.png"):
        with pytest.raises(NotFound):
            browser.image(bad)


def test_a_listed_file_replaced_by_a_symlink_is_refused(browser, tree, tmp_path):
    image_id = "txt2img-images/2026-11-30/00002-2.png"
    browser.page(1, "all", "", 36)
    outside = tmp_path / "elsewhere.png"
    _write(outside, 1, "elsewhere")
    (tree / image_id).unlink()
    (tree / image_id).symlink_to(outside)
    with pytest.raises(NotFound, match="no longer a file"):
        browser.info(image_id)
    with pytest.raises(NotFound):
        browser.trash(image_id)
    assert outside.exists()


def test_a_thumbnail_is_made_once_and_reused(browser, tree):
    path = tree / "txt2img-images/2026-12-01/00001-3.png"
    first = browser.thumbnails.get(path)
    second = browser.thumbnails.get(path)
    assert (first.hit, second.hit) == (False, True) and first.path == second.path
    assert first.path.is_relative_to(browser.thumbnails.folder)
    thumb = browser.thumbnail("txt2img-images/2026-12-01/00001-3.png")
    assert thumb.size == (32, 32) and thumb.format == "WEBP"
    assert [p.name for p in browser.thumbnails.folder.rglob("*.tmp")] == []


def test_a_changed_image_gets_a_new_thumbnail(browser, tree):
    path = tree / "txt2img-images/2026-12-01/00001-3.png"
    before = browser.thumbnails.get(path)
    _write(path, 50, color=(250, 250, 0))  # new content, new mtime
    after = browser.thumbnails.get(path)
    assert after.hit is False and after.path != before.path
    with Image.open(after.path) as img:
        assert img.convert("RGB").getpixel((16, 16))[0] > 200


def test_a_touched_image_with_the_same_bytes_gets_a_new_thumbnail(browser, tree):
    path = tree / "txt2img-images/2026-12-01/00001-3.png"
    before = browser.thumbnails.get(path)
    os.utime(path, ns=(BASE_NS + 10**12, BASE_NS + 10**12))
    after = browser.thumbnails.get(path)
    assert after.hit is False and after.path != before.path


def test_a_large_image_gets_a_small_thumbnail(browser, tree):
    path = tree / "txt2img-images/2026-12-01/00009-big.png"
    path.write_bytes(encode_image(Image.new("RGB", (1024, 512), (9, 9, 9)), "", "png"))
    thumb = browser.thumbnail("txt2img-images/2026-12-01/00009-big.png")
    assert thumb.size == (256, 128)


def test_the_thumbnail_folder_is_capped_least_recently_used_first(tree, tmp_path):
    from webui.outputs.thumbnails import ThumbnailCache

    cache = ThumbnailCache(tmp_path / "thumbs", max_bytes=10**9)
    made = [cache.get(tree / rel).path for rel, _ in TREE]
    for n, path in enumerate(made):
        os.utime(path, (1000 + n, 1000 + n))
    sizes = sum(p.stat().st_size for p in made)
    cache.max_bytes = sizes - 1  # one over the cap
    removed = cache.prune()
    assert removed >= 1 and not made[0].exists() and made[-1].exists()
    assert sum(size for _, size, _ in cache.files()) <= cache.max_bytes


def test_a_file_that_is_not_an_image_is_listed_but_gets_no_thumbnail(browser, tree):
    (tree / "txt2img-images/2026-12-01/broken.png").write_bytes(b"not a png")
    assert "txt2img-images/2026-12-01/broken.png" in _ids(browser.page(1, "all", "", 36))  # listing opens nothing
    with pytest.raises(Refused, match="broken.png"):
        browser.thumbnail("txt2img-images/2026-12-01/broken.png")
    assert browser.info("txt2img-images/2026-12-01/broken.png").infotext == ""


class _Backend:
    """The outputs part of the backend over an ``OutputsBrowser`` (what LocalBackend delegates to)."""

    def __init__(self, browser: OutputsBrowser) -> None:
        self.b = browser

    def output_info(self, output_id):
        return self.b.info(output_id)

    def output_image(self, output_id):
        return self.b.image(output_id)

    def output_thumbnail(self, output_id):
        return self.b.thumbnail(output_id)

    def list_outputs(self, page=1, folder="all", date="", per_page=36):
        return self.b.page(page, folder, date, per_page)

    def trash_output(self, output_id):
        return self.b.trash(output_id)


# --- through the app: LocalBackend, the API route, the page -----------------------------------------


@pytest.fixture
def services(tmp_path):
    from tests.app_services import tmp_services

    return tmp_services(tmp_path)


def test_the_local_backend_lists_what_the_writer_saved_and_the_api_route_pages_it(services):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.api.outputs_api import build_outputs_router

    writer = services.writer
    saved = [
        writer.save(Image.new("RGB", (16, 16), (n, 0, 0)), category="txt2img", infotext=INFOTEXT, seed=n)
        for n in range(3)
    ]
    for n, path in enumerate(saved):
        os.utime(path, ns=(BASE_NS + n, BASE_NS + n))
    backend = services.backend
    listing = backend.list_outputs(1, "all", "", 2)
    rel = [p.relative_to(writer.root).as_posix() for p in saved]
    assert [e.id for e in listing.entries] == [rel[2], rel[1]] and listing.pages == 2
    assert backend.output_info(rel[0]).infotext == INFOTEXT
    api = FastAPI()
    api.include_router(build_outputs_router(backend))
    client = TestClient(api)
    answer = client.get("/webui/v1/outputs", params={"page": 2, "per_page": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [i["id"] for i in body["images"]] == [rel[0]] and body["total"] == 3 and body["page"] == 2
    bad = client.get("/webui/v1/outputs", params={"folder": "../models"})
    assert bad.status_code == 422 and bad.json()["field"] == "folder"
    trashed = backend.trash_output(rel[1])
    assert Path(trashed.moved_to[0]).exists()
    assert [e.id for e in backend.list_outputs(1, "all", "", 36).entries] == [rel[2], rel[0]]


def test_the_page_builds_the_outputs_tab_and_pasting_its_infotext_fills_txt2img(services):
    import gradio as gr

    from webui.ui import outputs_tab, txt2img_tab
    from webui.ui.model_bar import build_model_bar
    from webui.ui.page import PageContext

    path = services.writer.save(Image.new("RGB", (16, 16)), category="txt2img", infotext=INFOTEXT, seed=4242)
    backend = services.backend
    page = PageContext(backend)
    with gr.Blocks() as blocks:
        page.blocks = blocks
        build_model_bar(backend, page)
        with gr.Tabs() as page.tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img_tab.build(backend, page)
            with gr.Tab("Outputs", id="outputs"):
                outputs_tab.build(backend, page)
        page.finish()
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {
        "outputs_gallery",
        "outputs_infotext",
        "outputs_send_txt2img",
        "outputs_delete",
        "outputs_folder_path",
    } <= ids
    rel = path.relative_to(services.writer.root).as_posix()
    info = backend.output_info(rel)
    target = page.paste_targets["txt2img"]
    fields = list(target.controls.fields)
    updates = page.paste_updates(target, None, info.infotext)
    assert updates[fields.index("prompt")]["value"] == "a red fox in snow"
    assert updates[fields.index("seed")]["value"] == 4242
    assert updates[fields.index("steps")]["value"] == 7
