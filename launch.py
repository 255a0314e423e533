#!/usr/bin/env python3
"""One-click entry: set up the environment, then serve the web UI.

    python launch.py            # first run creates .venv and installs; later runs start at once
    python launch.py --help     # every flag
    python launch.py --backend ray  # jobs on Ray Serve replicas, one per GPU (installs the ray extra)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
# Signals that stop the app: sent to this launcher (kill, systemd, a closed terminal), they go to the child.
FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


def run_child(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run the app as a child process and exit with it: a stop signal to this launcher is passed on.

    Without this, ``kill <launcher>`` ended the launcher and left the app serving, re-parented to
    PID 1. The child gets its own session on POSIX, so Ctrl+C in the terminal reaches it once (from
    here), not twice. Returns the child's exit code (128 + the signal number when a signal ended it,
    as a shell reports it).
    """
    posix = os.name == "posix"
    started: list[subprocess.Popen] = []
    early: list[int] = []  # a signal that came while the child was being started

    def forward(signum: int, _frame: object) -> None:
        if not started:
            early.append(signum)
        elif started[0].poll() is None:
            started[0].send_signal(signum)

    # Windows: Ctrl+C reaches the child by itself, and Popen.send_signal knows only SIGTERM there.
    signals = FORWARDED_SIGNALS if posix else (signal.SIGTERM,)
    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        child = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=posix)
        started.append(child)
        for signum in early:
            child.send_signal(signum)
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # Windows: Ctrl+C reached both; wait for the child to finish
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


# Settings value -> pyproject extras to install for it (``--backend ray`` needs ``ray[serve]``).
BACKEND_EXTRAS = {"local": (), "ray": ("ray",)}


def extras_for(argv: list[str], environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The pyproject extras this run needs, from the backend asked for.

    ``--backend ray`` on the command line, ``WEBUI_BACKEND=ray`` or ``"backend": "ray"`` in the config
    file all ask for the ``ray`` extra: the same merge the app does (``webui.config.load_settings``,
    standard library only), so the launcher installs what the app will use. Settings the app would
    refuse install no extra: the app starts and says what to fix.
    """
    from webui.config import SettingsError, load_settings

    try:
        settings, _ = load_settings(argv, environ=environ, base_dir=ROOT)
    except SettingsError:
        return ()
    return BACKEND_EXTRAS.get(settings.backend, ())


def main(argv: list[str]) -> int:
    started = time.time()
    from webui.bootstrap import ensure_environment
    from webui.config import build_arg_parser

    args, _ = build_arg_parser().parse_known_args(argv)  # --help prints and exits here
    venv_dir = Path(args.venv_dir) if args.venv_dir else ROOT / ".venv"
    python = ensure_environment(
        venv_dir,
        extras=extras_for(argv),
        skip_install=bool(args.skip_install),
        reinstall=args.reinstall,
        index_override=args.torch_index_url,
    )
    env = dict(os.environ, WEBUI_LAUNCHED_AT=str(started))
    if Path(python).resolve() == Path(sys.executable).resolve():
        os.environ.update(env)
        from webui.app import main as app_main

        return app_main(argv)
    return run_child([str(python), "-m", "webui.app", *argv], cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
