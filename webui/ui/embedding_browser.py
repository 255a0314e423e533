"""Embedding browser: the textual-inversion embeddings in models/embeddings; a click on a usable one
adds its name to the prompt or the negative prompt (the name is what uses it, as in A1111).

The backend reads the folder again for each listing and marks each embedding usable or not for the
loaded model (another family's embedding is listed with the reason it is skipped).
"""

from __future__ import annotations

from typing import Any

from webui.backend import Backend

HEADERS = ["Embedding", "Vectors", "Status"]
TARGETS = ("Prompt", "Negative prompt")


def insert_embedding(prompt: str, name: str) -> str:
    """The prompt with ``name`` appended after a space (A1111's extra-networks separator)."""
    text = (prompt or "").rstrip()
    return f"{text} {name}" if text else name


def _table(backend: Backend) -> list[list[Any]]:
    return [[row.name, row.vectors, row.status] for row in backend.embeddings()]


def build_embedding_browser(backend: Backend, page: Any, task: str, prompt: Any, negative: Any) -> None:
    """An accordion with the embedding table under a tab's prompt; follows the loaded family."""
    import gradio as gr

    with gr.Accordion("Textual Inversion", open=False, elem_id=f"{task}_embeddings"):
        table = gr.Dataframe(
            value=[], headers=HEADERS, interactive=False, wrap=True, elem_id=f"{task}_embedding_table", max_height=300
        )
        with gr.Row():
            target = gr.Radio(
                list(TARGETS), value=TARGETS[0], label="Click adds to", elem_id=f"{task}_embedding_target"
            )
            gr.Markdown("Put `.safetensors` / `.pt` embeddings in `models/embeddings`; the file name is the word.")
            refresh = gr.Button("↻ Refresh", size="sm", scale=0, elem_id=f"{task}_embedding_refresh")

    def pick(where: str, text: str, negative_text: str, evt: gr.SelectData) -> Any:
        name = (evt.row_value or [None])[0]
        row = next((r for r in backend.embeddings() if r.name == name), None)
        if row is None:
            return gr.update(), gr.update()
        if not row.usable:
            gr.Warning(f"{row.name}: {row.status}")
            return gr.update(), gr.update()
        if where == TARGETS[1]:
            return gr.update(), insert_embedding(negative_text, row.name)
        return insert_embedding(text, row.name), gr.update()

    pick.__annotations__["evt"] = gr.SelectData  # a real class: the module uses postponed annotations
    refresh.click(lambda: _table(backend), outputs=[table], show_progress="hidden")
    table.select(
        pick, inputs=[target, prompt, negative], outputs=[prompt, negative], queue=False, show_progress="hidden"
    )
    page.on_family_change([table], lambda family, changed: [_table(backend)])
