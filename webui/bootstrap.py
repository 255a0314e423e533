"""Set up the Python environment: virtual environment, torch build, the project.

Standard library only: this runs on a bare Python before anything is installed.
A second run with nothing changed installs nothing (a fingerprint of
pyproject.toml, the torch choice and the extras is kept in the environment).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
STAMP_NAME = ".webui-install.json"
TORCH_VERSION = "2.13.0"
# accelerator -> extras installed with it: OpenVINO runs the UNet faster than torch on many CPUs (--cpu-engine).
ACCELERATOR_EXTRAS = {"cpu": ("openvino",), "cuda": ()}
# (accelerator, OS) -> pip index that has the right torch build; None = PyPI.
# PyPI's Linux wheels are CUDA builds; on Windows PyPI only has CPU builds.
TORCH_INDEX = {
    ("cuda", "linux"): None,
    ("cuda", "windows"): "https://download.pytorch.org/whl/cu128",
    ("cpu", "linux"): None,
    ("cpu", "windows"): None,
    ("cpu", "darwin"): None,
}


@dataclass(frozen=True)
class TorchChoice:
    requirement: str
    index_url: str | None
    accelerator: str

    def pip_args(self) -> list[str]:
        args = [self.requirement]
        if self.index_url:
            args += ["--index-url", self.index_url]
        return args


def in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix) or bool(os.environ.get("CONDA_PREFIX"))


def venv_python(venv_dir: Path) -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return venv_dir / sub


def has_nvidia_gpu(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        out = run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def choose_torch(nvidia: bool, system: str | None = None, index_override: str | None = None) -> TorchChoice:
    system = (system or platform.system()).lower()
    accel = "cuda" if nvidia else "cpu"
    index = index_override or os.environ.get("WEBUI_TORCH_INDEX_URL") or TORCH_INDEX.get((accel, system))
    req = os.environ.get("WEBUI_TORCH_REQUIREMENT") or f"torch=={TORCH_VERSION}"
    return TorchChoice(req, index, accel)


def with_accelerator_extras(extras: Sequence[str], accelerator: str) -> tuple[str, ...]:
    """The extras asked for plus those of the accelerator (``openvino`` on machines without a CUDA GPU)."""
    return tuple(dict.fromkeys((*extras, *ACCELERATOR_EXTRAS.get(accelerator, ()))))


def fingerprint(torch: TorchChoice, extras: Sequence[str], root: Path = ROOT) -> str:
    h = hashlib.sha256()
    h.update((root / "pyproject.toml").read_bytes())
    h.update(json.dumps([torch.requirement, torch.index_url, sorted(extras), sys.version_info[:2]]).encode())
    return h.hexdigest()


def _stamp_path(python: Path) -> Path:
    # sys.prefix of that interpreter: the venv root for a venv python
    return python.parent.parent / STAMP_NAME


def is_current(python: Path, digest: str) -> bool:
    try:
        return json.loads(_stamp_path(python).read_text())["fingerprint"] == digest
    except (OSError, ValueError, KeyError):
        return False


def _pip(python: Path, args: Sequence[str], log: Callable[[str], None]) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log("$ " + " ".join(cmd))
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(
            f"Installing failed (pip exit code {result.returncode}). Read the pip output above;"
            " fix the network or disk problem it names, then run the same command again."
        )


def no_deps_requirements(root: Path = ROOT) -> list[str]:
    """``[tool.webui] no_deps`` of pyproject.toml: packages installed without the dependencies they declare."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^no_deps\s*=\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def install(python: Path, torch: TorchChoice, extras: Sequence[str], log: Callable[[str], None]) -> None:
    _pip(python, torch.pip_args(), log)
    target = f".[{','.join(extras)}]" if extras else "."
    # The constraint keeps pip from replacing the torch build chosen above.
    constraints = _stamp_path(python).with_name(".webui-constraints.txt")
    constraints.write_text(f"{torch.requirement}\n")
    _pip(python, ["-e", target, "-c", str(constraints)], log)
    no_deps = no_deps_requirements()
    if no_deps:
        _pip(python, ["--no-deps", *no_deps], log)


def ensure_environment(
    venv_dir: Path,
    extras: Sequence[str] = (),
    skip_install: bool = False,
    reinstall: bool = False,
    index_override: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The interpreter to run the app with, after installing what is missing."""
    if skip_install:
        return Path(sys.executable)
    if in_virtualenv():
        python = Path(sys.executable)
    else:
        python = venv_python(venv_dir)
        if not python.exists():
            log(f"Creating virtual environment in {venv_dir} ...")
            venv.EnvBuilder(with_pip=True, upgrade_deps=False).create(venv_dir)
    torch = choose_torch(has_nvidia_gpu(), index_override=index_override)
    extras = with_accelerator_extras(extras, torch.accelerator)
    digest = fingerprint(torch, extras)
    if not reinstall and is_current(python, digest):
        log("Environment is up to date; nothing to install.")
        return python
    log(f"Installing dependencies ({torch.accelerator} build of torch: {torch.requirement}) ...")
    install(python, torch, extras, log)
    _stamp_path(python).write_text(json.dumps({"fingerprint": digest}))
    return python
