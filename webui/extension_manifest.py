"""Extension manifests (``extension.toml``), their Python requirements, and when installing them is allowed.

Pure data and checks: no plugin manager here (that is ``webui.extensions``).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "extension.toml"
MANIFEST_FIELDS = ("name", "version", "description", "requires", "entry")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")


class ExtensionError(ValueError):
    """A problem with an extension, worded for the user."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    requires: tuple[str, ...]
    entry: str


def read_manifest(folder: Path) -> Manifest:
    """Parse and check ``<folder>/extension.toml``; raises ExtensionError saying what to fix."""
    from packaging.requirements import InvalidRequirement, Requirement

    file = folder / MANIFEST
    if not file.is_file():
        raise ExtensionError(f"no {MANIFEST} in {folder} (is it an A1111 extension? those do not work here)")
    toml = _toml()
    try:
        data = toml.loads(file.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExtensionError(f"{MANIFEST} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(MANIFEST_FIELDS))
    if unknown:
        raise ExtensionError(f"unknown field(s) {unknown} in {MANIFEST}; valid: {list(MANIFEST_FIELDS)}")
    for key in ("name", "version", "description", "entry"):
        if key in data and not isinstance(data[key], str):
            raise ExtensionError(f"{key} in {MANIFEST} must be a string")
    name, version = data.get("name", "").strip(), data.get("version", "").strip()
    if not _NAME.match(name):
        raise ExtensionError(f"name {name!r} in {MANIFEST} must be 1-64 letters, digits, '.-_ '")
    if not version:
        raise ExtensionError(f'{MANIFEST} needs a version, e.g. version = "1.0.0"')
    requires = data.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ExtensionError('requires must be a list of strings, e.g. ["numpy>=1.26"]')
    for item in requires:
        try:
            Requirement(item)
        except InvalidRequirement as exc:
            raise ExtensionError(f"requires {item!r} is not a valid requirement: {exc}") from None
    entry = data.get("entry") or ("__init__.py" if (folder / "__init__.py").is_file() else "main.py")
    if "/" in entry or "\\" in entry or not entry.endswith(".py") or not (folder / entry).is_file():
        raise ExtensionError(f'entry file {entry!r} not found; add __init__.py or set entry = "x.py"')
    return Manifest(name, version, data.get("description", ""), tuple(requires), entry)


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip install tomli
        import tomli as tomllib
    return tomllib


def missing_requirements(requires: Iterable[str]) -> tuple[str, ...]:
    """The requirements that are not installed in this environment, or installed in a version that does not fit."""
    from packaging.requirements import Requirement

    missing = []
    for item in requires:
        req = Requirement(item)
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(item)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(item)
    return tuple(missing)


def install_allowed(host: str, insecure_extension_access: bool = False) -> bool:
    """Requirements may be installed from the UI only when the app listens on localhost, or with the flag."""
    return insecure_extension_access or host in LOCAL_HOSTS


def pip_runner(command: list[str]) -> tuple[int, str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    return done.returncode, done.stdout + done.stderr
