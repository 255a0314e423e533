# ruff: noqa: N999  (extension folders are named like the extension, with hyphens)
"""Example extension: the per-step hook, a UI tab and an API route.

``webui_step`` runs on the generation worker after every denoising step; it records the latents'
standard deviation (a quick view of how the noise is removed) and changes nothing. The tab and the
route read the same ``StepStats`` object from web server threads, hence the lock.
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
def webui_ui_tabs(services):
    return [("Step stats", build_tab)]


def build_tab() -> None:
    import gradio as gr

    gr.Markdown("Latent statistics of each denoising step of the last job (refresh after a job).")
    table = gr.Markdown(stats.markdown(), elem_id="example_tab_stats")
    gr.Button("Refresh", elem_id="example_tab_refresh").click(stats.markdown, outputs=table)


@hookimpl
def webui_app_started(app) -> None:
    @app.get(ROUTE)
    def example_tab_stats() -> dict:
        """Step statistics of the last job that ran (example-tab extension)."""
        return stats.snapshot()
