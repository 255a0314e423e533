"""Checks of single setting values: each returns "" when the value is usable, else what to change.

Pure standard library, like ``webui.config`` (which lists which check applies to which setting in its
``FIELD_CHECKS`` table): ``launch.py --help`` works on a bare Python.
"""

from __future__ import annotations

from typing import Any


class SettingsError(ValueError):
    """A setting has a value the app cannot use; the message says which and why."""


def check_port(value: int) -> str:
    return "" if 0 < value < 65536 else f"--port must be between 1 and 65535, got {value}"


def check_max_image_size(value: int) -> str:
    if 64 <= value <= 16384 and value % 8 == 0:
        return ""
    return f"max_image_size must be a multiple of 8 between 64 and 16384, got {value}"


def one_of(name: str, choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        return "" if value in choices else f"{name} must be one of {', '.join(choices)}, got {value!r}"

    return check


def not_negative(name: str, meaning: str) -> Any:
    return lambda value: "" if value >= 0 else f"{name} must be {meaning}, got {value}"


def check_memory_modes(value: str) -> str:
    """Syntax only here (no app imports); the mode names are checked against the registry when applied."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if value.strip().lower() in ("auto", "none", ""):
        return ""
    bad = [n for n in names if not n.replace("_", "").isalnum()]
    if bad:
        return f"memory_modes must be auto, none or a comma list of mode names, got {bad[0]!r}"
    return ""


MAX_PATH_CHARS = 4096


def check_path(name: str, *, optional: bool = False) -> Any:
    """A folder or file path: not blank (unless ``optional``), not absurdly long (text checks cover NUL bytes)."""

    def check(value: str) -> str:
        if not value.strip():
            return "" if optional else f"{name} must not be empty"
        if len(value) > MAX_PATH_CHARS:
            return f"{name} is {len(value)} characters long; a path has at most {MAX_PATH_CHARS}"
        return ""

    return check


def text_problem(name: str, value: str) -> str:
    """ "" when a text setting holds only printable Unicode, else what is wrong (NUL bytes, control characters,
    lone surrogates: a path with a NUL byte cannot be opened, and the next start would fail on it)."""
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF), None)
    if bad is None:
        return ""
    what = "a NUL byte" if bad == "\x00" else f"the control character {bad!r}"
    if 0xD800 <= ord(bad) <= 0xDFFF:
        what = "text that is not valid Unicode (a lone surrogate)"
    return f"{name} contains {what}; type the value again without it"


def check_origins(value: str) -> str:
    for origin in (o.strip() for o in value.split(",")):
        if origin and origin != "*" and not origin.startswith(("http://", "https://")):
            return f"cors_allow_origins: {origin!r} is not an origin; write it like http://localhost:3000"
    return ""


def check_regex(value: str) -> str:
    import re

    try:
        re.compile(value)
    except re.error as exc:
        return f"cors_allow_origins_regex is not a regular expression: {exc}"
    return ""


def credential_pairs(text: str) -> list[tuple[str, str]]:
    """``"user:pass,user2:pass2"`` -> pairs (split at the first ``:``); SettingsError naming the bad entry.

    The message never repeats a password: it names the entry by its position and user name only.
    """
    pairs = []
    for index, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            who = f" (user {user.strip()!r})" if sep and user.strip() else ""
            raise SettingsError(f"credential {index}{who} must be written user:password with both parts non-empty")
        pairs.append((user.strip(), password))
    return pairs


def check_credentials(name: str) -> Any:
    def check(value: str) -> str:
        try:
            credential_pairs(value)
        except SettingsError as exc:
            return f"{name}: {exc}"
        return ""

    return check
