"""Models tab: what was found in models/, demo models, the default checkpoint download."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from webui.backend import Backend

KINDS = ("checkpoint", "lora", "vae", "text_encoder")


def model_rows(backend: Backend) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        for m in backend.models(kind, usable=False):
            status = m.error or ("demo model: random weights, makes noise" if m.demo else "ok")
            if m.format == "ckpt" and not m.error:
                status = m.note or "ok"
            size = f"{m.size / 2**20:,.1f} MiB" if m.format != "diffusers" else "folder"
            short = m.short_hash or ""  # A1111's short hash if it was computed already (on first load)
            rows.append([kind.replace("_", " "), m.name, m.family or "", m.format, size, short, status])
    return rows


def demo_model_steps(backend: Backend) -> Iterator[str]:
    """Generator for "Create demo models": a line per family while it is built, then what was made.

    Each family gets its tiny checkpoint and a tiny LoRA; files that exist are kept.
    """
    for step in backend.create_demo_models():
        yield step.text


def create_demo_models(backend: Backend) -> str:
    """``demo_model_steps`` run to the end: its last line."""
    *_, last = demo_model_steps(backend)
    return last


def _with_progress(steps: Iterator[Any], progress: Any) -> str:
    """Report each step's fraction to Gradio's progress bar; the last step's text."""
    last = ""
    for step in steps:
        if step.final:
            last = step.text
        elif step.fraction is not None:
            progress(step.fraction, desc=step.text)
    return last


def download_default(backend: Backend, name: str, progress: Any) -> str:
    return _with_progress(backend.download_checkpoint(name), progress)


def download_t5_tokenizer(backend: Backend, progress: Any) -> str:
    return _with_progress(backend.download_t5_tokenizer(), progress)


def build(backend: Backend, on_change: tuple[Any, Any]) -> None:
    import gradio as gr

    refresh_choices, checkpoint_dropdown = on_change
    headers = ["kind", "name", "family", "format", "size", "hash", "status"]
    table = gr.Dataframe(value=model_rows(backend), headers=headers, interactive=False, elem_id="model-table")
    with gr.Row():
        rescan = gr.Button("Rescan models folder")
        demo = gr.Button("Create demo models (random weights, make noise)", elem_id="create-demo")
    downloads = backend.download_choices()
    with gr.Row():
        default = gr.Dropdown(
            label="Download a default checkpoint (needs internet)",
            choices=[(d.label, d.name) for d in downloads],
            value=downloads[0].name if downloads else None,
        )
        fetch = gr.Button("Download")
        fetch_t5 = gr.Button("Download the T5 tokenizer (SD3)")
    message = gr.Markdown(elem_id="models_message")

    def after():
        choices = refresh_choices()  # rescans the models folder once, for the table too
        return model_rows(backend), choices

    rescan.click(after, outputs=[table, checkpoint_dropdown])
    def demo_steps() -> Iterator[str]:
        yield from demo_model_steps(backend)

    demo.click(demo_steps, outputs=message).then(after, outputs=[table, checkpoint_dropdown])
    fetch.click(
        lambda n, progress=gr.Progress(): download_default(backend, n, progress), inputs=default, outputs=message
    ).then(after, outputs=[table, checkpoint_dropdown])
    fetch_t5.click(lambda progress=gr.Progress(): download_t5_tokenizer(backend, progress), outputs=message)
