"""launch.py's environment set-up: torch build choice and install-skipping."""

from __future__ import annotations

import subprocess
import sys

from webui import bootstrap


def _fake_smi(stdout, code=0):
    return lambda *a, **k: subprocess.CompletedProcess(a, code, stdout=stdout, stderr="")


def test_nvidia_detection(monkeypatch):
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert bootstrap.has_nvidia_gpu(run=_fake_smi("GPU 0: NVIDIA H100 (UUID: x)"))
    assert not bootstrap.has_nvidia_gpu(run=_fake_smi("", code=9))
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: None)
    assert not bootstrap.has_nvidia_gpu(run=_fake_smi("GPU 0"))


def test_torch_choice_table(monkeypatch):
    monkeypatch.delenv("WEBUI_TORCH_INDEX_URL", raising=False)
    monkeypatch.delenv("WEBUI_TORCH_REQUIREMENT", raising=False)
    linux_cpu = bootstrap.choose_torch(False, "Linux")
    assert (linux_cpu.requirement, linux_cpu.index_url, linux_cpu.accelerator) == ("torch==2.13.0", None, "cpu")
    win_cuda = bootstrap.choose_torch(True, "Windows")
    assert win_cuda.accelerator == "cuda" and "cu1" in win_cuda.index_url
    override = bootstrap.choose_torch(False, "Linux", index_override="https://example.invalid/cpu")
    assert override.pip_args() == ["torch==2.13.0", "--index-url", "https://example.invalid/cpu"]


def test_second_run_installs_nothing(tmp_path, monkeypatch):
    venv_dir = tmp_path / "venv"
    python = bootstrap.venv_python(venv_dir)
    python.parent.mkdir(parents=True)
    python.write_text("")
    installs = []
    monkeypatch.setattr(bootstrap, "in_virtualenv", lambda: False)
    monkeypatch.setattr(bootstrap, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(bootstrap, "install", lambda *a, **k: installs.append(a))
    logs = []
    assert bootstrap.ensure_environment(venv_dir, log=logs.append) == python
    assert bootstrap.ensure_environment(venv_dir, log=logs.append) == python
    assert len(installs) == 1 and "up to date" in logs[-1]
    bootstrap.ensure_environment(venv_dir, extras=("test",), log=logs.append)  # extras changed
    assert len(installs) == 2
    bootstrap.ensure_environment(venv_dir, extras=("test",), reinstall=True, log=logs.append)
    assert len(installs) == 3


def test_skip_install_uses_this_python(tmp_path):
    assert str(bootstrap.ensure_environment(tmp_path / "v", skip_install=True)) == sys.executable


def test_spandrel_is_installed_without_its_declared_dependencies(tmp_path, monkeypatch):
    """spandrel declares torchvision; PyPI's build of it breaks imports beside the CPU torch build."""
    calls = []
    monkeypatch.setattr(bootstrap, "_pip", lambda python, args, log: calls.append(list(args)))
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    bootstrap.install(python, bootstrap.choose_torch(False, "linux"), ("test",), lambda line: None)
    assert calls[-1][0] == "--no-deps" and any(r.startswith("spandrel==") for r in calls[-1])
    assert not any(a.startswith("spandrel") for args in calls[:-1] for a in args)
