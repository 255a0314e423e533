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


def test_broken_config_file_is_named_and_the_app_starts_with_defaults(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    problems: list[str] = []
    s, _ = load_settings([], environ={}, base_dir=tmp_path, problems=problems)
    assert s == Settings(config_file=str(tmp_path / "config.json"))
    assert len(problems) == 1 and "config.json" in problems[0] and "default settings" in problems[0]


@pytest.mark.parametrize(
    ("stored", "name", "message"),
    [
        ({"extensions_dir": "ext\x00"}, "extensions_dir", "NUL byte"),
        ({"models_dir": "a\x00b"}, "models_dir", "NUL byte"),
        ({"outputs_dir": "out\nput"}, "outputs_dir", "control character"),
        ({"cache_dir": "\ud800"}, "cache_dir", "not valid Unicode"),
        ({"port": "abc"}, "port", "must be a int"),
        ({"port": 0}, "port", "between 1 and 65535"),
        ({"precision": "fp64"}, "precision", "must be one of"),
        ({"models_dir": "   "}, "models_dir", "must not be empty"),
        ({"filename_pattern": "[seed]\x00"}, "filename_pattern", "NUL byte"),
        ({"cors_allow_origins": "evil.example"}, "cors_allow_origins", "not an origin"),
        ({"job_timeout": -5}, "job_timeout", "0 (no limit) or more"),
    ],
)
def test_a_bad_value_in_the_file_is_reported_and_replaced_by_its_default(tmp_path, stored, name, message):
    (tmp_path / "config.json").write_text(json.dumps({**stored, "preview_every": 3}))
    problems: list[str] = []
    s, _ = load_settings([], environ={}, base_dir=tmp_path, problems=problems)
    assert getattr(s, name) == getattr(Settings(), name)  # the default
    assert s.preview_every == 3  # the good values in the same file still apply
    assert len(problems) == 1 and name in problems[0] and message in problems[0], problems


def test_a_bad_value_on_the_command_line_or_environment_still_stops_the_start(tmp_path):
    with pytest.raises(SettingsError, match="NUL byte"):
        load_settings([], environ={"WEBUI_MODELS_DIR": "a\x00b"}, base_dir=tmp_path)


def test_the_app_starts_after_the_settings_page_saved_a_nul_byte_in_an_earlier_version(tmp_path):
    """The exact file issue 12 found (saved by the old Settings page): the next start used to exit 1."""
    from webui.app import build_services

    (tmp_path / "config.json").write_text(json.dumps({"extensions_dir": "ext\x00", "models_dir": "a\x00b"}))
    problems: list[str] = []
    settings, _ = load_settings([], environ={}, base_dir=tmp_path, problems=problems)
    services = build_services(settings, base=tmp_path)
    assert services.paths.extensions == tmp_path / "extensions" and services.paths.models == tmp_path / "models"
    assert [p.split(":")[1].split()[0] for p in problems] == ["extensions_dir", "models_dir"]


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
