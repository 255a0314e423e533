"""Settings tab logic over the backend (no gradio): what the page shows and what Apply sends.

Which settings the page edits, how each is checked and how changes are written to the config file
live in ``webui.settings_edit``; the backend checks, applies live and persists them
(``Backend.save_settings``), so nothing here reaches into the running app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.backend import Backend
from webui.settings_edit import (  # noqa: F401  (re-exported: the tab and its tests read them from here)
    EDITABLE,
    LIVE,
    NOT_FROM_PAGE,
    SPECS,
    SaveResult,
    SettingSpec,
    label,
)

DEVICE_PENDING = "**Computing on** ... the device is being chosen while torch loads; this line fills in when it is."


def device_summary(backend: Backend, wait: bool = True) -> str:
    """What the app computes with and why (``--precision auto``'s choice), for the top of the page.

    ``wait=False`` (the page, built before torch is imported) says the device is being chosen instead of waiting.
    """
    try:
        described = backend.device_description(wait=wait)
    except Exception as exc:  # the device asked for is not there: the app stops, the page says why meanwhile
        return f"**The device could not be chosen:** {exc}"
    if described is None:
        return DEVICE_PENDING
    if not described:
        return ""
    return (
        f"**Computing on** {described}. "
        "Change *Compute precision* and *VAE decode precision* below to override (applied after a restart)."
    )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def memory_summary(backend: Backend) -> str:
    """What the models take now: the RAM cache's models and GiB against its budget, and on a GPU what the app
    holds there against what the device has (Markdown, for the top of the page)."""
    u = backend.memory_usage()
    active = f"active: {u.active} ({_gib(u.active_bytes)})" if u.active else "no model loaded"
    if u.secondary_bytes:
        active += f", secondary {_gib(u.secondary_bytes)}"
    if u.cache_budget_bytes <= 0 or u.cache_max_models <= 0:
        cache = "off (*Checkpoints kept in RAM* or *RAM cache size* is 0)"
    else:
        held = ", ".join(f"{name} ({_gib(n)})" for name, n in u.cached) or "empty"
        cache = (
            f"{len(u.cached)} of at most {u.cache_max_models} model(s), {_gib(u.cache_bytes)} of"
            f" {_gib(u.cache_budget_bytes)}: {held}"
        )
    lines = [f"**Memory:** {active}. **RAM cache:** {cache}."]
    if u.on_gpu is not None:
        held = ", ".join(f"{name} ({_gib(n)})" for name, n in u.on_gpu) or "nothing"
        need = (
            f"; the active model needs about {_gib(u.gpu_needed_bytes)} while it generates"
            if u.gpu_needed_bytes
            else ""
        )
        lines.append(
            f"**GPU:** this app holds {_gib(u.gpu_bytes)} ({held}){need};"
            f" {_gib(u.gpu_free_bytes)} free of {_gib(u.gpu_total_bytes)}."
        )
    return "  \n".join(lines)


def checkpoint_names(backend: Backend) -> list[str]:
    return [m.name for m in backend.models("checkpoint")]


def extension_settings(backend: Backend) -> list[tuple[str, Any]]:
    """(extension name, ``webui.hooks.SettingSpec``) of the settings enabled extensions declare."""
    return [(s.extension, s.spec) for s in backend.extension_settings()]


def known_names(backend: Backend) -> set[str]:
    """The settings the page can save now (an extension turned off since the page was built drops out)."""
    return set(EDITABLE) | {spec.name for _, spec in extension_settings(backend)}


def current_values(backend: Backend) -> dict[str, Any]:
    return backend.setting_values()


def default_values(backend: Backend) -> dict[str, Any]:
    """The defaults of the page's settings and of the extension settings."""
    return backend.default_setting_values()


def save_settings(backend: Backend, values: Mapping[str, Any], *, reset: bool = False) -> SaveResult:
    """Check, apply live, persist (the backend does); nothing changes when a value is wrong."""
    return backend.save_settings(values, reset=reset)
