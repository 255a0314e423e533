"""The model bar on top of the page: checkpoint dropdown ("name (family)"), refresh, VAE dropdown, status.

Loads go through the backend (it runs them on the worker thread that owns the device), inside
generators that first yield "Loading ..." so the page stays responsive; a failed load says why.
The status line stays one line; the load's memory/speed notes go to the folded "Model details".
After a switch ``page.follow_model`` updates every tab (samplers, size presets); the user's steps,
CFG, size and sampler stay, only what the new family cannot use changes (A1111).
The checkpoint and VAE shown here also travel with each request from this page, so what a
browser tab shows is what it generates with, even when another tab switched the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from webui.backend import Backend, LoadReport

AUTOMATIC_VAE = "Automatic"
NO_MODEL_STATUS = "No checkpoint loaded yet: pick one, or press Generate to load the default."


def checkpoint_choices(backend: Backend) -> list[tuple[str, str]]:
    """``[(label, name)]``: "name (family)" for each usable checkpoint."""
    out = []
    for m in backend.models("checkpoint"):
        family = m.family_label or "family found when loaded"
        demo = ", demo: makes noise" if m.demo else ""
        out.append((f"{m.name} ({family}{demo})", m.name))
    return out


def vae_choices(backend: Backend) -> list[str]:
    return [AUTOMATIC_VAE, *(m.name for m in backend.models("vae"))]


def current_checkpoint(backend: Backend) -> str | None:
    loaded = backend.loaded()
    return loaded.name if loaded is not None else None


def checkpoint_update(backend: Backend, name: str | None = None) -> Any:
    """The dropdown's choices, and its value when a model is loaded (else unchanged).

    ``name``: the loaded checkpoint's, when the caller asked the backend already.
    """
    import gradio as gr

    name = name if name is not None else current_checkpoint(backend)
    choices = checkpoint_choices(backend)
    if name is not None and name in {value for _, value in choices}:
        return gr.update(choices=choices, value=name)
    return gr.update(choices=choices)


def loaded_status(backend: Backend) -> str:
    """The status line for whatever is loaded now (a job or another browser tab may have loaded it)."""
    return status_line(backend.loaded())


def status_line(loaded: Any) -> str:
    if loaded is None:
        return NO_MODEL_STATUS
    return f"Loaded **{loaded.name}** ({loaded.family.label})."


def describe_load(report: LoadReport) -> str:
    """One line: what was loaded, from where, how long (the tuning notes go to ``details_text``)."""
    how = "from the RAM cache" if report.from_cache else "from disk"
    return f"Loaded **{report.name}** ({report.family_label}) {how} in {report.seconds:.1f} s."


def details_text(notes: Any) -> str:
    """The load's memory/speed notes as a list, for the folded "Model details" under the status line."""
    return "\n".join(f"- {n}" for n in notes)


def loaded_details(backend: Backend) -> str:
    loaded = backend.loaded()
    return details_text(loaded.notes if loaded is not None else ())


def load_steps(backend: Backend, name: str | None, timeout: float | None = None) -> Iterator[tuple[str, str]]:
    """Generator for the model bar: (status line, details), a 'loading' line at once, then the result.

    Never raises. The load runs on the generation worker (behind jobs already queued), so the
    service must be started.
    """
    if not name:
        yield "No checkpoint selected.", ""
        return
    yield f"Loading {name} ...", ""
    try:
        report = backend.load_model(name, timeout, source="model load")
    except Exception as exc:  # noqa: BLE001 - shown to the user, the server keeps running
        yield f"**Could not load {name}:** {_reason(exc)}", ""
        return
    yield describe_load(report), details_text(report.notes)


def load_checkpoint(backend: Backend, name: str | None, timeout: float | None = None) -> Iterator[str]:
    """``load_steps`` without the details: the status lines only."""
    for line, _ in load_steps(backend, name, timeout):
        yield line


def set_vae(backend: Backend, name: str | None, timeout: float | None = None) -> Iterator[str]:
    """Generator: switch the VAE of the loaded checkpoint ("Automatic" = its own)."""
    label = name or AUTOMATIC_VAE
    if backend.loaded() is None:
        yield f"VAE {label} is used once a checkpoint is loaded."
        return
    yield f"Loading VAE {label} ..."
    try:
        used = backend.set_vae(None if label == AUTOMATIC_VAE else label, timeout, source="VAE switch")
    except Exception as exc:  # noqa: BLE001 - shown to the user
        yield f"**Could not use the VAE {label}:** {_reason(exc)}"
        return
    yield f"VAE: {used}."


def _reason(exc: BaseException) -> str:
    text = str(exc).strip("'\"")
    return text or type(exc).__name__


def refresh(backend: Backend) -> tuple[Any, Any]:
    """Rescan models/ (on a worker of Gradio's, not the generation worker): new choices for both lists."""
    import gradio as gr

    backend.refresh_models()
    return checkpoint_update(backend), gr.update(choices=vae_choices(backend))


def build_model_bar(backend: Backend, page: Any) -> None:
    """Create the bar's components on ``page`` (checkpoint, vae, model_status, family) and wire them."""
    import gradio as gr

    with gr.Row(elem_id="model-bar"):
        page.checkpoint = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=checkpoint_choices(backend),
            value=current_checkpoint(backend),
            scale=4,
            elem_id="checkpoint",
        )
        refresh_button = gr.Button("↻", scale=0, min_width=50, elem_id="refresh-checkpoints")
        page.vae = gr.Dropdown(
            label="SD VAE", choices=vae_choices(backend), value=AUTOMATIC_VAE, scale=2, elem_id="sd_vae"
        )
    page.model_status = gr.Markdown(NO_MODEL_STATUS, elem_id="model-status")
    with gr.Accordion("Model details", open=False, elem_id="model-details-box"):
        page.model_details = gr.Markdown("", elem_id="model-details")
    page.family = gr.State("")

    def load(name: str | None) -> Iterator[tuple[str, str]]:
        for line, details in load_steps(backend, name):
            if line.startswith("**Could not"):
                gr.Warning(line.replace("**", ""))
            yield line, details

    loaded = page.checkpoint.input(
        load,
        inputs=[page.checkpoint],
        outputs=[page.model_status, page.model_details],
        concurrency_limit=None,
        show_progress="minimal",
    )
    page.follow_model(loaded)
    refresh_button.click(lambda: refresh(backend), outputs=[page.checkpoint, page.vae], show_progress="hidden")

    def vae(name: str | None) -> Iterator[str]:
        yield from set_vae(backend, name)

    page.vae.input(vae, inputs=[page.vae], outputs=[page.model_status], concurrency_limit=None)
