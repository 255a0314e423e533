"""The page: the model bar on top, then the tabs in A1111's order. Builds no model and imports no torch.

``build_ui(backend, extension_tabs, guard)`` returns the ``gr.Blocks``; ``webui.app.build_page`` builds it
and ``webui.app.build_server`` mounts it. Everything on the page talks to ``backend`` (the
``webui.backend.Backend`` protocol) and nothing else. Each tab is a module with ``build(backend, page)``;
a tab that fails to build shows why in its place and the rest of the page still works.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from webui.backend import Backend
from webui.extensions import ExtensionTab
from webui.ui.model_bar import checkpoint_choices, load_checkpoint  # noqa: F401  (kept for callers)
from webui.ui.page import PageContext

# Runs an extension's callable with its errors recorded against it: (ok, result) (``ExtensionHost.run_guarded``).
Guard = Callable[..., tuple[bool, Any]]

log = logging.getLogger(__name__)

CACHE_SWEEP = (3600, 24 * 3600)  # (every N seconds, files older than M seconds)

# (label, tab id, module under webui.ui)
TABS = (
    ("txt2img", "txt2img", "txt2img_tab"),
    ("img2img", "img2img", "img2img_tab"),
    ("Inpaint", "inpaint", "inpaint_tab"),
    ("Extras", "extras", "extras_tab"),
    ("PNG Info", "png_info", "png_info_tab"),
    ("Queue", "queue", "queue_tab"),
    ("Outputs", "outputs", "outputs_tab"),
    ("Extensions", "extensions", "extensions_tab"),
    ("Settings", "settings", "settings_tab"),
)

PAGE_CSS = """
.webui-progress { position: relative; min-height: 1.8em; border-radius: 6px; overflow: hidden;
  border: 1px solid var(--border-color-primary); background: var(--block-background-fill); }
.webui-progress.queued { padding: 0.2em 0.6em; }
.webui-progress-bar { position: absolute; left: 0; top: 0; bottom: 0; background: var(--color-accent); opacity: 0.35; }
.webui-progress-text { position: relative; padding: 0 0.6em; line-height: 1.8em; font-size: 0.9em; }
.webui-prompt { position: relative; }
.webui-prompt [id$="_token_counter"] { position: absolute !important; top: 0 !important;
  left: auto !important; right: 12px !important;
  width: auto !important; min-height: 0 !important; padding: 0 !important; border: none !important;
  background: none !important; font-size: 0.8em; opacity: 0.7; z-index: 1; pointer-events: none; }
#model-details-box { padding: 0.2em 10px; }
"""

# Runs once per page load: Ctrl+Enter in a prompt box presses that tab's Generate; the page CSS.
PAGE_JS = """
() => {
  if (window.__webuiReady) return;
  window.__webuiReady = true;
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey)) return;
    const box = e.target.closest && e.target.closest('[id$="_prompt"]');
    if (!box) return;
    const tab = box.id.replace(/_(hr_)?(neg_)?prompt$/, '');
    const button = document.getElementById(tab + '_generate');
    if (button) { e.preventDefault(); button.click(); }
  });
  const style = document.createElement('style');
  style.textContent = %s;
  document.head.appendChild(style);
}
"""


def page_js() -> str:
    import json

    return PAGE_JS % json.dumps(PAGE_CSS)


def _build_tab(backend: Backend, page: Any, module_name: str) -> None:
    import importlib

    import gradio as gr

    try:
        module = importlib.import_module(f"webui.ui.{module_name}")
        module.build(backend, page)
    except Exception as exc:  # one broken tab must not take the page down
        log.exception("the %s tab could not be built", module_name)
        gr.Markdown(f"**This tab could not be built:** {type(exc).__name__}: {exc}. The other tabs work.")


def _models_tab(backend: Backend, page: Any) -> None:
    from webui.ui import models_tab
    from webui.ui.model_bar import checkpoint_update

    def refresh_choices() -> Any:
        backend.refresh_models()
        return checkpoint_update(backend)

    models_tab.build(backend, on_change=(refresh_choices, page.checkpoint))


def _unguarded(extension: str, what: str, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except Exception:  # the tab says so; the page still loads
        log.exception("extension %s: %s failed", extension, what)
        return False, None


def _extension_tabs(tabs: Sequence[ExtensionTab], guard: Guard | None) -> None:
    """Tabs added by extensions (``webui_ui_tabs``); one that fails to build shows why, the page still loads."""
    import gradio as gr

    run = guard or _unguarded
    for tab in tabs:
        with gr.Tab(tab.title, elem_id=f"tab_ext_{tab.extension}"):
            ok, _ = run(tab.extension, f"tab {tab.title!r}", tab.build)
            if not ok:
                gr.Markdown(
                    f"The extension **{tab.extension}** could not build this tab; "
                    "the Extensions tab says why. Turn it off there or update it."
                )


def build_ui(backend: Backend, extension_tabs: Sequence[ExtensionTab] = (), guard: Guard | None = None) -> Any:
    """The page over ``backend``; ``extension_tabs`` (``webui_ui_tabs``) are built inside ``guard``."""
    import gradio as gr

    from webui.ui.model_bar import build_model_bar

    page = PageContext(backend)
    # Gradio's cache (copies of uploads and of the images shown) is swept hourly of files older than a day.
    with gr.Blocks(title="Stable Diffusion web UI", delete_cache=CACHE_SWEEP) as blocks:
        page.blocks = blocks
        build_model_bar(backend, page)
        with gr.Tabs(elem_id="tabs") as tabs:
            page.tabs = tabs
            for label, tab_id, module_name in TABS:
                with gr.Tab(label, id=tab_id, elem_id=f"tab_{tab_id}"):
                    _build_tab(backend, page, module_name)
            with gr.Tab("Models", id="models", elem_id="tab_models"):
                _models_tab(backend, page)
            _extension_tabs(extension_tabs, guard)
        page.finish()
        blocks.load(page.sync_updates, inputs=page.sync_inputs(), outputs=page.sync_outputs(), queue=False)
        blocks.load(None, js=page_js())
    return blocks
