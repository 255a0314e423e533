"""Image writer: A1111 layout and numbering, infotext embedded in PNG/JPEG/WebP, atomic saves."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from webui.outputs.writer import (
    CATEGORY_FOLDERS,
    EXIF_IFD,
    USER_COMMENT,
    OutputError,
    OutputWriter,
    encode_image,
    read_infotext,
)

NOW = datetime(2024, 7, 27, 13, 45, 10)
INFOTEXT = "a cat in a hat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
JAPANESE = "猫が帽子をかぶっている、高品質\nNegative prompt: 低品質\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1"
FORMATS = ["png", "jpg", "webp"]


def _image(color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (16, 16), color)


def _files(root: Path) -> list[str]:
    """Every file under root (hidden temp files included), relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


class _BrokenImage:
    """An image whose encoder writes part of a file and then fails."""

    mode = "RGB"
    info: ClassVar[dict] = {}

    def save(self, fp, format=None, **options):
        fp.write(b"\x89PNG\r\n\x1a\npartial data")
        raise RuntimeError("encoder crashed half way")


# --- embedding and reading back ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("text", [INFOTEXT, JAPANESE], ids=["ascii", "japanese"])
def test_infotext_survives_each_format(fmt, text):
    data = encode_image(_image(), text, fmt)
    assert read_infotext(data) == text


@pytest.mark.parametrize(
    "text, chunk",
    [(INFOTEXT, b"tEXt"), ("café, crème\nSteps: 1, Sampler: Euler, Seed: 1", b"tEXt"), (JAPANESE, b"iTXt")],
)
def test_png_parameters_chunk_is_readable_by_pil_directly(text, chunk):
    data = encode_image(_image(), text, "png")
    assert chunk + b"parameters" in data
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["parameters"] == text
        assert image.text["parameters"] == text


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_exif_user_comment_is_unicode_utf16_big_endian_like_piexif(fmt):
    with Image.open(io.BytesIO(encode_image(_image(), JAPANESE, fmt))) as image:
        raw = image.getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
    assert raw == b"UNICODE\x00" + JAPANESE.encode("utf-16-be")


def _jpeg_with_user_comment(raw: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = raw
    buffer = io.BytesIO()
    _image().save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"UNICODE\x00" + JAPANESE.encode("utf-16-be"), JAPANESE),
        (b"UNICODE\x00" + JAPANESE.encode("utf-16-le"), JAPANESE),
        (b"UNICODE\x00" + INFOTEXT.encode("utf-16-le"), INFOTEXT),
        (b"UNICODE\x00" + b"\xff\xfe" + JAPANESE.encode("utf-16-le"), JAPANESE),
        (b"ASCII\x00\x00\x00" + INFOTEXT.encode("ascii"), INFOTEXT),
        (b"\x00" * 8 + JAPANESE.encode("utf-8"), JAPANESE),
    ],
    ids=["unicode-be", "unicode-le", "unicode-le-ascii-text", "unicode-bom", "ascii", "undefined-utf8"],
)
def test_read_infotext_decodes_user_comment_variants(raw, text):
    assert read_infotext(_jpeg_with_user_comment(raw)) == text


def test_read_infotext_takes_a_path_bytes_or_an_image(tmp_path):
    data = encode_image(_image(), JAPANESE, "webp")
    path = tmp_path / "x.webp"
    path.write_bytes(data)
    with Image.open(path) as image:
        from_image = read_infotext(image)
    assert (read_infotext(path), read_infotext(str(path)), read_infotext(data), from_image) == (JAPANESE,) * 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_infotext_is_none_without_infotext(fmt):
    assert read_infotext(encode_image(_image(), "", fmt)) is None


def test_read_infotext_rejects_data_that_is_not_an_image():
    with pytest.raises(ValueError, match="not an image"):
        read_infotext(b"plain text, not a picture")


def test_jpeg_drops_alpha_and_keeps_infotext():
    data = encode_image(_image((1, 2, 3, 128), mode="RGBA"), INFOTEXT, "jpg")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
    assert read_infotext(data) == INFOTEXT


def test_webp_keeps_alpha():
    data = encode_image(_image((1, 2, 3, 128), mode="RGBA"), INFOTEXT, "webp")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA"


def test_infotext_too_long_for_jpeg_says_what_to_do():
    with pytest.raises(ValueError, match="PNG"):
        encode_image(_image(), "x" * 40_000, "jpg")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="png"):
        encode_image(_image(), INFOTEXT, "bmp")


# --- layout and numbering --------------------------------------------------------------------------


def test_files_are_numbered_in_a_date_folder(tmp_path):
    writer = OutputWriter(tmp_path)
    paths = [writer.save(_image(), category="txt2img", infotext=INFOTEXT, seed=s, now=NOW) for s in (5, 6, 7)]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "txt2img-images/2024-07-27/00001-5.png",
        "txt2img-images/2024-07-27/00002-6.png",
        "txt2img-images/2024-07-27/00003-7.png",
    ]
    assert read_infotext(paths[0]) == INFOTEXT


def test_numbering_continues_after_the_highest_existing_number(tmp_path):
    folder = tmp_path / "img2img-images" / "2024-07-27"
    folder.mkdir(parents=True)
    for name in ("00007-1.png", "00041-9.jpg", "notes.txt", "grid-0099.png", "abc-00500.png"):
        (folder / name).write_bytes(b"x")
    path = OutputWriter(tmp_path).save(_image(), category="img2img", infotext=INFOTEXT, seed=3, now=NOW)
    assert path.name == "00042-3.png"


@pytest.mark.parametrize(
    "category, expected",
    [
        ("txt2img", "txt2img-images/2024-07-27/00001-5.png"),
        ("img2img", "img2img-images/2024-07-27/00001-5.png"),
        ("inpaint", "img2img-images/2024-07-27/00001-5.png"),
        ("extras", "extras-images/2024-07-27/00001-5.png"),
        ("txt2img-grids", "txt2img-grids/2024-07-27/grid-0001.png"),
        ("img2img-grids", "img2img-grids/2024-07-27/grid-0001.png"),
    ],
)
def test_category_folders(tmp_path, category, expected):
    path = OutputWriter(tmp_path).save(_image(), category=category, infotext=INFOTEXT, seed=5, now=NOW)
    assert path.relative_to(tmp_path).as_posix() == expected
    assert expected.split("/")[0] == CATEGORY_FOLDERS[category]


@pytest.mark.parametrize("fmt, ext", [("png", "png"), ("jpg", "jpg"), ("jpeg", "jpg"), ("webp", "webp")])
def test_extension_follows_the_format(tmp_path, fmt, ext):
    path = OutputWriter(tmp_path).save(_image(), category="txt2img", infotext=JAPANESE, seed=1, fmt=fmt, now=NOW)
    assert path.suffix == f".{ext}"
    assert read_infotext(path) == JAPANESE


def test_unknown_category_is_refused(tmp_path):
    with pytest.raises(ValueError, match="txt2img"):
        OutputWriter(tmp_path).save(_image(), category="videos", infotext="", seed=1, now=NOW)


@pytest.mark.parametrize(
    "pattern, tokens, name",
    [
        ("[seed]", {}, "00001-5.png"),
        ("[seed]-[sampler]-[steps]", {"sampler": "DPM++ 2M", "steps": 20}, "00001-5-DPM++_2M-20.png"),
        ("[model_name]-[width]x[height]", {"model_name": "sd v1.5", "width": 512, "height": 768}, "00001-sd_v1.5-512x768.png"),
        ("[prompt_words]", {"prompt": "a (cat:1.2), on a mat!"}, "00001-a cat 1 2 on a mat.png"),
        ("[prompt_words]", {"prompt": "猫、帽子"}, "00001-猫 帽子.png"),
        ("[date]_[datetime]", {}, "00001-2024-07-27_20240727134510.png"),
        ("[datetime<%H%M>]", {}, "00001-1345.png"),
        ("[seed]-[unknown]", {}, "00001-5-[unknown].png"),
        ("[model_name]", {}, "00001.png"),
    ],
)  # fmt: skip
def test_filename_pattern_tokens(tmp_path, pattern, tokens, name):
    writer = OutputWriter(tmp_path, filename_pattern=pattern)
    path = writer.save(_image(), category="txt2img", infotext="", seed=5, tokens=tokens, now=NOW)
    assert path.name == name


@pytest.mark.parametrize(
    "pattern, tokens, date_format",
    [
        ("[model_name]", {"model_name": "../../../escape"}, "%Y-%m-%d"),
        ("[prompt]", {"prompt": "..\\..\\x/y:z*?"}, "%Y-%m-%d"),
        ("[seed]", {}, "../../%Y"),
        ("[seed]", {}, "/etc/%Y"),
    ],
)
def test_names_never_escape_the_outputs_folder(tmp_path, pattern, tokens, date_format):
    root = tmp_path / "outputs"
    writer = OutputWriter(root, filename_pattern=pattern, date_format=date_format)
    path = writer.save(_image(), category="txt2img", infotext="", seed=5, tokens=tokens, now=NOW)
    assert path.resolve().is_relative_to((root / "txt2img-images").resolve())
    assert _files(tmp_path) == [path.relative_to(tmp_path).as_posix()]


def test_long_prompts_give_names_the_filesystem_accepts(tmp_path):
    writer = OutputWriter(tmp_path, filename_pattern="[prompt]-[prompt_spaces]")
    path = writer.save(_image(), category="txt2img", infotext="", seed=5, tokens={"prompt": "猫" * 400}, now=NOW)
    assert path.exists() and len(path.name.encode("utf-8")) < 255


# --- atomicity and errors --------------------------------------------------------------------------


def test_failing_encoder_leaves_no_file(tmp_path):
    writer = OutputWriter(tmp_path)
    with pytest.raises(OutputError, match="could not encode the image as PNG"):
        writer.save(_BrokenImage(), category="txt2img", infotext=INFOTEXT, seed=1, now=NOW)
    assert _files(tmp_path) == []


def test_image_pil_cannot_encode_leaves_no_file(tmp_path):
    writer = OutputWriter(tmp_path)
    with pytest.raises(OutputError, match="PNG"):
        writer.save(_image((0, 0, 0, 0), mode="CMYK"), category="txt2img", infotext=INFOTEXT, seed=1, now=NOW)
    with pytest.raises(OutputError, match="JPEG"):
        writer.save(_image(), category="txt2img", infotext="x" * 40_000, seed=1, fmt="jpg", now=NOW)
    assert _files(tmp_path) == []


def test_a_failed_save_does_not_disturb_the_numbering(tmp_path):
    writer = OutputWriter(tmp_path)
    first = writer.save(_image(), category="txt2img", infotext="", seed=1, now=NOW)
    with pytest.raises(OutputError):
        writer.save(_BrokenImage(), category="txt2img", infotext="", seed=2, now=NOW)
    second = writer.save(_image(), category="txt2img", infotext="", seed=3, now=NOW)
    assert (first.name, second.name) == ("00001-1.png", "00002-3.png")


def test_outputs_path_that_is_a_file_gives_a_clear_error(tmp_path):
    root = tmp_path / "outputs"
    root.write_text("not a folder")
    with pytest.raises(OutputError, match="not a folder"):
        OutputWriter(root).save(_image(), category="txt2img", infotext=INFOTEXT, seed=1, now=NOW)
    assert _files(tmp_path) == ["outputs"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
@pytest.mark.parametrize("locked", ["outputs", "outputs/txt2img-images/2024-07-27"])
def test_read_only_folder_gives_a_clear_error_and_no_file(tmp_path, locked):
    target = tmp_path / locked
    target.mkdir(parents=True)
    target.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            OutputWriter(tmp_path / "outputs").save(_image(), category="txt2img", infotext=INFOTEXT, seed=1, now=NOW)
    finally:
        target.chmod(0o755)
    assert _files(tmp_path) == []


def test_two_threads_saving_at_once_get_distinct_numbered_files(tmp_path):
    writer = OutputWriter(tmp_path)

    def work(offset: int) -> list[Path]:
        return [
            writer.save(_image(), category="txt2img", infotext=INFOTEXT, seed=offset + i, now=NOW) for i in range(20)
        ]

    with ThreadPoolExecutor(max_workers=2) as pool:
        saved = [path for paths in pool.map(work, (1000, 2000)) for path in paths]
    names = os.listdir(tmp_path / "txt2img-images" / "2024-07-27")
    assert sorted(names) == sorted(path.name for path in saved)
    assert sorted(int(name.split("-")[0]) for name in names) == list(range(1, 41))


def test_two_writers_racing_for_the_same_name_never_overwrite(tmp_path):
    writers = [OutputWriter(tmp_path), OutputWriter(tmp_path)]  # separate locks: names collide, links refuse

    def work(writer: OutputWriter, color: int) -> None:
        for _ in range(20):
            writer.save(_image((color, 0, 0)), category="txt2img", infotext=f"c{color}", seed=7, now=NOW)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(work, writers, (10, 250)))
    folder = tmp_path / "txt2img-images" / "2024-07-27"
    texts = sorted(read_infotext(path) for path in folder.iterdir())
    assert texts == ["c10"] * 20 + ["c250"] * 20
