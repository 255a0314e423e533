"""LoRA browser: the LoRAs in models/Lora with the family they were made for; a click on a usable one
inserts ``<lora:name:1>`` into the prompt.

A LoRA's family is read from its safetensors header (key names and shapes, no weights), once
per file version; the results are kept in ``page.cache`` (per UI, not global). A LoRA is usable
when no model is loaded yet (the engine checks it then) or when its family group fits the
loaded model's (``webui.models.lora.group_fits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADERS = ["LoRA", "Made for", "Status"]
USABLE = "usable"


@dataclass(frozen=True)
class LoraRow:
    name: str  # what goes in <lora:name:weight>
    made_for: str
    usable: bool
    status: str

    def cells(self) -> list[str]:
        return [self.name, self.made_for, self.status]


def _inspect(entry: Any, cache: dict[Any, tuple[str, str]]) -> tuple[str, str]:
    """(family group, error or '') for a catalog entry, cached by path and mtime."""
    from webui.models.lora import inspect_lora
    from webui.models.safetensors_header import ModelFileError, read_header

    key = (entry.path, entry.mtime_ns)
    if key not in cache:
        if entry.error:
            cache[key] = ("", entry.error)
        elif entry.format != "safetensors":
            cache[key] = ("unknown", "")
        else:
            try:
                cache[key] = (inspect_lora(read_header(entry.path)).family_group, "")
            except ModelFileError as exc:
                cache[key] = ("", str(exc))
            except OSError as exc:
                cache[key] = ("", f"cannot be read: {exc}")
    return cache[key]


def lora_rows(services: Any, cache: dict[Any, tuple[str, str]], family: Any) -> list[LoraRow]:
    """One row per LoRA file, in catalog order, marked usable or not for ``family`` (None: no model)."""
    from webui.models.lora import group_fits, group_label

    rows = []
    for entry in services.catalog.entries("lora"):
        name = Path(entry.stem).name
        group, error = _inspect(entry, cache)
        made_for = group_label(group, unknown="unknown model") if group else "?"
        if error:
            rows.append(LoraRow(name, made_for, False, error))
            continue
        if family is None or group_fits(group, family) is not False:
            rows.append(LoraRow(name, made_for, True, USABLE))
        else:
            rows.append(LoraRow(name, made_for, False, f"made for {made_for}; the loaded model is {family.label}"))
    return rows


def insert_lora(prompt: str, name: str, weight: float = 1.0) -> str:
    """The prompt with ``<lora:name:weight>`` appended (A1111 puts it at the end, after a space)."""
    shown = f"{weight:g}"
    tag = f"<lora:{name}:{shown}>"
    text = (prompt or "").rstrip()
    return f"{text} {tag}" if text else tag


def _table(rows: list[LoraRow]) -> list[list[str]]:
    return [row.cells() for row in rows]


def build_lora_browser(services: Any, page: Any, task: str, prompt: Any) -> None:
    """An accordion with the LoRA table under a tab's prompt; follows the loaded family."""
    import gradio as gr

    cache = page.cache.setdefault("lora_headers", {})
    with gr.Accordion("LoRA", open=False, elem_id=f"{task}_lora"):
        table = gr.Dataframe(
            value=[], headers=HEADERS, interactive=False, wrap=True, elem_id=f"{task}_lora_table", max_height=300
        )
        with gr.Row():
            gr.Markdown("Click a LoRA to add `<lora:name:1>` to the prompt; change the 1 to set its strength.")
            refresh = gr.Button("↻ Refresh", size="sm", scale=0, elem_id=f"{task}_lora_refresh")

    def rows() -> list[list[str]]:
        return _table(lora_rows(services, cache, services.manager.family))

    def rescan() -> list[list[str]]:
        services.catalog.refresh()
        return rows()

    def pick(text: str, evt: gr.SelectData) -> Any:
        name = (evt.row_value or [None])[0]
        row = next((r for r in lora_rows(services, cache, services.manager.family) if r.name == name), None)
        if row is None:
            return gr.update()
        if not row.usable:
            gr.Warning(f"{row.name}: {row.status}")
            return gr.update()
        return insert_lora(text, row.name)

    pick.__annotations__["evt"] = gr.SelectData  # a real class: the module uses postponed annotations
    refresh.click(rescan, outputs=[table], show_progress="hidden")
    table.select(pick, inputs=[prompt], outputs=[prompt], queue=False, show_progress="hidden")
    page.on_family_change([table], lambda family, changed: [_table(lora_rows(services, cache, family))])
