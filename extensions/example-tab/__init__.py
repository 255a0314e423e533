# ruff: noqa: N999  (extension folders are named like the extension, with hyphens)
"""Example extension: the per-step hook, a UI tab and an API route.

``webui_step`` runs on the generation worker after every denoising step; it records the latents'
standard deviation (a quick view of how the noise is removed) and changes nothing. The tab and the
route read the same ``StepStats`` object from web server threads, hence the lock.

The tab and the route get ``webui`` (``webui.extension_facade.ExtensionFacade``): the tab asks its
backend which model is loaded (plain data: ``webui.backend.LoadedModel``), the route is added with
``webui.add_route``.
"""

from __future__ import annotations

from webui.hooks import StepEvent, hookimpl

from .stats import StepStats

ROUTE = "/example-tab/stats"
stats = StepStats()  # lives as long as the app: the host imports this module once per start


@hookimpl
def webui_step(event: StepEvent) -> None:
    stats.record(event)


@hookimpl
def webui_ui_tabs(webui):
    return [("Step stats", lambda: build_tab(webui))]


def loaded_model(webui) -> str:
    """Which model the next job's statistics come from, as the backend says."""
    loaded = webui.backend.loaded()
    return f"Loaded model: **{loaded.name}** ({loaded.family.label})." if loaded else "No model is loaded yet."


def build_tab(webui) -> None:
    import gradio as gr

    gr.Markdown("Latent statistics of each denoising step of the last job (refresh after a job).")
    model = gr.Markdown("", elem_id="example_tab_model")
    table = gr.Markdown(stats.markdown(), elem_id="example_tab_stats")

    def refresh() -> tuple[str, str]:
        return loaded_model(webui), stats.markdown()

    gr.Button("Refresh", elem_id="example_tab_refresh").click(refresh, outputs=[model, table])


def example_tab_stats() -> dict:
    """Step statistics of the last job that ran (example-tab extension)."""
    return stats.snapshot()


@hookimpl
def webui_app_started(webui) -> None:
    webui.add_route(ROUTE, example_tab_stats, methods=["GET"])
