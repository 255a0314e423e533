"""Models tab: what was found in models/, demo models, the default checkpoint download."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

KINDS = ("checkpoint", "lora", "vae", "text_encoder")


def _cached_short_hash(services: Any, entry: Any) -> str:
    """A1111's short hash if it was computed already (on first load); never hashes here."""
    if entry.format == "diffusers":
        return ""
    try:
        sha = services.hashes.get(entry.path, compute=False)
    except OSError:  # removed since the last scan
        return ""
    return sha[:10] if sha else ""


def model_rows(services: Any) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        for e in services.catalog.entries(kind):
            status = e.error or ("demo model: random weights, makes noise" if e.demo else "ok")
            if e.format == "ckpt" and not e.error:
                status = str(e.info.get("note", "ok"))
            size = f"{e.size / 2**20:,.1f} MiB" if e.format != "diffusers" else "folder"
            short = _cached_short_hash(services, e)
            rows.append([kind.replace("_", " "), e.name, e.family or "", e.format, size, short, status])
    return rows


def demo_model_steps(services: Any) -> Iterator[str]:
    """Generator for "Create demo models": a line per family while it is built, then what was made.

    Each family gets its tiny checkpoint and a tiny LoRA (``webui.models.demo_lora``); files that
    exist are kept.
    """
    from webui.models.demo import DEMO_FAMILIES, demo_checkpoint_name, write_demo_models
    from webui.models.demo_lora import demo_lora_path

    models = services.paths.models
    new: list[str] = []
    for i, family in enumerate(DEMO_FAMILIES, 1):
        label = services.families.get(family).label
        yield f"Creating the demo models: {label} ({i} of {len(DEMO_FAMILIES)}), a checkpoint and a LoRA ..."
        files = [models / "Stable-diffusion" / demo_checkpoint_name(family), demo_lora_path(models, family)]
        missing = [path for path in files if not path.exists()]
        write_demo_models(models, (family,), loras=True)
        new.extend(path.name for path in missing if path.exists())
    services.catalog.refresh()
    made = ", ".join(new) if new else "nothing new (they exist already)"
    example = demo_lora_path(models, DEMO_FAMILIES[0]).stem
    yield (
        f"Demo models ready; written: {made}. They have random weights and make noise: pick one in the "
        f"checkpoint list, and try a LoRA from the LoRA panel (e.g. `<lora:{example}:1>`)."
    )


def create_demo_models(services: Any) -> str:
    """``demo_model_steps`` run to the end: its last line."""
    *_, last = demo_model_steps(services)
    return last


def download_default(services: Any, name: str, progress: Any) -> str:
    from webui.models import download

    try:
        entry = download.find_default(name)
    except KeyError as exc:
        return f"**Cannot download:** {exc}"

    def report(done: int, total: int | None) -> None:
        if total:
            progress(done / total, desc=f"{done / 2**30:.2f} of {total / 2**30:.2f} GiB")

    try:
        path = download.download_default(entry, services.paths.models, progress=report, cancel=None)
    except download.DownloadError as exc:
        return f"**Download failed:** {exc}"
    services.catalog.refresh()
    return f"Downloaded {path.name}; pick it in the checkpoint list."


def download_t5_tokenizer(services: Any, progress: Any) -> str:
    from webui.models import download

    dest = services.paths.t5_tokenizer_dir(services.settings)

    def report(done: int, total: int | None) -> None:
        if total:
            progress(done / total, desc="T5 tokenizer")

    try:
        download.download_t5_tokenizer(dest, progress=report)
    except download.DownloadError as exc:
        return f"**Download failed:** {exc}"
    return f"T5 tokenizer saved in {dest}; SD3 checkpoints load with T5 from now on."


def build(services: Any, on_change: tuple[Any, Any]) -> None:
    import gradio as gr

    from webui.models import download

    refresh_choices, checkpoint_dropdown = on_change
    headers = ["kind", "name", "family", "format", "size", "hash", "status"]
    table = gr.Dataframe(value=model_rows(services), headers=headers, interactive=False, elem_id="model-table")
    with gr.Row():
        rescan = gr.Button("Rescan models folder")
        demo = gr.Button("Create demo models (random weights, make noise)", elem_id="create-demo")
    with gr.Row():
        default = gr.Dropdown(
            label="Download a default checkpoint (needs internet)",
            choices=[(d.label, d.name) for d in download.DEFAULT_CHECKPOINTS],
            value=download.DEFAULT_CHECKPOINTS[0].name if download.DEFAULT_CHECKPOINTS else None,
        )
        fetch = gr.Button("Download")
        fetch_t5 = gr.Button("Download the T5 tokenizer (SD3)")
    message = gr.Markdown(elem_id="models_message")

    def after():
        choices = refresh_choices()  # rescans the models folder once, for the table too
        return model_rows(services), choices

    rescan.click(after, outputs=[table, checkpoint_dropdown])
    def demo_steps() -> Iterator[str]:
        yield from demo_model_steps(services)

    demo.click(demo_steps, outputs=message).then(after, outputs=[table, checkpoint_dropdown])
    fetch.click(
        lambda n, progress=gr.Progress(): download_default(services, n, progress), inputs=default, outputs=message
    ).then(after, outputs=[table, checkpoint_dropdown])
    fetch_t5.click(lambda progress=gr.Progress(): download_t5_tokenizer(services, progress), outputs=message)
