#!/usr/bin/env python3
"""Seconds from ``python launch.py`` to the first page (and the API) answering, median of N starts.

    python scripts/bench_startup.py --runs 5
    python scripts/bench_startup.py --runs 3 --models-dir /path/to/models   # with real checkpoints to scan

Each start runs ``launch.py`` as a user would on an installed app (the environment is current, so it
installs nothing; the script refuses to run otherwise, or pass ``--skip-install``) with a temporary
data folder (models, outputs, extensions, config, cache) and a free port, polls ``GET /`` until it
answers 200 with the page's HTML, then ``GET /sdapi/v1/sd-models`` until it answers 200, and stops
the app with SIGTERM (what ``kill`` sends). One start before the measured ones fills ``cache/`` (what
a first start on a machine measures, e.g. the CPU precision probe) and writes the app's bytecode
(``PYTHONDONTWRITEBYTECODE`` is dropped for the app, as a user's shell does not set it); it is printed,
not counted. Besides wall seconds it prints the CPU seconds the app had used when its page answered
(Linux, from /proc), a figure that moves less when other work shares the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
POLL_S = 0.02


@dataclass(frozen=True)
class Start:
    page_s: float  # GET / answered 200 with the page
    api_s: float  # GET /sdapi/v1/sd-models answered 200
    page_cpu_s: float  # CPU seconds (user + system) the app had used when the page answered; nan off Linux
    logged: str  # the app's own "Running on ... (started in N s)" line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str, must_contain: str = "") -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
    return response.status == 200 and must_contain.lower() in body.lower()


def wait_for(url: str, must_contain: str, proc: subprocess.Popen, t0: float, timeout: float) -> float:
    while time.perf_counter() - t0 < timeout:
        if answers(url, must_contain):
            return time.perf_counter() - t0
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode} before {url} answered")
        time.sleep(POLL_S)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc), nan where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def launch_command(data: Path, port: int, models: Path | None, skip_install: bool) -> list[str]:
    cmd = [
        sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--no-browser",
        "--models-dir", str(models or data / "models"), "--outputs-dir", str(data / "outputs"),
        "--extensions-dir", str(data / "extensions"), "--config-file", str(data / "config.json"),
    ]
    return cmd + (["--skip-install"] if skip_install else [])


def start_once(data: Path, models: Path | None, skip_install: bool, timeout: float) -> Start:
    port = free_port()
    env = dict(os.environ, WEBUI_CACHE_DIR=str(data / "cache"), PYTHONUNBUFFERED="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    log = (data / "app.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        launch_command(data, port, models, skip_install), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        page = wait_for(base + "/", "<html", proc, t0, timeout)
        page_cpu = cpu_seconds(proc.pid)
        api = wait_for(base + "/sdapi/v1/sd-models", "", proc, t0, timeout)
    finally:
        stop(proc)
        log.close()
    text = (data / "app.log").read_text(errors="replace")
    logged = next((line.strip() for line in text.splitlines() if "Running on http://" in line), "")
    return Start(page, api, page_cpu, logged)


def environment_is_current() -> bool:
    from webui.bootstrap import choose_torch, fingerprint, has_nvidia_gpu, in_virtualenv, is_current

    return in_virtualenv() and is_current(Path(sys.executable), fingerprint(choose_torch(has_nvidia_gpu()), ()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="measured starts (default 5)")
    p.add_argument("--models-dir", type=Path, help="a models folder to scan (default: an empty temporary one)")
    p.add_argument("--skip-install", action="store_true", help="pass --skip-install (environment not current)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one start may take (default 120)")
    args = p.parse_args(argv)
    if not args.skip_install and not environment_is_current():
        print(
            "the environment is not current: `python launch.py` would install first. Run it once, or pass"
            " --skip-install to measure the start without the install check",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        data = Path(tmp)
        first = start_once(data, args.models_dir, args.skip_install, args.timeout)
        print(f"first start (fills cache/): page {first.page_s:.2f} s, API {first.api_s:.2f} s", flush=True)
        starts = []
        for i in range(args.runs):
            s = start_once(data, args.models_dir, args.skip_install, args.timeout)
            starts.append(s)
            print(
                f"run {i + 1}: page {s.page_s:.2f} s (CPU {s.page_cpu_s:.2f} s), API {s.api_s:.2f} s   [{s.logged}]",
                flush=True,
            )
    pages = [s.page_s for s in starts]
    apis = [s.api_s for s in starts]
    cpus = [s.page_cpu_s for s in starts]
    print(
        f"median of {len(starts)}: first page {statistics.median(pages):.2f} s"
        f" (min {min(pages):.2f}, max {max(pages):.2f}; CPU {statistics.median(cpus):.2f} s);"
        f" API {statistics.median(apis):.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
