"""ExtensionHost: discovery, manifests, validation, failure isolation at load time, enable/disable, installs.

The broken extensions live in tests/fixtures/extensions/ and are copied to a temporary folder first
(importing them writes __pycache__). Hook calling and order are in test_hooks.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from webui.extensions import ExtensionError, ExtensionHost, install_allowed, read_manifest
from webui.hooks import hookimpl

FIXTURES = Path(__file__).parent / "fixtures" / "extensions"
EXAMPLES = Path(__file__).parent.parent / "extensions"


def copy_extensions(dest: Path, *names: str, source: Path = FIXTURES) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def make_host(tmp_path: Path, *names: str, **kwargs) -> ExtensionHost:
    folder = copy_extensions(tmp_path / "extensions", *names)
    kwargs.setdefault("allow_install", True)
    kwargs.setdefault("entry_points", list)
    return ExtensionHost(folder, tmp_path / "state.json", **kwargs)


def by_name(host: ExtensionHost) -> dict:
    return {ext.name: ext for ext in host.extensions()}


# --- discovery ---------------------------------------------------------------------------------


def test_discover_loads_folder_extensions_with_their_manifest(tmp_path):
    host = make_host(tmp_path, "good", "relative-entry")
    found = by_name(host) if host.discover() else {}
    good = found["good"]
    assert (good.status, good.version, good.source, good.enabled) == ("ok", "0.1", "folder", True)
    assert good.requires == ("pluggy>=1.0",) and good.missing == ()
    assert good.hooks == ("webui_before_job", "webui_before_save", "webui_settings")
    assert found["relative-entry"].status == "ok"  # entry = "plugin.py" with `from .helper import ...`


def test_discover_ignores_files_and_hidden_folders(tmp_path):
    host = make_host(tmp_path, "good")
    (tmp_path / "extensions" / "README.md").write_text("notes")
    shutil.copytree(FIXTURES / "good", tmp_path / "extensions" / ".hidden")
    assert [e.name for e in host.discover()] == ["good"]


def test_folder_is_imported_under_a_private_name_without_touching_sys_path(tmp_path):
    host = make_host(tmp_path, "relative-entry")
    path_before = list(sys.path)
    host.discover()
    assert sys.path == path_before
    prefix = f"webui_ext_relative_entry_{id(host):x}_"
    [package] = [m for m in sys.modules if m.startswith(prefix) and "." not in m]
    assert sorted(m for m in sys.modules if m.startswith(package)) == [
        package,
        f"{package}.helper",
        f"{package}.plugin",
    ]
    host.discover()  # a second discover drops the first import's modules
    assert package not in sys.modules


def test_missing_extensions_folder_is_not_an_error(tmp_path):
    host = ExtensionHost(tmp_path / "nowhere", tmp_path / "state.json", allow_install=False, entry_points=list)
    assert host.discover() == []


def _entry_point(name: str, plugin: object, dist: str = "webui-fancy", version: str = "2.0"):
    return SimpleNamespace(
        name=name, value=f"{dist}:plugin", load=lambda: plugin, dist=SimpleNamespace(name=dist, version=version)
    )


class PackagedPlugin:
    @hookimpl
    def webui_before_save(self, event):
        return {"Packaged": "yes"}


def test_entry_point_plugins_are_discovered(tmp_path):
    eps = [_entry_point("fancy", PackagedPlugin)]  # a class is instantiated; a module is used as it is
    host = make_host(tmp_path, "good", entry_points=lambda: eps)
    fancy = by_name(host)["fancy"] if host.discover() else None
    assert (fancy.source, fancy.path, fancy.version, fancy.status) == ("package", "package webui-fancy", "2.0", "ok")
    assert host.before_save(SimpleNamespace()) == {"Good": "yes", "Packaged": "yes"}


def test_entry_point_that_fails_to_load_is_reported(tmp_path):
    def broken():
        raise ImportError("No module named 'fancy_dep'")

    ep = SimpleNamespace(name="fancy", value="fancy:plugin", load=broken, dist=None)
    host = make_host(tmp_path, "good", entry_points=lambda: [ep])
    found = by_name(host) if host.discover() else {}
    assert found["fancy"].status == "failed" and "fancy_dep" in found["fancy"].error
    assert found["good"].status == "ok"


def test_the_same_name_twice_fails_the_second(tmp_path):
    host = make_host(tmp_path, "good", entry_points=lambda: [_entry_point("good", PackagedPlugin)])
    found = by_name(host) if host.discover() else {}
    assert found["good"].status == "ok" and found["good"].source == "folder"
    [dup] = [e for e in found.values() if e.source == "package"]
    assert dup.status == "failed" and "already used by" in dup.error


# --- manifests ---------------------------------------------------------------------------------

GOOD_ENTRY = {"__init__.py": ""}


@pytest.mark.parametrize(
    ("toml", "files", "message"),
    [
        ('name = "x"\nversion = "1"\n', GOOD_ENTRY, ""),
        ('name = "x"\nversion = "1"\n', {"main.py": ""}, ""),  # main.py is the fallback entry
        ('name = "x"\nversion = \n', GOOD_ENTRY, "not valid TOML"),
        ('name = "x"\n', GOOD_ENTRY, "needs a version"),
        ('version = "1"\n', GOOD_ENTRY, "name ''"),
        ('name = "x/y"\nversion = "1"\n', GOOD_ENTRY, "name 'x/y'"),
        ('name = "x"\nversion = "1"\nrequire = []\n', GOOD_ENTRY, "unknown field(s) ['require']"),
        ('name = "x"\nversion = "1"\nrequires = "numpy"\n', GOOD_ENTRY, "requires must be a list"),
        ('name = "x"\nversion = "1"\nrequires = ["--index-url=http://evil"]\n', GOOD_ENTRY, "not a valid requirement"),
        ('name = "x"\nversion = "1"\n', {"other.py": ""}, "entry file 'main.py' not found"),
        ('name = "x"\nversion = "1"\nentry = "../x.py"\n', GOOD_ENTRY, "entry file '../x.py'"),
        ('name = "x"\nversion = 1\n', GOOD_ENTRY, "version in extension.toml must be a string"),
    ],
)
def test_manifest_checks(tmp_path, toml, files, message):
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "extension.toml").write_text(toml)
    for name, text in files.items():
        (folder / name).write_text(text)
    if not message:
        assert read_manifest(folder).name == "x"
        return
    with pytest.raises(ExtensionError) as info:
        read_manifest(folder)
    assert message in str(info.value)


# --- validation: broken extensions are reported by name, the others load -------------------------

BROKEN = {
    "bad-signature": "invalid hook implementation",
    "unknown-hook": "unknown hook webui_stepp (did you mean webui_step?)",
    "bad-manifest": "unknown field(s) ['verison']",
    "import-error": "ModuleNotFoundError: No module named 'not_a_real_package_for_webui_tests'",
    "no-manifest": "no extension.toml",
    "needs-package": "not installed: not-a-real-package-for-webui-tests>=1.0",
}


def test_broken_extensions_are_reported_and_the_rest_loads(tmp_path, caplog):
    host = make_host(tmp_path, "good", "relative-entry", *BROKEN)
    found = by_name(host) if host.discover() else {}
    for name, message in BROKEN.items():
        assert found[name].status == "failed", name
        assert message in found[name].error, (name, found[name].error)
        assert name in caplog.text  # the log names it too
    assert found["good"].status == "ok" and found["relative-entry"].status == "ok"
    assert found["needs-package"].missing == ("not-a-real-package-for-webui-tests>=1.0",)
    assert "add the package to requires" in found["import-error"].error


def test_a_rejected_extension_leaves_no_hook_behind(tmp_path):
    host = make_host(tmp_path, "unknown-hook", "bad-signature")
    host.discover()
    assert not host.has_impls("webui_step")


def test_invalid_signature_message_names_the_argument(tmp_path):
    host = make_host(tmp_path, "bad-signature")
    host.discover()
    error = host.get("bad-signature").error
    assert "webui_step asks for 'evt', which the hook does not have; it may take any of: event, options" in error


class Wrapper:
    @hookimpl(wrapper=True)
    def webui_after_save(self, event):
        return (yield)


class AsyncHook:
    @hookimpl
    async def webui_after_save(self, event):
        return None


@pytest.mark.parametrize(
    ("plugin", "message"), [(Wrapper(), "hook wrappers are not supported"), (AsyncHook(), "not async")]
)
def test_wrappers_and_async_hooks_are_refused(tmp_path, plugin, message):
    host = make_host(tmp_path, entry_points=lambda: [_entry_point("odd", plugin)])
    host.discover()
    assert host.get("odd").status == "failed" and message in host.get("odd").error
    assert not host.has_impls("webui_after_save")


def test_a_broken_builtin_raises(tmp_path):
    class Broken:
        @hookimpl
        def webui_step(self, latents):
            return None

    host = make_host(tmp_path)
    with pytest.raises(ExtensionError, match="invalid hook implementation"):
        host.register_builtin("samplers", Broken())


def test_an_extension_that_exits_at_import_is_reported(tmp_path):
    folder = tmp_path / "extensions" / "exits"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text('name = "exits"\nversion = "1"\n')
    (folder / "__init__.py").write_text("import sys\nsys.exit(3)\n")
    host = ExtensionHost(tmp_path / "extensions", tmp_path / "s.json", allow_install=False, entry_points=list)
    host.discover()
    assert host.get("exits").status == "failed" and "SystemExit" in host.get("exits").error


# --- enable / disable --------------------------------------------------------------------------


def test_disable_applies_at_once_and_persists_across_a_new_host(tmp_path):
    host = make_host(tmp_path, "good")
    host.discover()
    ext = host.set_enabled("good", False)
    assert (ext.enabled, ext.status, ext.restart_required) == (False, "disabled", True)
    assert not host.has_impls("webui_before_save")
    assert json.loads((tmp_path / "state.json").read_text())["disabled"] == ["good"]

    again = ExtensionHost(tmp_path / "extensions", tmp_path / "state.json", allow_install=False, entry_points=list)
    found = by_name(again) if again.discover() else {}
    assert (found["good"].enabled, found["good"].status) == (False, "disabled")
    assert not [m for m in sys.modules if m.startswith(f"webui_ext_good_{id(again):x}")]  # not even imported

    assert again.set_enabled("good", True).status == "ok"
    assert again.has_impls("webui_before_save")
    assert json.loads((tmp_path / "state.json").read_text())["disabled"] == []


def test_enabling_an_extension_with_a_broken_manifest_keeps_it_failed(tmp_path):
    host = make_host(tmp_path, "bad-manifest")
    host.discover()
    assert host.set_enabled("bad-manifest", False).status == "disabled"
    ext = host.set_enabled("bad-manifest", True)
    assert ext.status == "failed" and "verison" in ext.error


def test_builtins_cannot_be_disabled_and_unknown_names_list_the_known(tmp_path):
    host = make_host(tmp_path, "good")
    host.register_builtin("samplers", PackagedPlugin())
    host.discover()
    with pytest.raises(ExtensionError, match="built in"):
        host.set_enabled("samplers", False)
    with pytest.raises(ExtensionError, match="unknown extension 'nope'; installed: samplers, good"):
        host.set_enabled("nope", False)


def test_builtins_survive_a_second_discover(tmp_path):
    host = make_host(tmp_path, "good")
    host.register_builtin("samplers", PackagedPlugin())
    host.discover()
    host.discover()
    assert [e.name for e in host.extensions()] == ["samplers", "good"]
    assert len([i for i in host._impls("webui_before_save")]) == 2


def test_an_unreadable_state_file_means_everything_is_on(tmp_path, caplog):
    (tmp_path / "state.json").write_text("{not json")
    host = make_host(tmp_path, "good")
    assert host.discover()[0].status == "ok"
    assert "ignoring unreadable extension state" in caplog.text


def test_state_is_written_atomically(tmp_path):
    host = make_host(tmp_path, "good")
    host.discover()
    host.set_enabled("good", False)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".state.json")] == []  # no temp file left


# --- requirements: explicit, and never from the network without the flag --------------------------


class FakePip:
    def __init__(self, code: int = 0, install: bool = True) -> None:
        self.commands: list[list[str]] = []
        self.code = code

    def __call__(self, command: list[str]) -> tuple[int, str]:
        self.commands.append(command)
        return self.code, "Successfully installed" if self.code == 0 else "ERROR: no matching distribution"


def test_install_runs_pip_with_the_manifest_requirements(tmp_path, monkeypatch):
    pip = FakePip()
    host = make_host(tmp_path, "needs-package", runner=pip)
    host.discover()
    assert host.get("needs-package").status == "failed"
    # pretend pip installed it: the host re-checks the requirements and loads the extension at once
    monkeypatch.setattr("webui.extensions.missing_requirements", lambda requires: ())
    output = host.install_requirements("needs-package")
    assert pip.commands == [
        [sys.executable, "-m", "pip", "install", "not-a-real-package-for-webui-tests>=1.0", "pluggy>=1.0"]
    ]
    assert "Successfully installed" in output
    ext = host.get("needs-package")
    assert (ext.status, ext.missing, ext.restart_required) == ("ok", (), True)
    assert host.before_save(SimpleNamespace()) == {"Needs package": "loaded"}


def test_install_is_refused_when_the_app_listens_beyond_localhost(tmp_path):
    pip = FakePip()
    host = make_host(tmp_path, "needs-package", runner=pip, allow_install=False)
    host.discover()
    with pytest.raises(ExtensionError, match="--enable-insecure-extension-access") as info:
        host.install_requirements("needs-package")
    assert "pip install not-a-real-package-for-webui-tests>=1.0" in str(info.value)  # the command to run by hand
    assert pip.commands == []


def test_a_failing_pip_is_reported(tmp_path):
    host = make_host(tmp_path, "needs-package", runner=FakePip(code=1))
    host.discover()
    with pytest.raises(ExtensionError, match="exit code 1.*no matching distribution"):
        host.install_requirements("needs-package")
    assert host.get("needs-package").status == "failed"


def test_nothing_to_install_says_so(tmp_path):
    host = make_host(tmp_path, "relative-entry", runner=FakePip())
    host.discover()
    with pytest.raises(ExtensionError, match="nothing to install"):
        host.install_requirements("relative-entry")


@pytest.mark.parametrize(
    ("host", "flag", "allowed"),
    [("127.0.0.1", False, True), ("localhost", False, True), ("::1", False, True), ("0.0.0.0", False, False)]
    + [("192.168.1.5", False, False), ("0.0.0.0", True, True)],
)
def test_install_policy(host, flag, allowed):
    assert install_allowed(host, flag) is allowed


# --- the example extensions --------------------------------------------------------------------


def test_the_examples_load_cleanly(tmp_path):
    folder = copy_extensions(tmp_path / "extensions", "example-sampler", "example-tab", source=EXAMPLES)
    host = ExtensionHost(folder, tmp_path / "state.json", allow_install=False, entry_points=list)
    found = by_name(host) if host.discover() else {}
    assert {n: e.status for n, e in found.items()} == {"example-sampler": "ok", "example-tab": "ok"}
    for name in found:
        assert (EXAMPLES / name / "README.md").is_file()
