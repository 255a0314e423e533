"""launch.py installs the ``ray`` extra when the run asks for the Ray backend, however it asks.

``ensure_environment`` is replaced by a recorder: nothing is installed and the app is not started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import launch
from webui import bootstrap

ROOT = Path(__file__).resolve().parent.parent


class _Stop(Exception):
    """Raised by the fake ensure_environment: the launcher got as far as choosing extras."""


def _extras_asked(monkeypatch, argv: list[str]) -> tuple[str, ...]:
    asked: list[tuple[str, ...]] = []

    def fake_ensure_environment(venv_dir, extras=(), **_kwargs):
        asked.append(tuple(extras))
        raise _Stop

    monkeypatch.setattr(bootstrap, "ensure_environment", fake_ensure_environment)
    with pytest.raises(_Stop):
        launch.main(argv)
    return asked[0]


# (command line, WEBUI_BACKEND or None, config file's "backend" or None) -> extras installed
CASES = [
    ([], None, None, ()),
    (["--backend", "local"], None, None, ()),
    (["--backend", "ray"], None, None, ("ray",)),
    (["--backend=ray", "--replicas", "2"], None, None, ("ray",)),
    ([], "ray", None, ("ray",)),
    ([], None, "ray", ("ray",)),
    (["--backend", "local"], "ray", "ray", ()),  # the command line wins, as in the app
    ([], "local", "ray", ()),  # the environment beats the config file
    ([], "gpu", None, ()),  # a value the app refuses: no extra; the app says what to fix
    ([], None, "gpu", ()),  # a bad config value is left out (local), as the app does
]


@pytest.mark.parametrize(("argv", "env_backend", "file_backend", "extras"), CASES)
def test_extras_for_each_way_of_asking(tmp_path, monkeypatch, argv, env_backend, file_backend, extras):
    for name in ("WEBUI_BACKEND", "WEBUI_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    if env_backend is not None:
        monkeypatch.setenv("WEBUI_BACKEND", env_backend)
    config = tmp_path / "config.json"
    if file_backend is not None:
        config.write_text(json.dumps({"backend": file_backend}), encoding="utf-8")
    assert _extras_asked(monkeypatch, [*argv, "--config-file", str(config)]) == extras


def test_the_ray_extra_changes_the_install_stamp():
    """A run with --backend ray after a local one installs again (the fingerprint holds the extras)."""
    torch = bootstrap.choose_torch(False, "linux")
    assert bootstrap.fingerprint(torch, ()) != bootstrap.fingerprint(torch, ("ray",))


def test_choosing_extras_needs_only_the_standard_library(tmp_path):
    """On a bare Python (``-S``: no site-packages), launch.py still reads --backend before installing."""
    code = "import launch; print(launch.extras_for(['--backend', 'ray', '--config-file', {!r}], {{}}))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code.format(str(tmp_path / "config.json"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('ray',)"
