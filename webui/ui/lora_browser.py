"""LoRA browser: the LoRAs in models/Lora with the family they were made for; a click on a usable one
inserts ``<lora:name:1>`` into the prompt.

The backend reads each LoRA's family from its safetensors header (key names and shapes, no
weights), once per file version. A LoRA is usable when no model is loaded yet (the engine checks
it then) or when its family group fits the loaded model's.
"""

from __future__ import annotations

from typing import Any

from webui.backend import Backend, FamilyInfo, LoraInfo

HEADERS = ["LoRA", "Made for", "Status"]


def lora_rows(backend: Backend, family: FamilyInfo | None) -> list[LoraInfo]:
    """One row per LoRA file, in catalog order, marked usable or not for ``family`` (None: no model)."""
    return backend.loras(family.id if family is not None else None)


def insert_lora(prompt: str, name: str, weight: float = 1.0) -> str:
    """The prompt with ``<lora:name:weight>`` appended (A1111 puts it at the end, after a space)."""
    shown = f"{weight:g}"
    tag = f"<lora:{name}:{shown}>"
    text = (prompt or "").rstrip()
    return f"{text} {tag}" if text else tag


def _table(rows: list[LoraInfo]) -> list[list[str]]:
    return [[row.name, row.made_for, row.status] for row in rows]


def _loaded_family(backend: Backend) -> FamilyInfo | None:
    loaded = backend.loaded()
    return loaded.family if loaded is not None else None


def build_lora_browser(backend: Backend, page: Any, task: str, prompt: Any) -> None:
    """An accordion with the LoRA table under a tab's prompt; follows the loaded family."""
    import gradio as gr

    with gr.Accordion("LoRA", open=False, elem_id=f"{task}_lora"):
        table = gr.Dataframe(
            value=[], headers=HEADERS, interactive=False, wrap=True, elem_id=f"{task}_lora_table", max_height=300
        )
        with gr.Row():
            gr.Markdown("Click a LoRA to add `<lora:name:1>` to the prompt; change the 1 to set its strength.")
            refresh = gr.Button("↻ Refresh", size="sm", scale=0, elem_id=f"{task}_lora_refresh")

    def rows() -> list[list[str]]:
        return _table(lora_rows(backend, _loaded_family(backend)))

    def rescan() -> list[list[str]]:
        backend.refresh_models()
        return rows()

    def pick(text: str, evt: gr.SelectData) -> Any:
        name = (evt.row_value or [None])[0]
        row = next((r for r in lora_rows(backend, _loaded_family(backend)) if r.name == name), None)
        if row is None:
            return gr.update()
        if not row.usable:
            gr.Warning(f"{row.name}: {row.status}")
            return gr.update()
        return insert_lora(text, row.name)

    pick.__annotations__["evt"] = gr.SelectData  # a real class: the module uses postponed annotations
    refresh.click(rescan, outputs=[table], show_progress="hidden")
    table.select(pick, inputs=[prompt], outputs=[prompt], queue=False, show_progress="hidden")
    page.on_family_change([table], lambda family, changed: [_table(lora_rows(backend, family))])
