"""Settings merge order and validation; the launcher's CLI works on a bare Python."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from webui.config import Settings, SettingsError, load_settings, write_config_file

ROOT = Path(__file__).resolve().parent.parent


def test_defaults(tmp_path):
    s, _ = load_settings([], environ={}, base_dir=tmp_path)
    assert (s.host, s.port, s.device, s.precision) == ("127.0.0.1", 7860, "auto", "auto")


def test_file_then_env_then_cli(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"port": 1111, "precision": "bf16", "ram_cache_models": 2}))
    s, _ = load_settings([], environ={}, base_dir=tmp_path)
    assert (s.port, s.precision, s.ram_cache_models) == (1111, "bf16", 2)
    s, _ = load_settings([], environ={"WEBUI_PORT": "2222"}, base_dir=tmp_path)
    assert (s.port, s.precision) == (2222, "bf16")
    s, _ = load_settings(["--port", "3333"], environ={"WEBUI_PORT": "2222"}, base_dir=tmp_path)
    assert s.port == 3333


def test_listen_binds_all_interfaces(tmp_path):
    s, _ = load_settings(["--listen"], environ={}, base_dir=tmp_path)
    assert (s.listen, s.host) == (True, "0.0.0.0")


@pytest.mark.parametrize(
    "argv,env,message",
    [
        ([], {"WEBUI_PORT": "abc"}, "must be a int"),
        ([], {"WEBUI_DEVICE": "tpu"}, "--device must be one of"),
        (["--port", "70000"], {}, "between 1 and 65535"),
    ],
)
def test_bad_values_say_what_to_change(tmp_path, argv, env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(argv, environ=env, base_dir=tmp_path)


def test_broken_config_file_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SettingsError, match="config.json"):
        load_settings([], environ={}, base_dir=tmp_path)


def test_write_config_file_is_atomic_and_skips_cli_only(tmp_path):
    path = tmp_path / "config.json"
    write_config_file(path, {"port": 9000, "skip_install": True})
    assert json.loads(path.read_text()) == {"port": 9000}
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(SettingsError, match="valid settings"):
        Settings().with_updates(colour="red")


def test_launch_help_lists_flags_without_dependencies():
    # -S -I: no site-packages at all, as on a fresh machine.
    out = subprocess.run(
        [sys.executable, "-S", "-I", str(ROOT / "launch.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--port", "--listen", "--models-dir", "--outputs-dir", "--skip-install", "--device", "--precision"):
        assert flag in out.stdout
