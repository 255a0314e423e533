"""Saving generated images: A1111's folder layout and names, infotext embedded, written atomically.

``outputs/<category folder>/<date>/<NNNNN>-<pattern>.<ext>`` (grids: ``grid-<NNNN>.<ext>``). Each
image is encoded in memory, written into a hidden temp file in the target folder, flushed and
fsynced, then given its final name with a hard link, which never replaces an existing file; a
failed save leaves nothing behind, and a process killed mid-save leaves at most a hidden temp file
(``OutputWriter.clean_temp_files`` removes those). Encoding in memory first keeps the OS error of a
full or read-only disk (PIL's C encoders write to the file descriptor themselves and report only
"encoder error"), so the message can say what to do. Infotext: PNG ``parameters`` text chunk; JPEG/WebP EXIF ``UserComment`` (``UNICODE`` +
UTF-16BE, as A1111 writes it with piexif). PIL only, no torch.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO


class OutputError(OSError):
    """An image could not be saved; the message says why and what to do. No partial file remains."""


CATEGORY_FOLDERS = {
    "txt2img": "txt2img-images",
    "img2img": "img2img-images",
    "inpaint": "img2img-images",
    "txt2img-grids": "txt2img-grids",
    "img2img-grids": "img2img-grids",
    "extras": "extras-images",
}
GRID_CATEGORIES = frozenset(name for name in CATEGORY_FOLDERS if name.endswith("-grids"))

# fmt -> (PIL format, file extension)
PNG_COMPRESS_LEVEL = 4
IMAGE_FORMATS = {"png": ("PNG", "png"), "jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}
JPEG_QUALITY = 95
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
UNICODE_PREFIX = b"UNICODE\x00"
ASCII_PREFIX = b"ASCII\x00\x00\x00"
JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"
JPEG_MAX_EXIF = 65533  # one JPEG APP1 segment

# File names: characters Windows or POSIX refuse (and path separators), A1111's 128-char cap per
# token, a cap on the whole decoration that keeps names under the usual 255-byte limit.
INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
MAX_TOKEN_CHARS = 128
MAX_DECORATION_BYTES = 180
PROMPT_WORDS = 8
_TOKEN = re.compile(r"\[([^\[\]<>]+)((?:<[^>]*>)?)\]")
# What ``save`` writes before the rename: ``.<writer's pid>-<16 hex>.<ext>.tmp`` (older versions: no pid).
_TEMP_NAME = re.compile(r"^\.(?:(?P<pid>\d+)-)?[0-9a-f]{16}\.(?:png|jpg|webp)\.tmp$")
_NON_WORD = re.compile(r"\W+")
_MAX_NUMBER_TRIES = 10_000


# --- encoding --------------------------------------------------------------------------------------


def image_format(fmt: str) -> tuple[str, str]:
    """(PIL format, extension) for ``png``/``jpg``/``jpeg``/``webp``; other names raise."""
    try:
        return IMAGE_FORMATS[str(fmt).lower()]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}; use one of: {', '.join(IMAGE_FORMATS)}") from None


def user_comment_bytes(text: str) -> bytes:
    """EXIF UserComment as piexif's ``UserComment.dump(text, encoding="unicode")`` writes it."""
    return UNICODE_PREFIX + text.encode("utf-16-be")


def exif_with_comment(text: str) -> bytes:
    """An EXIF block (``Exif\\0\\0`` + TIFF) whose Exif IFD holds ``text`` as UserComment."""
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment_bytes(text)
    return exif.tobytes()


def _convert(image: Any, modes: tuple[str, ...], target: str) -> Any:
    return image if getattr(image, "mode", None) in modes else image.convert(target)


def _save_png(image: Any, infotext: str, fp: BinaryIO, quality: int) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # tEXt when latin-1, else iTXt (UTF-8)
    # zlib level 4: about 3x faster than PIL's default 6 on a 1024x1024 image for ~4% more bytes (ComfyUI's choice).
    image.save(fp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)


def _save_jpeg(image: Any, infotext: str, fp: BinaryIO, quality: int) -> None:
    options: dict[str, Any] = {"quality": quality}
    if infotext:
        exif = exif_with_comment(infotext)
        if len(exif) > JPEG_MAX_EXIF:
            raise ValueError(
                f"the infotext needs {len(exif)} bytes of EXIF but JPEG holds at most {JPEG_MAX_EXIF}; "
                "save as PNG or WebP, or use shorter prompts"
            )
        options["exif"] = exif
    _convert(image, ("RGB", "L", "CMYK"), "RGB").save(fp, format="JPEG", **options)


def _save_webp(image: Any, infotext: str, fp: BinaryIO, quality: int) -> None:
    options: dict[str, Any] = {"quality": quality, "lossless": False}
    if infotext:
        options["exif"] = exif_with_comment(infotext)
    has_alpha = getattr(image, "mode", "") in ("RGBA", "LA", "PA") or "transparency" in getattr(image, "info", {})
    _convert(image, ("RGB", "RGBA"), "RGBA" if has_alpha else "RGB").save(fp, format="WEBP", **options)


_ENCODERS: dict[str, Callable[[Any, str, BinaryIO, int], None]] = {
    "PNG": _save_png,
    "JPEG": _save_jpeg,
    "WEBP": _save_webp,
}


def write_image(image: Any, infotext: str, fmt: str, fp: BinaryIO, *, quality: int = JPEG_QUALITY) -> None:
    """Encode ``image`` with its infotext into the open binary file ``fp``."""
    container, _ = image_format(fmt)
    _ENCODERS[container](image, infotext, fp, quality)


def encode_image(image: Any, infotext: str, fmt: str = "png", *, quality: int = JPEG_QUALITY) -> bytes:
    """The image file's bytes with the infotext embedded (PNG chunk or EXIF UserComment)."""
    buffer = io.BytesIO()
    write_image(image, infotext, fmt, buffer, quality=quality)
    return buffer.getvalue()


# --- reading ---------------------------------------------------------------------------------------


def _utf16_is_big_endian(body: bytes) -> bool:
    """Byte order of UTF-16 without a BOM: ASCII text has its zero bytes first in big endian."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body[:2] == b"\xfe\xff"
    zeros_even = sum(1 for b in body[0::2] if b == 0)
    zeros_odd = sum(1 for b in body[1::2] if b == 0)
    return zeros_even >= zeros_odd


def decode_user_comment(raw: bytes | str) -> str | None:
    """EXIF UserComment text: ``UNICODE`` (UTF-16, either byte order), ``ASCII``, ``JIS``, else UTF-8."""
    if isinstance(raw, str):
        return raw.rstrip("\x00") or None
    prefix, body = bytes(raw[:8]), bytes(raw[8:])
    if prefix == UNICODE_PREFIX:
        codec = "utf-16-be" if _utf16_is_big_endian(body) else "utf-16-le"
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            body = body[2:]
        text = body.decode(codec, errors="replace")
    elif prefix == ASCII_PREFIX:
        text = body.decode("ascii", errors="replace")
    elif prefix == JIS_PREFIX:
        text = body.decode("shift_jis", errors="replace")
    else:
        text = bytes(raw).lstrip(b"\x00").decode("utf-8", errors="ignore")
    return text.rstrip("\x00") or None


def _open_image(source: Path | str | bytes | Any) -> tuple[Any, bool]:
    """(PIL image, whether we opened it and must close it). Only PNG, JPEG and WebP are ever decoded
    (``webui.security.images``): no other PIL plugin, and no external decoder, sees the data."""
    from webui.security.images import NotAnImage, open_lazily

    if hasattr(source, "getexif"):
        return source, False
    if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"read_infotext takes a path, bytes or a PIL image, not {type(source).__name__}")
    target = source if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    try:
        return open_lazily(target), True
    except NotAnImage as exc:
        raise ValueError(
            f"{'the data' if not isinstance(target, str) else Path(target).name} is not an image "
            "this app can read; use a PNG, JPEG or WebP file"
        ) from exc


def _png_parameters(image: Any) -> str | None:
    value = image.info.get("parameters")
    if value is None and getattr(image, "format", None) == "PNG":
        image.load()  # text chunks after the image data are read on load
        value = image.info.get("parameters")
    return None if value is None else str(value)


def _exif_comment(image: Any) -> str | None:
    try:
        exif = image.getexif()
    except (OSError, ValueError, SyntaxError, KeyError, struct.error):  # broken EXIF: no infotext
        return None
    raw = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
    if raw is None:
        raw = exif.get(USER_COMMENT)
    return None if raw is None else decode_user_comment(raw)


def read_infotext(source: Path | bytes | Any) -> str | None:
    """The infotext of an image (path, bytes or PIL image): PNG ``parameters``, else EXIF, else None."""
    image, opened = _open_image(source)
    try:
        text = _png_parameters(image)
        return text if text is not None else _exif_comment(image)
    finally:
        if opened:
            image.close()


# --- file names ------------------------------------------------------------------------------------


def sanitize_filename_part(text: Any, *, replace_spaces: bool = True, max_chars: int = MAX_TOKEN_CHARS) -> str:
    """One safe path component: no separators or reserved characters, no leading dots, capped."""
    text = str(text)
    if replace_spaces:
        text = text.replace(" ", "_")
    text = "".join("_" if ch in INVALID_FILENAME_CHARS or ord(ch) < 32 else ch for ch in text)
    return text.lstrip(" .")[:max_chars].rstrip(" .")


def _prompt_words(values: Mapping[str, Any], now: datetime, arg: str) -> str:
    words = [w for w in _NON_WORD.split(str(values.get("prompt") or "")) if w] or ["empty"]
    return sanitize_filename_part(" ".join(words[:PROMPT_WORDS]), replace_spaces=False)


def _value(key: str, *, spaces: bool = False) -> Callable[[Mapping[str, Any], datetime, str], str]:
    def get(values: Mapping[str, Any], now: datetime, arg: str) -> str:
        value = values.get(key)
        return "" if value is None else sanitize_filename_part(value, replace_spaces=not spaces)

    return get


# A1111 file name tokens we fill; an unknown token stays in the name as written, as in A1111.
FILENAME_TOKENS: dict[str, Callable[[Mapping[str, Any], datetime, str], str]] = {
    "seed": _value("seed"),
    "steps": _value("steps"),
    "cfg": _value("cfg"),
    "width": _value("width"),
    "height": _value("height"),
    "sampler": _value("sampler"),
    "model_name": _value("model_name"),
    "model_hash": _value("model_hash"),
    "denoising": _value("denoising"),
    "prompt": _value("prompt"),
    "prompt_spaces": _value("prompt", spaces=True),
    "prompt_words": _prompt_words,
    "date": lambda values, now, arg: now.strftime("%Y-%m-%d"),
    "datetime": lambda values, now, arg: sanitize_filename_part(now.strftime(arg or "%Y%m%d%H%M%S")),
}


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def apply_filename_pattern(pattern: str, values: Mapping[str, Any], now: datetime) -> str:
    """The pattern with ``[token]``/``[datetime<%Y%m%d>]`` replaced, made safe as one file name part."""

    def replace(match: re.Match[str]) -> str:
        token = FILENAME_TOKENS.get(match.group(1).strip().lower())
        if token is None:
            return match.group(0)
        return token(values, now, match.group(2)[1:-1])

    text = sanitize_filename_part(_TOKEN.sub(replace, pattern), replace_spaces=False, max_chars=10_000)
    return _truncate_utf8(text, MAX_DECORATION_BYTES).rstrip(" .-_")


def _number_prefix(category: str) -> str:
    return "grid-" if category in GRID_CATEGORIES else ""


def next_number(folder: Path, prefix: str = "") -> int:
    """One more than the highest ``<prefix><digits>`` file number in ``folder`` (1 when none)."""
    highest = 0
    for name in os.listdir(folder):
        if not name.startswith(prefix):
            continue
        stem = name[len(prefix) :].split(".", 1)[0].split("-", 1)[0]
        if stem.isascii() and stem.isdigit():
            highest = max(highest, int(stem))
    return highest + 1


# --- errors ----------------------------------------------------------------------------------------

_NOT_WRITABLE = "permission denied; make the folder writable for this user or choose another outputs folder"
_NOT_A_FOLDER = "a part of the path is a file, not a folder; rename it or choose another outputs folder"
_ERRNO_ADVICE = {
    errno.EACCES: _NOT_WRITABLE,
    errno.EPERM: _NOT_WRITABLE,
    errno.EROFS: "the disk is read-only; choose an outputs folder on a writable disk",
    errno.ENOSPC: "the disk is full; free some space or choose an outputs folder on another disk",
    getattr(errno, "EDQUOT", errno.ENOSPC): "the disk is full or over quota; free some space or choose another folder",
    errno.ENOTDIR: _NOT_A_FOLDER,
    errno.EEXIST: _NOT_A_FOLDER,
    errno.ENAMETOOLONG: "the path is too long; use a shorter file name pattern or outputs folder",
}


def _output_error(exc: BaseException, folder: Path, container: str) -> OutputError:
    advice = _ERRNO_ADVICE.get(getattr(exc, "errno", None))
    if advice is not None:
        return OutputError(f"could not save the image in {folder}: {advice} ({exc})")
    if isinstance(exc, OSError) and exc.errno is not None:
        return OutputError(f"could not save the image in {folder}: {exc}; check the outputs folder")
    return OutputError(
        f"could not encode the image as {container}: {exc}; the image was not saved "
        "(try another output format, or report this with the image's settings)"
    )


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # gone already, or nothing more we can do: a temp file is hidden and never counted


def _fsync_folder(folder: Path) -> None:
    """Make the new directory entry durable where the platform allows it (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_NO_HARD_LINKS = {
    errno.EPERM,
    errno.EXDEV,
    errno.EMLINK,
    getattr(errno, "ENOTSUP", -1),
    getattr(errno, "EOPNOTSUPP", -1),
}


def _writer_alive(pid: str | None) -> bool:
    """Whether the process that wrote a temp file still runs (True when the name has no pid: unknown)."""
    if not pid:
        return True
    if int(pid) == os.getpid():
        return True
    import psutil

    return psutil.pid_exists(int(pid))


def _claim_name(tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final``; FileExistsError when taken. Never replaces a file."""
    try:
        os.link(tmp, final)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    # Filesystems without hard links: reserve the name exclusively, then move the data onto it.
    os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        os.replace(tmp, final)
    except OSError:
        _remove_quietly(final)  # our empty placeholder
        raise


# --- the writer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputWriter:
    """Saves images under ``root`` as A1111 does; safe to share between threads."""

    root: Path
    date_format: str = "%Y-%m-%d"
    filename_pattern: str = "[seed]"
    quality: int = JPEG_QUALITY
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def clean_temp_files(self, older_than: float = 3600.0) -> int:
        """Delete the hidden temp files a killed process left; return how many. Call it once at start-up.

        Only names ``save`` makes are touched. A temp file whose writer (the pid in its name) is no longer
        running is left over from a kill and goes at once; one of a running process (another instance
        saving into the same folder) stays unless it is older than ``older_than`` seconds (a save never
        takes an hour, and a pid may have been reused).
        """
        removed = 0
        cutoff = time.time() - older_than
        for folder, _, names in os.walk(self.root):
            for name in names:
                match = _TEMP_NAME.match(name)
                if match is None:
                    continue
                path = Path(folder) / name
                try:
                    if not _writer_alive(match.group("pid")) or path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except OSError:
                    continue  # gone already, or not ours to delete
        return removed

    def folder_for(self, category: str, now: datetime) -> Path:
        """``root/<category folder>/<date parts>`` (not created); unknown categories raise."""
        if category not in CATEGORY_FOLDERS:
            raise ValueError(f"unknown output category {category!r}; valid: {', '.join(CATEGORY_FOLDERS)}")
        date_text = now.strftime(self.date_format).replace("\\", "/") if self.date_format else ""
        parts = [p for p in (sanitize_filename_part(part, replace_spaces=False) for part in date_text.split("/")) if p]
        return Path(self.root).joinpath(CATEGORY_FOLDERS[category], *parts)

    def save(
        self,
        image: Any,
        *,
        category: str,
        infotext: str,
        seed: int,
        fmt: str = "png",
        tokens: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Path:
        """Write the image; return its final path. OutputError (nothing left behind) on failure."""
        container, ext = image_format(fmt)
        now = now or datetime.now()
        folder = self.folder_for(category, now)
        self._make_folder(folder)
        if category in GRID_CATEGORIES:
            decoration = ""
        else:
            decoration = apply_filename_pattern(self.filename_pattern, {**(tokens or {}), "seed": seed}, now)
        tmp = folder / f".{os.getpid()}-{secrets.token_hex(8)}.{ext}.tmp"
        try:
            self._write_temp(tmp, image, infotext, fmt)
            return self._publish(tmp, folder, _number_prefix(category), decoration, ext)
        except OutputError:
            raise
        except Exception as exc:
            raise _output_error(exc, folder, container) from exc
        finally:
            _remove_quietly(tmp)

    def _make_folder(self, folder: Path) -> None:
        root = Path(self.root).resolve()
        if not folder.resolve().is_relative_to(root):  # date parts are sanitised; belt and braces
            raise OutputError(f"refusing to write outside the outputs folder {root}: {folder}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _output_error(exc, folder, "") from exc
        if not folder.is_dir():
            raise OutputError(f"could not save the image in {folder}: {_NOT_A_FOLDER}")

    def _write_temp(self, tmp: Path, image: Any, infotext: str, fmt: str) -> None:
        data = encode_image(image, infotext, fmt, quality=self.quality)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def _publish(self, tmp: Path, folder: Path, prefix: str, decoration: str, ext: str) -> Path:
        suffix = f"-{decoration}" if decoration else ""
        digits = 4 if prefix else 5
        with self._lock:
            number = next_number(folder, prefix)
            for _ in range(_MAX_NUMBER_TRIES):
                final = folder / f"{prefix}{number:0{digits}d}{suffix}.{ext}"
                try:
                    _claim_name(tmp, final)
                except FileExistsError:
                    number += 1
                    continue
                _fsync_folder(folder)
                return final
        raise OutputError(
            f"could not find a free file name in {folder} after {_MAX_NUMBER_TRIES} tries; "
            "move old images out of the folder"
        )
