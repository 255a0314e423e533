"""One allow-list for every image that comes from outside: PNG, JPEG and WebP, decoded by PIL itself.

PIL picks a decoder from the bytes, and some of its plugins hand data to external programs
(EPS and PostScript run Ghostscript; an unpatched Ghostscript turns a crafted file into code
execution). Every decode of user-supplied image data (API payloads, uploads, the UI's inputs, PNG
Info) goes through ``open_image``: the first bytes must be one of the three signatures, and PIL is
told to try only those three plugins (``Image.open(..., formats=...)``), so no other decoder ever
sees the data. The size is read from the header and checked before the pixels are decoded.

* ``sniff(head)``: the format of the first bytes (``"PNG"``, ``"JPEG"``, ``"WEBP"``) or None;
* ``open_image(source, max_pixels)``: a loaded PIL image, or ``NotAnImage`` saying what is wrong;
* ``open_lazily(source)``: the same checks, pixels not decoded (for metadata such as the infotext);
* ``image_file_problem(path, max_pixels)``: "" for an acceptable image file, else the message (no decode
  of the pixels: the header is enough to refuse).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import IO, Any

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
ALLOWED_TEXT = "PNG, JPEG or WebP"
MAX_PIXELS = 4096 * 4096
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


class NotAnImage(ValueError):
    """The data is not an image the app accepts; the message says what to send instead."""


def sniff(head: bytes) -> str | None:
    """The allowed format the first bytes announce, or None (WebP: ``RIFF<size>WEBP``)."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _stream(source: bytes | str | Path | IO[bytes]) -> IO[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, Path)):
        return open(source, "rb")  # noqa: SIM115 - closed by the caller's with-block
    return source


def _open_checked(stream: IO[bytes], max_pixels: int) -> Any:
    """``Image.open`` restricted to the allowed plugins, after the signature and before the pixel data."""
    from PIL import Image, UnidentifiedImageError

    start = stream.tell()
    head = stream.read(16)
    stream.seek(start)
    if sniff(head) is None:
        raise NotAnImage(f"this is not an image: only {ALLOWED_TEXT} images are accepted")
    try:
        image = Image.open(stream, formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImage(f"this is not a readable {ALLOWED_TEXT} image: its data is damaged or cut short") from None
    except Image.DecompressionBombError:
        raise NotAnImage("the image has too many pixels; send a smaller image") from None
    width, height = image.size
    if width * height > max_pixels:
        side = math.isqrt(max_pixels)
        raise NotAnImage(
            f"the image is {width}x{height} pixels; the largest accepted has {max_pixels} pixels "
            f"(e.g. {side}x{side}); send a smaller image"
        )
    return image


def open_image(source: bytes | str | Path | IO[bytes], max_pixels: int = MAX_PIXELS) -> Any:
    """A fully loaded PIL image from bytes, a path or a binary stream; ``NotAnImage`` when refused.

    The image keeps its ``info`` (PNG text chunks, EXIF), so the infotext can be read from it.
    """
    from PIL import Image

    owned = not hasattr(source, "read")
    stream = _stream(source)
    try:
        image = _open_checked(stream, max_pixels)
        try:
            image.load()
        except Image.DecompressionBombError:
            raise NotAnImage("the image has too many pixels; send a smaller image") from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise NotAnImage("the image data is damaged or cut short; save or export it again") from None
        return image
    finally:
        if owned:
            stream.close()


def open_lazily(source: bytes | str | Path) -> Any:
    """A PIL image whose header (and text chunks before the pixels) is read, its pixels not yet: for reading
    metadata. The same allow-list as ``open_image``; close it when done (PIL owns the file it opened)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        head, target = bytes(source[:16]), io.BytesIO(bytes(source))
    else:
        with open(source, "rb") as stream:
            head, target = stream.read(16), str(source)
    if sniff(head) is None:
        raise NotAnImage(f"this is not an image: only {ALLOWED_TEXT} images are accepted")
    try:
        return Image.open(target, formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImage(f"this is not a readable {ALLOWED_TEXT} image: its data is damaged or cut short") from None


def image_file_problem(path: str | Path, max_pixels: int = MAX_PIXELS) -> str:
    """ "" when ``path`` is a PNG, JPEG or WebP file within the pixel limit, else what is wrong."""
    try:
        with open(path, "rb") as stream:
            _open_checked(stream, max_pixels)
    except NotAnImage as exc:
        return str(exc)
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or type(exc).__name__})"
    return ""
