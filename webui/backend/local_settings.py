"""The Settings page's changes applied to the running app (``LocalBackend.save_settings``).

``save_settings(services, values)`` checks the values (``webui.settings_edit``), applies the ones
that can change while the app runs (a new output writer, the preview interval, the RAM cache size,
the default model, the size limit, memory modes, speed options ...), persists the changes to the
config file and says which take effect only after a restart. Nothing is applied or written when a
value is wrong. Each live setting has one applier here: the one place that reaches into the engine,
the manager and the job queue for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.settings_edit import (
    EDITABLE,
    LIVE,
    SaveResult,
    changed_settings,
    check_extension_values,
    check_values,
    infer_base,
    persist,
)

if TYPE_CHECKING:
    from webui.app import Services
    from webui.config import Settings


def extension_settings(services: Services) -> list[tuple[str, Any]]:
    """(extension name, ``webui.hooks.SettingSpec``) of the settings enabled extensions declare."""
    host = services.extensions
    return list(host.settings()) if host is not None else []


def _apply_writer(services: Services, settings: Settings, base: Path) -> None:
    # A new writer (it is frozen and shared by running jobs); the next image uses it. Its folder is the
    # outputs folder the app started with: that one is never changed from the browser.
    assert services.writer is not None and services.engine is not None
    writer = dataclasses.replace(services.writer, filename_pattern=settings.filename_pattern)
    services.writer = writer
    services.engine.writer = writer


def sync_writer(services: Services) -> bool:
    """Give the output writer the configured file name pattern if it was built without it; True if changed.

    A pattern saved on the Settings page must hold after a restart too (``webui.app.build_backend``
    calls this once the generation parts exist).
    """
    settings = services.settings
    if services.writer is None or services.writer.filename_pattern == settings.filename_pattern:
        return False
    _apply_writer(services, settings, infer_base(settings, services.paths))
    return True


def _apply_preview(services: Services, settings: Settings, base: Path) -> None:
    assert services.generation is not None
    services.generation.preview_every = settings.preview_every


def _apply_ram_cache(services: Services, settings: Settings, base: Path) -> None:
    services.manager.set_ram_cache_models(settings.ram_cache_models)
    services.manager.set_ram_cache_gib(settings.ram_cache_gib)


def _apply_default_model(services: Services, settings: Settings, base: Path) -> None:
    assert services.engine is not None
    services.engine.default_model = settings.default_model


def _apply_limits(services: Services, settings: Settings, base: Path) -> None:
    assert services.engine is not None
    size = settings.max_image_size
    services.engine.limits = dataclasses.replace(
        services.engine.limits, max_side=size, max_hires_side=2 * size, max_steps=settings.max_steps
    )


def check_memory_modes(services: Services, choice: str) -> str:
    """ "" when the memory modes can be used with the loaded model on this device, else what to change."""
    from webui.memory.planner import PlanError, plan

    manager = services.manager
    registry = getattr(manager, "memory_registry", None)
    if registry is None or choice.strip().lower() in ("auto", "none", ""):
        return ""
    try:
        plan(choice, registry, manager.family, manager.device.device)
    except PlanError as exc:
        return str(exc)
    return ""


def _apply_memory(services: Services, settings: Settings, base: Path) -> None:
    """Switch the loaded model's memory modes on the worker (in place, or by reloading the model)."""
    assert services.engine is not None and services.generation is not None
    services.engine.oom_retry = settings.memory_oom_retry
    manager = services.manager
    if manager.memory_modes != settings.memory_modes:
        services.generation.call(lambda: manager.set_memory_modes(settings.memory_modes), timeout=1800)


def _apply_speed(services: Services, settings: Settings, base: Path) -> None:
    """Layout, compile and the CPU engine: the loaded model is re-tuned on the worker; the prompt cache is resized."""
    from webui.speed.optimize import options_from_settings

    assert services.generation is not None
    cache = getattr(services.engine, "prompt_cache", None)
    if cache is not None:
        cache.resize(settings.prompt_cache_size)
    manager = services.manager
    options = options_from_settings(settings)
    if manager.speed is None or manager.speed.options == options:
        return
    if manager.current_entry is None:  # nothing to re-tune: no device work, the manager's lock is enough
        manager.set_speed_options(options)
    else:
        services.generation.call(lambda: manager.set_speed_options(options), timeout=1800)


def _apply_job_timeout(services: Services, settings: Settings, base: Path) -> None:
    assert services.generation is not None
    services.generation.job_timeout = settings.job_timeout


def _apply_upscaler_tiles(services: Services, settings: Settings, base: Path) -> None:
    from webui.upscale.run import TileOptions

    if services.upscalers is not None:
        services.upscalers.tiles = TileOptions(settings.upscaler_tile, settings.upscaler_tile_overlap)


def _read_at_request_time(services: Services, settings: Settings, base: Path) -> None:
    """The page reads these from the backend's settings each time it builds a request."""


LIVE_APPLIERS: dict[str, Callable[[Services, Settings, Path], None]] = {
    "filename_pattern": _apply_writer,
    "samples_format": _read_at_request_time,
    "preview_every": _apply_preview,
    "default_model": _apply_default_model,
    "ram_cache_models": _apply_ram_cache,
    "ram_cache_gib": _apply_ram_cache,
    "default_rng": _read_at_request_time,
    "max_image_size": _apply_limits,
    "max_steps": _apply_limits,
    "job_timeout": _apply_job_timeout,
    "upscaler_tile": _apply_upscaler_tiles,
    "upscaler_tile_overlap": _apply_upscaler_tiles,
    "memory_modes": _apply_memory,
    "memory_oom_retry": _apply_memory,
    "channels_last": _apply_speed,
    "compile": _apply_speed,
    "cpu_engine": _apply_speed,
    "prompt_cache_size": _apply_speed,
}


def _apply_extension_options(services: Services, values: Mapping[str, Any]) -> tuple[list[str], str]:
    """(names changed, "" or what failed) after setting the extension options that differ."""
    from webui.extensions import ExtensionError

    host = services.extensions
    assert host is not None
    changed = [name for name, value in values.items() if host.options.get(name) != value]
    for name in changed:
        try:
            host.set_option(name, values[name])
        except (ExtensionError, OSError) as exc:
            return changed, f"Could not save the extension setting {name}: {exc}."
    return changed, ""


def save_settings(services: Services, values: Mapping[str, Any], *, reset: bool = False) -> SaveResult:
    """Check, apply live, persist. ``reset``: the values are defaults; drop them from the config file.

    ``values`` may hold extension settings too (by their names); they are checked with the rest and
    stored by the extension host.
    """
    specs = {spec.name: spec for _, spec in extension_settings(services)}
    core = {k: v for k, v in values.items() if k not in specs}
    clean, errors = check_values(core, [e.name for e in services.catalog.usable("checkpoint")])
    if "memory_modes" in clean:
        message = check_memory_modes(services, clean["memory_modes"])
        if message:
            errors["memory_modes"] = message
    ext_clean, ext_errors = check_extension_values(specs, {k: v for k, v in values.items() if k in specs})
    errors.update(ext_errors)
    if errors:
        return SaveResult(errors=errors)
    old = services.settings
    new = old.with_updates(**clean)
    changed = changed_settings(old, new)
    base = infer_base(old, services.paths)
    for apply in dict.fromkeys(LIVE_APPLIERS[n] for n in changed if n in LIVE):
        apply(services, new, base)
    services.settings = new
    ext_changed, ext_problem = _apply_extension_options(services, ext_clean) if ext_clean else ([], "")
    result = SaveResult(
        applied=[n for n in changed if n in LIVE] + ext_changed,
        after_restart=[n for n in changed if n not in LIVE],
        labels={name: spec.label for name, spec in specs.items()},
    )
    names = EDITABLE if reset else changed
    if names:
        result.persist_error = persist(Path(services.paths.config_file), new, names, reset=reset)
    result.persist_error = " ".join(m for m in (result.persist_error, ext_problem) if m)
    return result


def default_values(services: Services) -> dict[str, Any]:
    """The defaults of the page's settings and of the extension settings."""
    from webui.config import Settings

    defaults = Settings()
    values = {name: getattr(defaults, name) for name in EDITABLE}
    values.update({spec.name: spec.default for _, spec in extension_settings(services)})
    return values


def current_values(services: Services) -> dict[str, Any]:
    values = {name: getattr(services.settings, name) for name in EDITABLE}
    specs = extension_settings(services)
    options = services.extensions.options if specs and services.extensions is not None else {}
    values.update({spec.name: options.get(spec.name, spec.default) for _, spec in specs})
    return values
