"""Prompt styles in A1111's ``styles.csv`` format: read, apply to a prompt, save one (atomically).

The file is a CSV with a header row; the columns A1111 reads are ``name``, ``prompt`` and
``negative_prompt`` (other columns are kept as they are but not used; a very old A1111 file with
``text`` instead of ``prompt`` is read too). Quoted fields may hold commas, quotes and newlines; a
UTF-8 byte-order mark is allowed. A later row with the same name wins, as in A1111.

Applying a style follows A1111's rule for the prompt and the negative prompt alike: a style text
holding ``{prompt}`` has the user's text put in its place; otherwise the style text is appended
after ``", "`` (no separator when either side is empty). Styles apply in the order given.

Saving writes the whole file to a temporary file in the same folder, keeps the previous file as
``styles.csv.bak`` (A1111 keeps one too) and renames the temporary file over the old one, so a crash
leaves either the old file or the new one, never half of one; the other rows are never lost.

Pure standard library; no state outside ``StyleStore`` (which holds only its lock and its path).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from webui.generation.requests import RequestError

COLUMNS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"
MAX_NAME_CHARS = 200
MAX_FILE_BYTES = 16 * 1024 * 1024  # a styles.csv past this is refused: A1111's largest shared ones are ~1 MB


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


@dataclass(frozen=True)
class Styled:
    """A prompt pair with styles applied: the texts, the styles used and the names no style has."""

    prompt: str
    negative_prompt: str
    applied: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


class StylesFileError(RuntimeError):
    """The styles file cannot be read or written; the message says which file and what to do."""


# --- reading -----------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ""
    if size > MAX_FILE_BYTES:
        raise StylesFileError(f"{path} is {size} bytes; a styles file may have at most {MAX_FILE_BYTES}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StylesFileError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8 (A1111 writes UTF-8)") from None
    except OSError as exc:
        raise StylesFileError(f"cannot read {path}: {exc}") from None


def _rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV text; every value a string ('' for a missing one)."""
    if not text.strip():
        return [], []
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    header = [h for h in (reader.fieldnames or []) if h is not None]
    rows = []
    for row in reader:
        rows.append({k: (v if isinstance(v, str) else "") for k, v in row.items() if k is not None})
    return header, rows


def parse_styles(text: str) -> list[Style]:
    """The styles of a ``styles.csv`` text, in file order (a repeated name: the last row wins, in place
    of the first); rows without a name are skipped."""
    found: dict[str, Style] = {}
    for row in _rows(text)[1]:
        name = (row.get("name") or "").strip()
        if not name:
            continue
        prompt = row["prompt"] if "prompt" in row else row.get("text", "")
        found[name] = Style(name, prompt or "", row.get("negative_prompt") or "")
    return list(found.values())


def read_styles(path: Path) -> list[Style]:
    """The styles in ``path`` ([] when the file does not exist)."""
    return parse_styles(_read_text(path))


# --- applying ----------------------------------------------------------------------------------------


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style text over a prompt: ``{prompt}`` replaced by it, else ``prompt, style`` (A1111's rule)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: Sequence[Style], names: Iterable[str]) -> Styled:
    """``names`` applied in order to both prompts. A name no style has is left out and listed in
    ``unknown`` (A1111 skips it silently; callers say so in a warning)."""
    by_name = {s.name: s for s in styles}
    applied, unknown = [], []
    for name in names:
        style = by_name.get(name)
        if style is None:
            unknown.append(name)
            continue
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
        applied.append(name)
    return Styled(prompt, negative_prompt, tuple(applied), tuple(unknown))


def unmerge_prompt(style_text: str, styled: str) -> str | None:
    """The prompt that ``merge_prompt(style_text, prompt)`` turned into ``styled``, or None when it cannot have.

    Compared without the spaces around either text, as the infotext keeps them; an appended style must follow
    ``", "`` (or be the whole text), so a style "focus" is not found in "sharp focus".
    """
    text, style = styled.strip(), style_text.strip()
    if PLACEHOLDER in style:
        if style.count(PLACEHOLDER) != 1:
            return None
        left, right = style.split(PLACEHOLDER)
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left) : len(text) - len(right)]
        return None
    if not style:
        return text
    if text == style:
        return ""
    return text[: -len(style) - 2] if text.endswith(", " + style) else None


def extract_styles(prompt: str, negative_prompt: str, styles: Sequence[Style]) -> Styled:
    """The styles a styled prompt pair was made with (A1111's "infer styles" of a pasted infotext): styles are
    taken off the end of both texts, the last applied first, while one matches both; ``applied`` lists them in
    the order they apply, ``prompt`` / ``negative_prompt`` are what is left. A style with no text never matches."""
    left = [s for s in styles if s.prompt.strip() or s.negative_prompt.strip()]
    found: list[str] = []
    while True:
        for style in left:
            bare = unmerge_prompt(style.prompt, prompt)
            bare_negative = unmerge_prompt(style.negative_prompt, negative_prompt) if bare is not None else None
            if bare is not None and bare_negative is not None:
                prompt, negative_prompt = bare, bare_negative
                found.append(style.name)
                left.remove(style)
                break
        else:
            return Styled(prompt, negative_prompt, tuple(reversed(found)))


# --- saving ------------------------------------------------------------------------------------------


def check_style_name(name: str) -> str:
    """The name to save under (stripped); ``RequestError`` when it is empty, too long or holds control
    characters (a newline in a name would be a different style in every other tool)."""
    clean = (name or "").strip()
    if not clean:
        raise RequestError("name", "a style needs a name; type one")
    if len(clean) > MAX_NAME_CHARS:
        raise RequestError("name", f"is {len(clean)} characters long; a style name has at most {MAX_NAME_CHARS}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in clean):
        raise RequestError("name", "must not hold line breaks, tabs or other control characters")
    return clean


def render_styles(header: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    """CSV text of ``rows`` under ``header`` (A1111's three columns first, the file's others after)."""
    columns = list(COLUMNS) + [h for h in header if h not in COLUMNS]
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return out.getvalue()


def with_style(text: str, style: Style) -> str:
    """The file text with ``style`` in place of the row(s) of that name (the first keeps its place), or added."""
    header, rows = _rows(text)
    if "prompt" not in header and "text" in header:  # A1111's oldest layout: its prompt column becomes "prompt"
        header = ["prompt" if h == "text" else h for h in header]
        rows = [{("prompt" if k == "text" else k): v for k, v in row.items()} for row in rows]
    new = {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
    kept, placed = [], False
    for row in rows:
        if (row.get("name") or "").strip() != style.name:
            kept.append(row)
        elif not placed:
            kept.append({**row, **new})
            placed = True
    if not placed:
        kept.append(new)
    return render_styles(header, kept)


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` via a temporary file and a rename; the old file is kept as ``<name>.bak``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StyleStore:
    """The styles file of the app: read on every call (it is small, and the user may edit it meanwhile),
    one save at a time."""

    def __init__(self, path: Callable[[], Path]) -> None:
        self._path = path
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path()

    def styles(self) -> list[Style]:
        return read_styles(self.path)

    def apply(self, prompt: str, negative_prompt: str, names: Iterable[str]) -> Styled:
        names = [n for n in names if n]
        if not names:
            return Styled(prompt, negative_prompt)
        return apply_styles(prompt, negative_prompt, self.styles(), names)

    def extract(self, prompt: str, negative_prompt: str) -> Styled:
        return extract_styles(prompt, negative_prompt, self.styles())

    def save(self, name: str, prompt: str, negative_prompt: str) -> Style:
        """Add or replace the style ``name`` (checked) and write the file atomically."""
        style = Style(check_style_name(name), prompt or "", negative_prompt or "")
        path = self.path
        with self._lock:
            text = with_style(_read_text(path), style)
            try:
                write_atomically(path, text)
            except OSError as exc:
                raise StylesFileError(f"cannot write {path}: {exc}; check that its folder is writable") from None
        return style
