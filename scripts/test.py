#!/usr/bin/env python3
"""The test command: set up the environment with the test extras, then run the whole suite.

    python scripts/test.py            # everything
    python scripts/test.py -k loader  # extra arguments go to pytest
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from webui.bootstrap import ensure_environment

    python = ensure_environment(ROOT / ".venv", extras=("test", "ray"))  # ray: the Ray Serve backend's tests
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
    code = subprocess.call([str(python), "-m", "pytest", "-q", "-rs", *argv], cwd=ROOT, env=env)
    if code == 5:
        print("pytest collected no tests (exit code 5)")
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
