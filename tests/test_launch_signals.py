"""``launch.py`` runs the app as a child process: a stop signal to the launcher stops the app too.

A real launcher process, a real ``webui.app`` child serving on a port: SIGTERM to the launcher must
end both, not leave the app serving re-parented to PID 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# The launcher as a user runs it, except that the environment step returns a wrapper around this
# interpreter (a different path, so launch.py starts the app as a child, as it does with its .venv).
LAUNCHER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import webui.bootstrap
webui.bootstrap.ensure_environment = lambda *args, **kwargs: Path({python!r})
import launch
raise SystemExit(launch.main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child pids from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_launcher_stops_the_app_child_too(tmp_path, signum):
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER.format(root=str(ROOT), python=str(wrapper)))
    port = _free_port()
    args = ["--port", str(port), "--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "out")]
    args += ["--config-file", str(tmp_path / "config.json"), "--extensions-dir", str(tmp_path / "ext")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WEBUI_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, str(script), *args]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    app = 0
    try:
        lines = []
        for line in launcher.stdout:
            lines.append(line)
            if "Running on http://" in line:
                break
        assert launcher.poll() is None, "".join(lines)
        (app,) = _children(launcher.pid)
        assert _alive(app)
        launcher.send_signal(signum)
        assert launcher.wait(30) in (0, 128 + signum), "".join(lines)
        assert _wait_for(lambda: not _alive(app), 10), "the app kept running after the launcher stopped"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
        if app and _alive(app):  # the app this test started, left behind by a failing launcher
            os.kill(app, signal.SIGKILL)
