"""Prompt styles under a tab's prompt: pick styles (applied at Generate), apply them to the prompt boxes,
save the prompts as a style (A1111's ``styles.csv``, written through the backend).

Element ids (``<t>`` the task): <t>_styles (the multi-select), <t>_styles_refresh, <t>_styles_apply,
<t>_style_name, <t>_style_save, <t>_style_status.

At Generate the chosen styles are applied to the request's prompts (``styled_page_request``): the
prompt boxes keep what the user typed, the infotext holds the styled prompts, as in A1111. "Apply styles
to prompt" writes the styled prompts into the boxes and clears the choice (A1111's ✎ button). A pasted
infotext (↙, PNG Info, Send to) whose prompts end with styles gets them picked again (``StylesPaste``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.backend import Backend, BackendError
from webui.generation.requests import RequestError

STYLES_KEY = "styles"  # the key of the dropdown's value among a tab's extra inputs


def style_names(backend: Backend) -> list[str]:
    try:
        return [s.name for s in backend.styles()]
    except BackendError:
        return []


def applied_prompts(backend: Backend, prompt: str, negative: str, names: list[str] | None) -> tuple[str, str, str]:
    """(prompt, negative prompt, a note) with ``names`` applied; the note names styles that no longer exist."""
    done = backend.apply_styles(prompt or "", negative or "", list(names or ()))
    note = f"No style named {', '.join(done.unknown)}; skipped." if done.unknown else ""
    return done.prompt, done.negative_prompt, note


def save_style(backend: Backend, name: str, prompt: str, negative: str) -> tuple[list[str], str]:
    """(the style names after saving, a status line in Markdown)."""
    try:
        style = backend.save_style(name, prompt or "", negative or "")
    except RequestError as exc:
        return style_names(backend), f"**Style not saved:** the name {exc.message}."
    except BackendError as exc:
        return style_names(backend), f"**Style not saved:** {exc}"
    return style_names(backend), f"Saved style **{style.name}**."


def styled_page_request(backend: Backend, request: Any, values: Mapping[str, Any]) -> Any:
    """The page's request with the chosen styles applied to its prompts (unchanged with none chosen)."""
    from webui.backend.styles import styled_request

    names = [n for n in (values.get(STYLES_KEY) or ()) if n]
    if not names:
        return request
    try:
        styled, _ = styled_request(request, names, backend.apply_styles)
    except BackendError as exc:  # the styles file cannot be read: the page says so (submit_from_page)
        raise ValueError(f"the styles cannot be applied: {exc}") from None
    return styled


HIRES_PROMPT_KEYS = ("Hires prompt", "Hires negative prompt")


class StylesPaste:
    """The styles row as a paste section (``Controls.sections``): a pasted infotext whose prompts end with styles
    of styles.csv gets them picked and taken off the prompt boxes (A1111's default, "Apply if any"); an infotext
    with hires prompts is pasted as written (A1111 applies styles only when the hires prompts share them)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def read_infotext(self, text: str) -> tuple[dict[str, Any], list[str]]:
        import gradio as gr

        from webui.outputs.infotext import split_infotext

        if not text or not text.strip():
            return {}, []
        prompt, negative, params = split_infotext(text)
        if any(key in params for key in HIRES_PROMPT_KEYS):
            return {}, []
        try:
            found = self.backend.extract_styles(prompt, negative)
        except BackendError:
            return {}, []
        if not found.applied:
            return {}, []
        picked = gr.update(choices=style_names(self.backend), value=list(found.applied))
        return {"prompt": found.prompt, "negative_prompt": found.negative_prompt, STYLES_KEY: picked}, []


def build_styles_row(backend: Backend, page: Any, task: str, fields: dict[str, Any], widgets: dict[str, Any]) -> Any:
    """The styles row under the prompts; returns the dropdown (its value is read at Generate). Its choices are
    read again on every page load and with ↻ (the file may be edited while the app runs)."""
    import gradio as gr

    prompt, negative = fields["prompt"], fields["negative_prompt"]
    with gr.Row(elem_id=f"{task}_styles_row"):
        styles = gr.Dropdown(
            label="Styles",
            choices=style_names(backend),
            value=[],
            multiselect=True,
            scale=4,
            elem_id=f"{task}_styles",
        )
        refresh = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id=f"{task}_styles_refresh")
        apply = gr.Button("Apply styles to prompt", size="sm", scale=1, elem_id=f"{task}_styles_apply")
        with gr.Column(scale=2, min_width=200):
            name = gr.Textbox(label="New style name", lines=1, max_lines=1, elem_id=f"{task}_style_name")
            save = gr.Button("Save prompt as style", size="sm", elem_id=f"{task}_style_save")
    status = gr.Markdown("", elem_id=f"{task}_style_status")

    def on_apply(text: str, neg: str, names: list[str]) -> tuple[Any, Any, Any, str]:
        new_text, new_neg, note = applied_prompts(backend, text, neg, names)
        return new_text, new_neg, gr.update(value=[]), note

    def on_save(style_name: str, text: str, neg: str, chosen: list[str]) -> tuple[Any, str]:
        names, message = save_style(backend, style_name, text, neg)
        return gr.update(choices=names, value=[n for n in (chosen or []) if n in names]), message

    def on_refresh(chosen: list[str]) -> Any:
        names = style_names(backend)
        return gr.update(choices=names, value=[n for n in (chosen or []) if n in names])

    apply.click(on_apply, inputs=[prompt, negative, styles], outputs=[prompt, negative, styles, status], queue=False)
    save.click(on_save, inputs=[name, prompt, negative, styles], outputs=[styles, status], queue=False)
    refresh.click(on_refresh, inputs=[styles], outputs=[styles], queue=False)

    def on_page_load() -> None:  # the page's own Blocks (None where a test builds the controls alone)
        if getattr(page, "blocks", None) is not None:
            page.on_load(lambda: gr.update(choices=style_names(backend)), outputs=[styles])

    page.after_build(on_page_load)
    widgets["styles"] = styles
    return styles
