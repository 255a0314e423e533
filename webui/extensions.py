"""ExtensionHost: finds extensions, checks their hooks against ``webui.hooks``, calls them in isolation.

An extension is a folder ``extensions/<folder>/`` with an ``extension.toml`` manifest, or an
installed package exposing the ``webui.extensions`` entry-point group. Built-ins (the sampler table,
the memory modes) register through ``register_builtin`` and run on the same hooks. A broken
extension (bad manifest, import error, invalid hook, exception in a hook) is recorded with its name
and logged; the app and the job go on without it. Enable/disable and extension settings persist in
a JSON state file. See docs/EXTENSIONS.md.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import itertools
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pluggy

from webui.extension_manifest import (  # noqa: F401  (re-exported: callers import them from here)
    MANIFEST,
    ExtensionError,
    Manifest,
    install_allowed,
    missing_requirements,
    pip_runner,
    read_manifest,
)
from webui.hooks import ENTRY_POINT_GROUP, HOOK_NAMES, PROJECT, HookSpecs, JobRefused, SettingSpec

_GROUPS = {"tryfirst": 0, "normal": 1, "trylast": 2}
# Hooks where JobRefused fails the job on purpose (elsewhere it is an error of the extension).
REFUSING_HOOKS = ("webui_before_job", "webui_script_args", "webui_job_models", "webui_stage_arguments")
Runner = Callable[[list[str]], tuple[int, str]]


@dataclass
class Extension:
    """What the Extensions tab shows about one extension (the host hands out copies)."""

    name: str
    source: str  # "builtin", "folder" (extensions/<folder>) or "package" (entry point)
    path: str = ""  # the folder, or "package <distribution>"
    version: str = ""
    description: str = ""
    requires: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # requirements that are not installed (or too old)
    enabled: bool = True  # the user's choice (persisted)
    status: str = "ok"  # "ok", "disabled" or "failed"
    error: str = ""  # the last problem, in words ("failed in webui_step: ValueError: ...")
    failures: int = 0  # hook errors this session
    hooks: tuple[str, ...] = ()  # the hooks it implements
    restart_required: bool = False  # toggled or installed at runtime: tabs, routes, samplers change on restart


@dataclass(frozen=True)
class ExtensionTab:
    extension: str
    title: str
    build: Callable[[], Any]


class _Manager(pluggy.PluginManager):
    """Also takes unmarked ``webui_*`` functions as hook implementations (a missing ``@hookimpl`` is not silent)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        unmarked = opts is None and name.startswith(f"{PROJECT}_")
        return {} if unmarked and inspect.isfunction(inspect.getattr_static(plugin, name, None)) else opts


def _signature_problem(message: str) -> str:
    """pluggy's validation message, reworded: which hook, which arguments, what the spec offers."""
    hook = re.search(r"for hook '(\w+)'", message)
    args = re.search(r"Argument\(s\) \{(.*?)\}", message)
    if not (hook and args and hook.group(1) in HOOK_NAMES):
        return f"invalid hook implementation: {' '.join(message.split())}"
    offered = ", ".join(list(inspect.signature(getattr(HookSpecs, hook.group(1))).parameters)[1:])
    return (
        f"invalid hook implementation: {hook.group(1)} asks for {args.group(1)}, which the hook does not "
        f"have; it may take any of: {offered}"
    )


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ExtensionError) else f"{type(exc).__name__}: {exc}"


def _slug(name: str) -> str:
    return re.sub(r"\W", "_", name).lower()


def _group(impl: Any) -> int:
    return _GROUPS["tryfirst" if impl.tryfirst else "trylast" if impl.trylast else "normal"]


class ExtensionHost:
    """Loads extensions and calls their hooks; one per app (``Services.extensions``)."""

    def __init__(
        self,
        extensions_dir: Path | str,
        state_file: Path | str,
        *,
        allow_install: bool,
        log: logging.Logger | None = None,
        entry_points: Callable[[], Iterable[Any]] | None = None,
        runner: Runner | None = None,
        max_failures: int = 3,
    ) -> None:
        self.extensions_dir = Path(extensions_dir)
        self.state_file = Path(state_file)
        self.allow_install = allow_install
        self.max_failures = max_failures  # hook errors before an extension is turned off (0 = never)
        self._log = log or logging.getLogger("webui.extensions")
        self._entry_points = entry_points or (lambda: importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        self._runner = runner or pip_runner
        self._pm = _Manager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        self._lock = threading.RLock()
        self._records: dict[str, Extension] = {}
        self._plugins: dict[str, Any] = {}  # loaded plugin objects, kept for re-enabling without re-import
        self._loaders: dict[str, Callable[[], Any]] = {}
        self._packages: dict[str, str] = {}  # folder extension -> its private package name in sys.modules
        self._seq: dict[str, tuple[bool, int]] = {}
        self._counter = itertools.count()
        self._impl_cache: dict[str, tuple[Any, ...]] = {}
        self._settings: dict[str, tuple[str, SettingSpec]] = {}
        self._options: Mapping[str, Any] = MappingProxyType({})
        self._state = self._read_state()

    # --- registration -----------------------------------------------------------------------

    def register_builtin(self, name: str, plugin: Any) -> Extension:
        """Register one of the app's own plugins; it runs before extensions. A broken built-in raises."""
        with self._lock:
            if name in self._records:
                raise ExtensionError(f"a plugin named {name!r} is already registered")
            where = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
            ext = Extension(name=name, source="builtin", path=where, description="built-in")
            self._register(ext, plugin)
            self._records[name] = ext
            self._collect_settings()
            return replace(ext)

    def discover(self) -> list[Extension]:
        """(Re)load every extension folder and entry-point plugin; failures are recorded, never raised."""
        with self._lock:
            for name, ext in list(self._records.items()):
                if ext.source != "builtin":
                    self._unregister(name)
                    del self._records[name]
                    self._loaders.pop(name, None)
                    self._plugins.pop(name, None)
                    self._forget_modules(self._packages.pop(name, ""))
            folders = sorted(self.extensions_dir.iterdir()) if self.extensions_dir.is_dir() else []
            for folder in folders:
                if folder.is_dir() and not folder.name.startswith((".", "_")):
                    self._add_folder(folder)
            for ep in sorted(self._entry_points(), key=lambda e: e.name):
                self._add_entry_point(ep)
            self._collect_settings()
            return self.extensions()

    def _add_folder(self, folder: Path) -> None:
        ext = Extension(name=folder.name, source="folder", path=str(folder))
        try:
            manifest = read_manifest(folder)
        except ExtensionError as exc:
            self._add_record(ext, None, str(exc))
            return
        ext.name, ext.version, ext.description = manifest.name, manifest.version, manifest.description
        ext.requires = manifest.requires
        self._add_record(ext, lambda: self._import_folder(folder, manifest.entry, manifest.name))

    def _add_entry_point(self, ep: Any) -> None:
        dist = getattr(ep, "dist", None)
        ext = Extension(
            name=ep.name,
            source="package",
            path=f"package {dist.name}" if dist else str(getattr(ep, "value", "")),
            version=str(getattr(dist, "version", "") or ""),
        )
        self._add_record(ext, ep.load)

    def _add_record(self, ext: Extension, loader: Callable[[], Any] | None, error: str = "") -> None:
        """Record an extension and load it; without a loader it stays failed with ``error``."""
        if ext.name in self._records:
            error = f"its name is already used by {self._records[ext.name].path}; rename it in {MANIFEST}"
            ext.name, loader = f"{ext.name} ({ext.path})", None
        self._records[ext.name] = ext
        ext.enabled = ext.name not in self._state["disabled"]
        if loader is None:
            self._load_failed(ext, error)
            return
        self._loaders[ext.name] = loader
        if ext.enabled:
            self._load(ext)
        else:
            ext.status = "disabled"

    def _load(self, ext: Extension) -> None:
        ext.missing = missing_requirements(ext.requires)
        if ext.missing:
            self._load_failed(
                ext,
                f"needs Python packages that are not installed: {', '.join(ext.missing)}; use Install "
                "requirements in the Extensions tab",
            )
            return
        try:
            plugin = self._plugins[ext.name] if ext.name in self._plugins else self._loaders[ext.name]()
            plugin = plugin() if inspect.isclass(plugin) else plugin  # an entry point may name a class
            self._register(ext, plugin)
        except ExtensionError as exc:
            self._load_failed(ext, str(exc))
            return
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - an extension's import error is reported, not raised
            self._log.debug("extension %r import traceback", ext.name, exc_info=True)
            hint = "; add the package to requires in extension.toml" if isinstance(exc, ImportError) else ""
            self._load_failed(ext, f"could not be loaded: {_describe(exc)}{hint}")
            return
        self._plugins[ext.name] = plugin
        ext.status, ext.error, ext.failures = "ok", "", 0

    def _load_failed(self, ext: Extension, message: str) -> None:
        ext.status, ext.error = "failed", message
        self._log.error("extension %r: %s", ext.name, message)

    def _import_folder(self, folder: Path, entry: str, name: str) -> Any:
        """Import the folder as a package under a unique name (relative imports work; sys.path is untouched)."""
        package = f"webui_ext_{_slug(name)}_{id(self):x}_{next(self._counter)}"
        self._packages[name] = package
        init = folder / "__init__.py"
        if init.is_file():
            spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)])
        else:
            spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
            spec.submodule_search_locations = [str(folder)]
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        try:
            if spec.loader is not None:
                spec.loader.exec_module(module)
            if entry != "__init__.py":
                module = importlib.import_module(f"{package}.{entry[:-3]}")
        except BaseException:
            self._forget_modules(package)
            raise
        return module

    @staticmethod
    def _forget_modules(package: str) -> None:
        if not package:
            return
        for key in [k for k in sys.modules if k == package or k.startswith(f"{package}.")]:
            del sys.modules[key]

    def _register(self, ext: Extension, plugin: Any) -> None:
        try:
            self._pm.register(plugin, name=ext.name)
        except pluggy.PluginValidationError as exc:
            raise ExtensionError(_signature_problem(str(exc))) from None
        problems = self._check_impls(plugin)
        if problems:
            self._pm.unregister(name=ext.name)
            raise ExtensionError("; ".join(problems))
        ext.hooks = tuple(sorted(hc.name for hc in self._pm.get_hookcallers(plugin) or ()))
        self._seq[ext.name] = (ext.source != "builtin", next(self._counter))  # built-ins first, whenever registered
        self._impl_cache.clear()

    def _check_impls(self, plugin: Any) -> list[str]:
        problems = []
        for caller in self._pm.get_hookcallers(plugin) or ():
            for impl in (i for i in caller.get_hookimpls() if i.plugin is plugin):
                if not caller.has_spec() and not impl.optionalhook:
                    close = difflib.get_close_matches(caller.name, HOOK_NAMES, n=1)
                    hint = f"did you mean {close[0]}?" if close else f"known hooks: {', '.join(HOOK_NAMES)}"
                    problems.append(f"unknown hook {caller.name} ({hint})")
                elif impl.wrapper or impl.hookwrapper:
                    problems.append(f"{caller.name}: hook wrappers are not supported; use a plain function")
                elif inspect.iscoroutinefunction(impl.function) or inspect.isgeneratorfunction(impl.function):
                    problems.append(f"{caller.name} must be a plain function (not async, not a generator)")
        return problems

    def _unregister(self, name: str) -> None:
        if self._pm.has_plugin(name):
            self._pm.unregister(name=name)
            self._impl_cache.clear()

    # --- enable / disable, requirements ---------------------------------------------------------

    def extensions(self) -> list[Extension]:
        with self._lock:
            return [replace(ext) for ext in self._records.values()]

    def get(self, name: str) -> Extension:
        return replace(self._record(name))

    def _record(self, name: str) -> Extension:
        try:
            return self._records[name]
        except KeyError:
            raise ExtensionError(f"unknown extension {name!r}; installed: {', '.join(self._records)}") from None

    def set_enabled(self, name: str, enabled: bool) -> Extension:
        """Turn an extension on or off now (its job hooks) and for the next starts (persisted)."""
        with self._lock:
            ext = self._record(name)
            if ext.source == "builtin":
                raise ExtensionError(f"{name} is built in and cannot be turned off")
            disabled = set(self._state["disabled"]) - {name}
            self._state["disabled"] = sorted(disabled if enabled else disabled | {name})
            self._write_state()
            was_loaded = self._pm.has_plugin(name)
            ext.enabled = enabled
            if not enabled:
                self._unregister(name)
                ext.status = "disabled"
            elif name not in self._loaders:
                ext.status = "failed"  # its manifest is broken: ext.error says why
            elif not was_loaded:
                self._load(ext)
            ext.restart_required = ext.restart_required or was_loaded != self._pm.has_plugin(name)
            self._collect_settings()
            return replace(ext)

    def install_requirements(self, name: str) -> str:
        """Explicit user action: ``pip install`` the extension's requirements; returns pip's output."""
        with self._lock:
            ext = self._record(name)
            if not ext.requires:
                raise ExtensionError(f"{name} lists no requirements in {MANIFEST}; there is nothing to install")
            if not self.allow_install:
                raise ExtensionError(
                    "Installing requirements from the web UI is turned off because the app listens beyond "
                    "localhost; restart with --enable-insecure-extension-access to allow it, or run: "
                    f"{sys.executable} -m pip install {' '.join(ext.requires)}"
                )
            command = [sys.executable, "-m", "pip", "install", *ext.requires]
        self._log.info("installing requirements of %r: %s", name, " ".join(command))
        code, output = self._runner(command)
        if code != 0:
            raise ExtensionError(
                f"pip could not install the requirements of {name} (exit code {code}): {output[-800:]}"
            )
        importlib.invalidate_caches()
        with self._lock:
            ext.missing = missing_requirements(ext.requires)
            if not ext.missing and ext.enabled and not self._pm.has_plugin(name) and name in self._loaders:
                self._load(ext)
                ext.restart_required = True
                self._collect_settings()
        return output

    # --- state file ---------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"disabled": [], "options": {}}
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            state["disabled"] = [str(n) for n in data.get("disabled", [])]
            state["options"] = dict(data.get("options", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            self._log.warning(
                "ignoring unreadable extension state %s (%s); all extensions are on", self.state_file, exc
            )
        return state

    def _write_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=f".{self.state_file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._state, handle, indent=2, sort_keys=True)
            os.replace(tmp, self.state_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- settings (webui_settings) and their values -------------------------------------------

    def settings(self) -> list[tuple[str, SettingSpec]]:
        """(extension name, spec) of every setting the enabled extensions declare, in hook order."""
        return list(self._settings.values())

    @property
    def options(self) -> Mapping[str, Any]:
        """Current values of the extension settings (read-only; what hooks get as ``options``)."""
        return self._options

    def set_option(self, name: str, value: Any) -> None:
        with self._lock:
            if name not in self._settings:
                raise ExtensionError(f"unknown extension setting {name!r}; known: {', '.join(self._settings)}")
            spec = self._settings[name][1]
            problem = spec.problem(value)
            if problem:
                raise ExtensionError(problem)
            self._state["options"][name] = value
            self._write_state()
            self._refresh_options()

    def _collect_settings(self) -> None:
        found: dict[str, tuple[str, SettingSpec]] = {}
        for impl in self._impls("webui_settings"):
            ok, result = self._call_one(impl, "webui_settings", {})
            for spec in _as_list(result) if ok else []:
                if not isinstance(spec, SettingSpec):
                    problem = f"returned {spec!r}; return a list of SettingSpec"
                elif spec.name in found:
                    problem = f"setting {spec.name!r} is already declared by {found[spec.name][0]}"
                else:
                    found[spec.name], problem = (impl.plugin_name, spec), ""
                if problem:
                    self._failed(impl.plugin_name, "webui_settings", ExtensionError(problem))
        self._settings = found
        self._refresh_options()

    def _refresh_options(self) -> None:
        saved = self._state["options"]
        values = {}
        for name, (_, spec) in self._settings.items():
            ok = name in saved and not spec.problem(saved[name])
            values[name] = saved[name] if ok else spec.default
        self._options = MappingProxyType(values)

    # --- calling hooks ------------------------------------------------------------------------

    def has_impls(self, hook: str) -> bool:
        """True when at least one enabled plugin implements ``hook`` (skip building events otherwise)."""
        return bool(self._impls(hook))

    def _impls(self, hook: str) -> tuple[Any, ...]:
        cached = self._impl_cache.get(hook)
        if cached is not None:
            return cached
        with self._lock:
            caller = getattr(self._pm.hook, hook, None)
            if caller is None or not caller.has_spec():
                raise ExtensionError(f"unknown hook {hook!r}; known: {', '.join(HOOK_NAMES)}")
            impls = tuple(
                sorted(caller.get_hookimpls(), key=lambda i: (_group(i), self._seq.get(i.plugin_name, (True, 0))))
            )
            self._impl_cache[hook] = impls
            return impls

    def _call_one(self, impl: Any, hook: str, kwargs: Mapping[str, Any]) -> tuple[bool, Any]:
        args = {"options": self._options, **kwargs}
        try:
            return True, impl.function(*(args[name] for name in impl.argnames))
        except JobRefused:
            if hook in REFUSING_HOOKS:
                raise
            allowed = ", ".join(REFUSING_HOOKS)
            self._failed(impl.plugin_name, hook, ExtensionError(f"JobRefused is only allowed in {allowed}"))
        except Exception as exc:  # noqa: BLE001 - the isolation boundary: recorded against the extension
            self._failed(impl.plugin_name, hook, exc)
        return False, None

    def _failed(self, name: str, hook: str, exc: BaseException) -> None:
        with self._lock:
            message = f"failed in {hook}: {_describe(exc)}"
            ext = self._records.get(name)
            if ext is None:
                self._log.error("plugin %r %s", name, message)
                return
            ext.failures += 1
            ext.error = message
            trace = exc if ext.failures == 1 and not isinstance(exc, ExtensionError) else None
            self._log.error("extension %r %s", name, message, exc_info=trace)
            if ext.source != "builtin" and self.max_failures and ext.failures >= self.max_failures:
                self._unregister(name)
                ext.status = "failed"
                ext.error = (
                    f"{message} (turned off for this session after {ext.failures} errors; fix it and re-enable it)"
                )
                self._log.error("extension %r turned off after %d errors", name, ext.failures)

    def run_guarded(
        self, extension: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[bool, Any]:
        """Run an extension's callable (a tab's build, a route) with its errors recorded: (ok, result)."""
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded against the extension
            self._failed(extension, what, exc)
            return False, None

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook``, each isolated; (extension name, result) of non-None results."""
        impls = self._impls(hook)
        missing = set(getattr(self._pm.hook, hook).spec.argnames) - set(kwargs) - {"options"}
        if missing:
            raise TypeError(f"{hook} needs the argument(s) {sorted(missing)}")
        results = []
        for impl in impls:
            ok, value = self._call_one(impl, hook, kwargs)
            if ok and value is not None:
                results.append((impl.plugin_name, value))
        return results

    def _chain(self, hook: str, key: str, kwargs: dict[str, Any], accept: Callable[[Any, Any], tuple[str, Any]]) -> Any:
        for impl in self._impls(hook):
            ok, result = self._call_one(impl, hook, kwargs)
            if ok and result is not None:
                problem, value = accept(result, kwargs[key])
                if problem:
                    self._failed(impl.plugin_name, hook, ExtensionError(problem))
                else:
                    kwargs = {**kwargs, key: value}
        return kwargs[key]

    # --- one helper per hook (what the app calls) ----------------------------------------------

    def register_samplers(self, table: Any) -> None:
        self.call("webui_register_samplers", table=table)

    def register_memory_modes(self, registry: Any) -> None:
        self.call("webui_register_memory_modes", registry=registry)

    def ui_tabs(self, webui: Any) -> list[ExtensionTab]:
        """The tabs of ``webui_ui_tabs``; ``webui``: the ``ExtensionFacade`` (also passed as ``services``)."""
        tabs = []
        for name, result in self.call("webui_ui_tabs", webui=webui, services=webui):
            for item in _as_list(result):
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and callable(item[1]):
                    tabs.append(ExtensionTab(name, item[0], item[1]))
                else:
                    self._failed(name, "webui_ui_tabs", ExtensionError(f"returned {item!r}; expected (title, build)"))
        return tabs

    def app_started(self, app: Any, webui: Any) -> None:
        """``webui_app_started``; ``webui``: the ``ExtensionFacade`` (also passed as ``services``)."""
        self.call("webui_app_started", app=app, webui=webui, services=webui)

    def model_loaded(self, event: Any) -> None:
        self.call("webui_model_loaded", event=event)

    def before_job(self, request: Any) -> Any:
        """The request after every ``webui_before_job`` (chained); raises JobRefused when one refuses it."""
        return self._chain("webui_before_job", "request", {"request": request}, _accept_request)

    def step(self, event: Any) -> Any:
        """The latents after every ``webui_step`` (chained); ``event.latents`` itself when none changed them."""
        return self._chain("webui_step", "event", {"event": event}, _accept_latents).latents

    def image(self, event: Any) -> Any:
        """The image after every ``webui_image`` (chained)."""
        return self._chain("webui_image", "event", {"event": event}, _accept_image).image

    def before_save(self, event: Any) -> dict[str, str]:
        """Extra infotext fields from every ``webui_before_save``, merged (a later one wins)."""
        fields: dict[str, str] = {}
        for name, result in self.call("webui_before_save", event=event):
            problem = _fields_problem(result)
            if problem:
                self._failed(name, "webui_before_save", ExtensionError(problem))
            else:
                fields.update((str(k), str(v)) for k, v in result.items())
        return fields

    def after_save(self, event: Any) -> None:
        self.call("webui_after_save", event=event)

    def infotext_pasted(self, text: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.call("webui_infotext_pasted", text=text, fields=fields)
        return fields

    # --- stage hooks (generation worker): what the engine's stages ask of extensions -------------

    def report(self, extension: str, hook: str, problem: str) -> None:
        """Record a problem with what an extension gave a hook (the value is left out; the job goes on)."""
        self._failed(extension, hook, ExtensionError(problem))

    def script_args(self, name: str, args: Any, request: Any) -> tuple[bool, Any]:
        """(True, checked args) from the first extension that owns script ``name``; (False, None) when none does.

        JobRefused passes through (the request is refused)."""
        for impl in self._impls("webui_script_args"):
            ok, result = self._call_one(impl, "webui_script_args", {"name": name, "args": args, "request": request})
            if ok and result is not None:
                return True, result
        return False, None

    def job_models(self, event: Any) -> list[tuple[str, Any]]:
        """(extension, ModelAddition) of every ``webui_job_models``; JobRefused passes through."""
        from webui.hooks import ModelAddition

        out = []
        for name, result in self.call("webui_job_models", event=event):
            for item in _as_list(result):
                if isinstance(item, ModelAddition):
                    out.append((name, item))
                else:
                    self.report(name, "webui_job_models", f"returned {type(item).__name__}; return ModelAddition(...)")
        return out

    def stage_arguments(self, event: Any) -> list[tuple[str, dict[str, Any]]]:
        """(extension, arguments) of every ``webui_stage_arguments`` (checked against the call by the stage)."""
        out = []
        for name, result in self.call("webui_stage_arguments", event=event):
            if isinstance(result, Mapping) and all(isinstance(k, str) for k in result):
                out.append((name, dict(result)))
            else:
                self.report(name, "webui_stage_arguments", f"returned {type(result).__name__}; return a dict or None")
        return out

    def step_callbacks(self, event: Any) -> list[tuple[str, Any]]:
        """(extension, callback) of every ``webui_step_callbacks``: callables, in hook order."""
        out = []
        for name, result in self.call("webui_step_callbacks", event=event):
            for item in _as_list(result):
                if callable(item):
                    out.append((name, item))
                else:
                    self.report(name, "webui_step_callbacks", f"returned {type(item).__name__}; return a callable")
        return out


def _as_list(result: Any) -> list[Any]:
    """A hook's list result; anything else becomes [result] so that the element check reports it."""
    return list(result) if isinstance(result, (list, tuple)) else [] if result is None else [result]


def _accept_request(result: Any, request: Any) -> tuple[str, Any]:
    if type(result) is not type(request):
        kind = type(request).__name__
        return f"returned a {type(result).__name__}; return a {kind} (dataclasses.replace(request, ...)) or None", None
    return "", result


def _accept_latents(result: Any, event: Any) -> tuple[str, Any]:
    shape = tuple(getattr(event.latents, "shape", ()))
    if tuple(getattr(result, "shape", ())) != shape or not hasattr(result, "to"):
        return (
            f"returned {type(result).__name__} {tuple(getattr(result, 'shape', ()))}; return a tensor of shape {shape} or None",
            None,
        )
    return "", replace(event, latents=result.to(event.latents))


def _accept_image(result: Any, event: Any) -> tuple[str, Any]:
    from PIL import Image

    if not isinstance(result, Image.Image):
        return f"returned a {type(result).__name__}; return a PIL image or None", None
    return "", replace(event, image=result)


def _fields_problem(result: Any) -> str:
    if not isinstance(result, Mapping):
        return f"returned a {type(result).__name__}; return a dict of infotext fields or None"
    bad = [k for k in result if not isinstance(k, str) or not k.strip() or any(c in k for c in ":,\n")]
    return f"infotext field names {bad!r} are invalid (non-empty text without ':', ',' or newlines)" if bad else ""
