"""The page: model bar on top, then the tabs. Builds no model and imports no torch."""

from __future__ import annotations

from typing import Any

from webui.ui import models_tab


def checkpoint_choices(services: Any) -> list[tuple[str, str]]:
    labels = {spec_id: spec.label for spec_id, spec in services.families.items()}
    out = []
    for e in services.catalog.usable("checkpoint"):
        family = labels.get(e.family or "", "family found when loaded")
        demo = ", demo: makes noise" if e.demo else ""
        out.append((f"{e.name} ({family}{demo})", e.name))
    return out


def load_checkpoint(services: Any, name: str | None):
    """Generator for the model bar: a 'loading' line at once, then the result."""
    if not name:
        yield "No checkpoint selected."
        return
    yield f"Loading {name} ..."
    try:
        report = services.manager.load(name)
    except Exception as exc:  # shown to the user, the server keeps running
        yield f"**Could not load {name}:** {exc}"
        return
    how = "from the RAM cache" if report.from_cache else "from disk"
    family = services.families.get(report.family).label
    notes = "".join(f"\n- {n}" for n in report.notes)
    yield f"Loaded **{report.name}** ({family}) {how} in {report.seconds:.1f} s.{notes}"


def build_ui(services: Any) -> Any:
    import gradio as gr

    with gr.Blocks(title="Stable Diffusion web UI") as blocks:
        with gr.Row():
            ckpt = gr.Dropdown(
                label="Stable Diffusion checkpoint",
                choices=checkpoint_choices(services),
                value=None,
                scale=4,
                elem_id="checkpoint",
            )
            refresh = gr.Button("Refresh", scale=0, elem_id="refresh-checkpoints")
        status = gr.Markdown("No checkpoint loaded yet: one is loaded when you pick it.", elem_id="model-status")

        def do_refresh():
            services.catalog.refresh()
            return gr.update(choices=checkpoint_choices(services))

        refresh.click(do_refresh, outputs=ckpt)
        ckpt.change(lambda n: (yield from load_checkpoint(services, n)), inputs=ckpt, outputs=status)
        with gr.Tabs():
            with gr.Tab("Models", id="models"):
                models_tab.build(services, on_change=(do_refresh, ckpt))
    return blocks
