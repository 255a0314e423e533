"""Download a default checkpoint when the user has none.

``download_file`` streams to ``<dest>.part``, resumes a partial file with an HTTP
``Range`` request, checks the size and sha256 (hashed while streaming, including the
bytes already on disk), and only then renames the file into place, so a file at its
final name is always complete. A network error or a cancel keeps the ``.part`` for a
later resume; a checksum mismatch deletes it.

Only the standard library is used for the transfer. Nothing happens at import time;
the table of defaults is plain data, read from the family adapters (``FamilyAdapter.download``).

Callers (UI, API) should run at most one download per destination at a time: two
concurrent downloads into the same ``.part`` would interleave.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from webui.models.safetensors_header import ModelFileError, read_header
from webui.registry import RegistryError

Progress = Callable[[int, Optional[int]], None]

CHECKPOINT_SUBFOLDER = "Stable-diffusion"
CHUNK_SIZE = 1 << 20
USER_AGENT = "webui-model-downloader/0.1"
_ALLOWED_SCHEMES = ("http", "https")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_UNSAFE_CHARS = ("/", "\\", "\x00", ":")


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to do. ``resumable`` is True when
    the ``.part`` file was kept and calling the download again continues from it."""

    def __init__(self, message: str, *, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable


class DownloadCancelled(DownloadError):
    """The cancel event was set; the ``.part`` file is kept for a later resume."""

    def __init__(self, message: str) -> None:
        super().__init__(message, resumable=True)


class UnsafePathError(DownloadError, ValueError):
    """A file or folder name would write outside the models folder."""


@dataclass(frozen=True)
class DefaultCheckpoint:
    """A checkpoint the app can offer to download when the user has none."""

    name: str  # id used by the UI and the API
    label: str
    family: str  # a family id (webui.families)
    url: str
    file_name: str
    size: int | None  # bytes; None when not known for sure
    sha256: str | None  # None when not known for sure: the safetensors header is checked instead
    license: str
    page: str  # the model card, where the licence is accepted/read


def _from_families() -> tuple[DefaultCheckpoint, ...]:
    """One entry per family adapter with a ``download`` default (hash and size as the Hugging Face LFS pointers
    publish them), named by the family id."""
    from webui.families.registry import BUILTIN

    return tuple(
        DefaultCheckpoint(name=f.id, family=f.id, **asdict(f.download)) for f in BUILTIN if f.download
    )


DEFAULT_CHECKPOINTS: tuple[DefaultCheckpoint, ...] = _from_families()


def find_default(name: str, table: tuple[DefaultCheckpoint, ...] = DEFAULT_CHECKPOINTS) -> DefaultCheckpoint:
    """The entry called ``name``; an unknown name raises and lists the valid ones."""
    for entry in table:
        if entry.name == name:
            return entry
    valid = ", ".join(e.name for e in table)
    raise RegistryError(f"unknown default checkpoint {name!r}; choose one of: {valid}")


def download_default(
    entry: DefaultCheckpoint,
    models_dir: Path | str,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download ``entry`` into ``models_dir/Stable-diffusion/`` (resuming if possible)."""
    dest = safe_destination(models_dir, CHECKPOINT_SUBFOLDER, entry.file_name)
    return download_file(
        entry.url,
        dest,
        sha256=entry.sha256,
        expected_size=entry.size,
        progress=progress,
        cancel=cancel,
        timeout=timeout,
    )


# The T5 tokenizer SD3 needs (Apache-2.0; the same SentencePiece model as every T5 v1.1).
# It cannot be generated: its vocabulary was learned. Fetched once, into the folder the
# loader looks in (settings: t5_tokenizer_dir, default models/text_encoder/t5_tokenizer).
T5_TOKENIZER_BASE_URL = "https://huggingface.co/google/t5-v1_1-xxl/resolve/main"
T5_TOKENIZER_FILES: tuple[tuple[str, int | None, str | None], ...] = (
    ("spiece.model", 791_656, "d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86"),
)
T5_TOKENIZER_CONFIG = (
    '{"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 100,'
    ' "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}'
)


def download_t5_tokenizer(
    dest_dir: Path | str,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    *,
    base_url: str = T5_TOKENIZER_BASE_URL,
    files: tuple[tuple[str, int | None, str | None], ...] = T5_TOKENIZER_FILES,
    timeout: float = 60.0,
) -> Path:
    """Fetch the T5 tokenizer into ``dest_dir`` (hash-checked, resumable); skip files already there."""
    dest_dir = Path(dest_dir)
    for name, size, sha in files:
        target = safe_destination(dest_dir.parent, dest_dir.name, name)
        download_file(f"{base_url.rstrip('/')}/{name}", target, sha256=sha, expected_size=size,
                      progress=progress, cancel=cancel, timeout=timeout)
    config = dest_dir / "tokenizer_config.json"
    if not config.exists():
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(T5_TOKENIZER_CONFIG, encoding="utf-8")
        os.replace(tmp, config)
    return dest_dir


def safe_destination(models_dir: Path | str, subfolder: str, file_name: str) -> Path:
    """``models_dir/subfolder/file_name``, refusing any name that could leave ``models_dir``.

    ``subfolder`` may be nested with ``/`` (``""`` for ``models_dir`` itself); each part and
    ``file_name`` must be a plain name: no ``..``, no absolute path, no separators or drive
    letters. The check is lexical, so a sub-folder the user made a symlink is honoured.
    """
    _check_plain_name(file_name, "file name")
    parts = [p for p in subfolder.split("/") if p] if subfolder else []
    if subfolder and (subfolder.startswith("/") or not parts):
        raise UnsafePathError(f"sub-folder {subfolder!r} must be a relative folder name inside the models folder")
    for part in parts:
        _check_plain_name(part, "sub-folder name")
    root = Path(os.path.abspath(models_dir))
    dest = Path(os.path.abspath(root.joinpath(*parts, file_name)))
    if os.path.commonpath([root, dest]) != str(root) or dest == root:
        raise UnsafePathError(f"{file_name!r} would be written outside the models folder {root}")
    return dest


def _check_plain_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"the {what} is empty")
    if name in (".", "..") or any(c in name for c in _UNSAFE_CHARS) or os.path.isabs(name):
        raise UnsafePathError(
            f"the {what} {name!r} is not allowed: use a plain name without '..', "
            "path separators, drive letters or an absolute path"
        )


def part_path(dest: Path) -> Path:
    """Where the unfinished download of ``dest`` is kept."""
    return dest.with_suffix(dest.suffix + ".part")


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    timeout: float = 60.0,
    chunk_size: int = CHUNK_SIZE,
) -> Path:
    """Download ``url`` to ``dest`` (see the module docstring) and return ``dest``.

    ``progress(done, total)`` is called after each chunk (``total`` None when unknown).
    ``timeout`` applies to connecting and to each read. An existing ``dest`` whose size
    matches ``expected_size`` (or any existing ``dest`` when the size is unknown) is
    taken as already downloaded; only verified files are ever renamed to that name.
    """
    _check_url(url)
    want_sha = _normalise_sha(sha256)
    dest = Path(dest)
    if dest.exists():
        return _already_downloaded(dest, expected_size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(part_path(dest), chunk_size)
    part.adopt_existing(expected_size)
    if expected_size is not None:
        _check_free_space(dest.parent, expected_size - part.done)
    if expected_size is not None and part.done == expected_size:
        if progress:
            progress(part.done, expected_size)
    else:
        _fetch(url, part, expected_size, progress, cancel, timeout)
    _verify(part, dest, expected_size, want_sha)
    os.replace(part.path, dest)
    return dest


class _PartFile:
    """The ``.part`` file of one download call and the running sha256 of its bytes."""

    def __init__(self, path: Path, chunk_size: int) -> None:
        self.path = path
        self.chunk_size = chunk_size
        self.hasher = hashlib.sha256()
        self.done = 0

    def adopt_existing(self, expected_size: int | None) -> None:
        """Hash the bytes a previous call left; a part larger than expected is discarded."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if expected_size is not None and size > expected_size:
            self.delete()
            return
        with self.path.open("rb") as f:
            while block := f.read(self.chunk_size):
                self.hasher.update(block)
                self.done += len(block)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.hasher = hashlib.sha256()
        self.done = 0

    def append(self, f: BinaryIO, block: bytes) -> None:
        try:
            f.write(block)
        except OSError as exc:
            raise DownloadError(
                f"cannot write {self.path}: {exc.strerror or exc}; free some space or fix the"
                " folder's permissions, then download again to resume",
                resumable=True,
            ) from None
        self.hasher.update(block)
        self.done += len(block)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _fetch(
    url: str,
    part: _PartFile,
    expected_size: int | None,
    progress: Progress | None,
    cancel: threading.Event | None,
    timeout: float,
) -> None:
    _raise_if_cancelled(cancel, part, expected_size)
    try:
        response = _open(url, part.done, timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and part.done:
                _check_complete_after_416(exc.headers.get("Content-Range"), part)
                return
        raise DownloadError(_http_error_message(url, exc.code, exc.reason), resumable=part.done > 0) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"cannot connect to {urllib.parse.urlsplit(url).netloc}: {reason}; check the network"
            " and try again" + (" (the partial download is kept and will resume)" if part.done else ""),
            resumable=part.done > 0,
        ) from None
    with response:
        total = _start(response, part, expected_size)
        _stream(response, part, total, progress, cancel)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (Hugging Face redirects to its CDN) to http/https only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib API)
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _ALLOWED_SCHEMES:
            raise DownloadError(f"the server redirected to {newurl!r}, which is not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _start(response: http.client.HTTPResponse, part: _PartFile, expected_size: int | None) -> int | None:
    """Position ``part`` for the response body and return the full file size if known."""
    if response.status == 206:
        start, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != part.done:
            part.delete()
            raise DownloadError(
                f"the server sent bytes from {start} when asked for {part.done}; the partial"
                " download was deleted, try again to start over"
            )
    else:  # 200: the server ignored the Range header (or none was sent): start over
        if part.done:
            part.restart()
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    if total is not None and expected_size is not None and total != expected_size:
        part.delete()
        raise DownloadError(
            f"the server says the file is {total:,} bytes but {expected_size:,} were expected;"
            " the file at this URL has changed, so it was not downloaded"
        )
    if total is not None and expected_size is None:
        _check_free_space(part.path.parent, total - part.done)
    return total


def _stream(
    response: http.client.HTTPResponse,
    part: _PartFile,
    total: int | None,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> None:
    with part.path.open("ab") as f:
        while True:
            _raise_if_cancelled(cancel, part, total)
            try:
                block = response.read(part.chunk_size)
            except (OSError, http.client.HTTPException) as exc:
                raise _interrupted(part, total, exc) from None
            if not block:
                break
            part.append(f, block)
            if progress:
                progress(part.done, total)
        f.flush()
        os.fsync(f.fileno())
    if total is not None and part.done < total:
        raise _interrupted(part, total, "the connection closed early")


def _verify(part: _PartFile, dest: Path, expected_size: int | None, want_sha: str | None) -> None:
    if expected_size is not None and part.done < expected_size:
        raise _interrupted(part, expected_size, "the server sent less than expected")
    if expected_size is not None and part.done != expected_size:
        part.delete()
        raise DownloadError(
            f"{dest.name}: got {part.done:,} bytes but {expected_size:,} were expected;"
            " the partial download was deleted, try again"
        )
    if want_sha is not None:
        got = part.hasher.hexdigest()
        if got != want_sha:
            part.delete()
            raise DownloadError(
                f"{dest.name}: checksum mismatch: expected sha256 {want_sha}, got {got}."
                " The damaged download was deleted; try again (if it keeps failing, the file"
                " on the server has changed)"
            )
    elif dest.suffix == ".safetensors":
        try:
            read_header(part.path)
        except ModelFileError as exc:
            part.delete()
            raise DownloadError(
                f"{dest.name}: the downloaded file is not a usable safetensors file ({exc.reason});"
                " it was deleted"
            ) from None


def _check_complete_after_416(content_range: str | None, part: _PartFile) -> None:
    """416 answers a Range starting at the end of the file: the part is complete."""
    match = re.match(r"^bytes\s+\*/(\d+)$", (content_range or "").strip())
    if match and int(match.group(1)) != part.done:
        total = int(match.group(1))
        part.delete()
        raise DownloadError(
            f"the server says the file is {total:,} bytes but the partial download has"
            f" {part.done:,}; it was deleted, try again to start over"
        )


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE_RE.match((value or "").strip())
    if not match:
        raise DownloadError(f"the server sent a partial response with a bad Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _interrupted(part: _PartFile, total: int | None, reason: object) -> DownloadError:
    of = f" of {total:,}" if total is not None else ""
    return DownloadError(
        f"download interrupted after {part.done:,}{of} bytes ({reason}); the partial file"
        f" {part.path.name} was kept: download again to resume",
        resumable=True,
    )


def _raise_if_cancelled(cancel: threading.Event | None, part: _PartFile, total: int | None) -> None:
    if cancel is not None and cancel.is_set():
        of = f" of {total:,}" if total is not None else ""
        raise DownloadCancelled(
            f"download cancelled after {part.done:,}{of} bytes; {part.path.name} was kept:"
            " download again to resume"
        )


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in _ALLOWED_SCHEMES or not parts.netloc:
        raise DownloadError(f"only http:// and https:// URLs can be downloaded, not {url!r}")


def _normalise_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.match(value):
        raise ValueError(f"expected a sha256 as 64 hex digits, got {sha256!r}")
    return value


def _already_downloaded(dest: Path, expected_size: int | None) -> Path:
    size = dest.stat().st_size
    if expected_size is None or size == expected_size:
        return dest
    raise DownloadError(
        f"{dest} already exists but has {size:,} bytes, not the expected {expected_size:,};"
        " move or delete it, then download again"
    )


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"not enough free disk space in {folder}: the download needs {_gb(needed)} more,"
            f" {_gb(free)} is free; free some space or choose another models folder"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


_HTTP_HINTS = {
    401: "the server wants a login (a gated model: accept its licence on the model page and use a token)",
    403: "access denied (a gated model: accept its licence on the model page)",
    404: "not found: the file was moved or renamed",
    429: "too many requests: wait a while and try again",
}


def _http_error_message(url: str, code: int, reason: object) -> str:
    hint = _HTTP_HINTS.get(code, "try again later" if code >= 500 else "check the URL")
    return f"downloading {url} failed with HTTP {code} {reason}: {hint}"
