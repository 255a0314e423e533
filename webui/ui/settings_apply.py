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
