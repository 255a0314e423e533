#!/usr/bin/env python3
"""One-click entry: set up the environment, then serve the web UI.

    python launch.py            # first run creates .venv and installs; later runs start at once
    python launch.py --help     # every flag
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    started = time.time()
    from webui.bootstrap import ensure_environment
    from webui.config import build_arg_parser

    args, _ = build_arg_parser().parse_known_args(argv)  # --help prints and exits here
    venv_dir = Path(args.venv_dir) if args.venv_dir else ROOT / ".venv"
    python = ensure_environment(
        venv_dir,
        skip_install=bool(args.skip_install),
        reinstall=args.reinstall,
        index_override=args.torch_index_url,
    )
    env = dict(os.environ, WEBUI_LAUNCHED_AT=str(started))
    if Path(python).resolve() == Path(sys.executable).resolve():
        os.environ.update(env)
        from webui.app import main as app_main

        return app_main(argv)
    try:
        return subprocess.call([str(python), "-m", "webui.app", *argv], cwd=ROOT, env=env)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
