"""Extensions tab: what the extension host found, why one failed, turn one on or off, install requirements.

The backend's extension records (``Backend.extensions``) fill the table: every extension (built-in,
folder, package) with its status, hooks and problem in words; folders added since the start show
as "loads at the next start". Without an extension host it lists the folders of the extensions folder only.
Element ids: ``extensions_table``, ``extensions_note``, ``extensions_name``, ``extensions_enable``,
``extensions_disable``, ``extensions_install``, ``extensions_rescan``, ``extensions_message``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from webui.backend import Backend, Refused
from webui.extensions import Extension

HEADERS = ["name", "source", "version", "status", "hooks", "problem"]
NOTE = (
    "Each extension lives in its own folder in `{folder}` (see docs/EXTENSIONS.md). Turning one off stops "
    "its job hooks at once; its tabs, routes and samplers change at the next start."
)
NO_HOST_NOTE = "Extensions are listed here but **not loaded**: this app was started without the extension host."
NEW_FOLDER = "new: loads at the next start"
# marker -> what it says about a folder the host has not loaded
_MARKERS = (
    ("extension.toml", "extension.toml"),
    ("scripts", "A1111 scripts"),
    ("install.py", "install.py"),
    ("__init__.py", "python package"),
)


def _folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    return sorted(subs, key=lambda p: p.name.lower())


def folder_rows(folder: Path, status: str = "found; not loaded") -> list[list[str]]:
    """One row per extension folder (no host): name, "folder", what it contains, ``status``."""
    rows = []
    for sub in _folders(folder):
        found = [label for marker, label in _MARKERS if (sub / marker).exists()]
        rows.append([sub.name, "folder", "", status, "", ", ".join(found) or "empty folder"])
    return rows


def _status(ext: Any) -> str:
    return f"{ext.status} (restart to finish)" if ext.restart_required else ext.status


def _problem(ext: Any) -> str:
    if ext.error:
        return ext.error
    return f"missing requirements: {', '.join(ext.missing)}" if ext.missing else ""


def host_rows(extensions: Sequence[Extension], folder: Path) -> list[list[str]]:
    """The host's extensions (``Backend.extensions``), then folders it has not seen (added since the start)."""
    rows = []
    seen: set[Path] = set()
    for ext in extensions:
        rows.append([ext.name, ext.source, ext.version, _status(ext), ", ".join(ext.hooks), _problem(ext)])
        if ext.source == "folder":
            seen.add(Path(ext.path).resolve())
    new = [sub for sub in _folders(folder) if sub.resolve() not in seen]
    return rows + [[sub.name, "folder", "", NEW_FOLDER, "", ""] for sub in new]


def switchable(extensions: Sequence[Extension]) -> list[str]:
    """Names the user can turn on or off (built-ins stay on)."""
    return [ext.name for ext in extensions if ext.source != "builtin"]


def set_enabled(backend: Backend, name: str | None, enabled: bool) -> str:
    """Turn ``name`` on or off; the outcome in words (never raises)."""
    if not name:
        return "Pick an extension first."
    try:
        ext = backend.set_extension_enabled(name, enabled)
    except Refused as exc:
        return f"**{exc}**"
    if ext.status == "failed":
        return f"**{name} is on but cannot load:** {_problem(ext)}"
    state = "on" if enabled else "off"
    later = " Restart the app to add or remove its tabs, routes and samplers." if ext.restart_required else ""
    return f"{name} is {state}.{later}"


def install_requirements(backend: Backend, name: str | None) -> str:
    """pip-install ``name``'s requirements (the user asked); the outcome in words (never raises)."""
    if not name:
        return "Pick an extension first."
    try:
        output = backend.install_extension_requirements(name)
    except Refused as exc:
        return f"**{exc}**"
    tail = output.strip().splitlines()[-1:] if output.strip() else []
    return f"Requirements of {name} installed. {' '.join(tail)}".strip()


def _rows(backend: Backend) -> list[list[str]]:
    folder = Path(backend.folders().extensions)
    extensions = backend.extensions()
    return host_rows(extensions, folder) if extensions is not None else folder_rows(folder)


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    folder = Path(backend.folders().extensions)
    extensions = backend.extensions()
    note = NOTE.format(folder=folder) + ("" if extensions is not None else " " + NO_HOST_NOTE)
    gr.Markdown(note, elem_id="extensions_note")
    table = gr.Dataframe(
        value=_rows(backend) or None, headers=HEADERS, interactive=False, wrap=True, elem_id="extensions_table"
    )
    rescan = gr.Button("Check again", size="sm", elem_id="extensions_rescan")
    rescan.click(lambda: _rows(backend) or None, outputs=table, concurrency_limit=None)
    if extensions is None:
        return
    with gr.Row():
        name = gr.Dropdown(label="Extension", choices=switchable(extensions), value=None, elem_id="extensions_name")
        enable = gr.Button("Turn on", elem_id="extensions_enable")
        disable = gr.Button("Turn off", elem_id="extensions_disable")
        install = gr.Button("Install requirements", elem_id="extensions_install")
    message = gr.Markdown(elem_id="extensions_message")

    def act(action: Any) -> Any:
        def run(chosen: str | None) -> tuple[str, Any]:
            return action(chosen), _rows(backend) or None

        return run

    common = {"inputs": name, "outputs": [message, table]}
    enable.click(act(lambda n: set_enabled(backend, n, True)), concurrency_limit=None, **common)
    disable.click(act(lambda n: set_enabled(backend, n, False)), concurrency_limit=None, **common)
    install.click(act(lambda n: install_requirements(backend, n)), concurrency_limit=1, **common)
