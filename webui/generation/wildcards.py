"""Wildcards: ``__name__`` in a prompt becomes a random line of ``models/wildcards/name.txt``.

``__dir/name__`` reads ``models/wildcards/dir/name.txt``. A chosen line may hold wildcards of its
own; they are replaced in turn, down to ``MAX_DEPTH`` levels (deeper ones stay as written). Empty
lines and lines starting with ``#`` are never chosen. The choice comes from an RNG seeded with the
image's seed (and the prompt field), so one seed always makes the same choice, and the chosen prompt
is the one written into the image's infotext (as A1111's dynamic-prompts extension does).

A name is only ever a file inside the wildcards folder: letters, digits, ``_ - . /`` and spaces, no
``..`` part, and the resolved path (symlinks followed) must lie in the folder
(``webui.security.files.is_inside``). A name without a file stays in the prompt as written, and the
job says so in its warnings.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from webui.security.files import is_inside

MAX_DEPTH = 8  # wildcards inside chosen lines, this many levels deep
MAX_FILE_BYTES = 4 * 1024 * 1024  # a larger wildcard file is not read
MAX_REPLACEMENTS = 500  # per prompt: a file whose lines name themselves cannot grow a prompt without end

_WILDCARD = re.compile(r"__([A-Za-z0-9][A-Za-z0-9_\-./ ]*?)__")


@dataclass
class Resolved:
    """A prompt with its wildcards replaced, and the names that had no file."""

    text: str
    missing: list[str] = field(default_factory=list)


class Wildcards:
    """The wildcards folder; reads files when a prompt names them (nothing is read at construction)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def path_of(self, name: str) -> Path | None:
        """The file of wildcard ``name``, or None when it is not a safe name of a file in the folder."""
        parts = name.strip().split("/")
        if any(p.strip() in ("", ".", "..") for p in parts) or "\\" in name or "\x00" in name:
            return None
        path = self.folder.joinpath(*(p.strip() for p in parts)).with_name(parts[-1].strip() + ".txt")
        if not path.is_file() or not is_inside(path, self.folder):
            return None
        return path

    def lines(self, name: str) -> list[str] | None:
        """The lines wildcard ``name`` chooses from (None: no such file, or it is too large or empty)."""
        path = self.path_of(name)
        if path is None:
            return None
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                return None
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        found = [line.strip() for line in text.splitlines()]
        found = [line for line in found if line and not line.startswith("#")]
        return found or None

    def names(self) -> list[str]:
        """Every wildcard name in the folder (``dir/name`` for sub-folders), sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.relative_to(self.folder).with_suffix("").as_posix() for p in self.folder.rglob("*.txt"))

    def resolve(self, text: str, seed: int, salt: str = "prompt") -> Resolved:
        """``text`` with its wildcards replaced by lines chosen with an RNG seeded from ``seed`` and ``salt``."""
        if "__" not in text:
            return Resolved(text)
        rng = random.Random(f"{salt}:{int(seed)}")
        out = Resolved(text)
        budget = [MAX_REPLACEMENTS]
        cache: dict[str, list[str] | None] = {}
        out.text = self._replace(text, rng, 0, out.missing, budget, cache)
        return out

    def _replace(
        self, text: str, rng: random.Random, depth: int, missing: list[str], budget: list[int], cache: dict
    ) -> str:
        def choose(match: re.Match) -> str:
            name = match.group(1)
            if name not in cache:
                cache[name] = self.lines(name)
            lines = cache[name]
            if lines is None or budget[0] <= 0:
                if lines is None and name not in missing:
                    missing.append(name)
                return match.group(0)
            budget[0] -= 1
            line = rng.choice(lines)
            if depth + 1 >= MAX_DEPTH or "__" not in line:
                return line
            return self._replace(line, rng, depth + 1, missing, budget, cache)

        return _WILDCARD.sub(choose, text)


def missing_message(names: list[str], folder: Path) -> str:
    """The job warning for wildcards that have no file."""
    shown = ", ".join(f"__{n}__" for n in names)
    return f"no wildcard file for {shown} in {folder}; put a name.txt there (one choice a line) or fix the name"
