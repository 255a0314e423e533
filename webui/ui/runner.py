"""Running a job from a tab: submit to our queue, stream progress and preview, show the results.

``build_results(task) -> Results`` makes the right-hand column (progress bar, live preview,
gallery, "Send to" buttons, infotext). ``attach_runner(backend, page, controls, to_request=None)``
wires a tab's Generate / Interrupt / Skip and the gallery:

* Generate (and Ctrl+Enter in the prompt boxes, see ``shell.PAGE_JS``) builds the request with
  ``to_request(values) -> GenerationRequest`` (default: ``request_from_values(task, values)``;
  img2img/inpaint pass their own to add the image and mask), adds this page's checkpoint and VAE,
  validates it and submits it to the backend's job queue. A request error is shown next to the
  Generate button (``<t>_error``) and as a notice; nothing is queued.
* Then a generator streams: the queue position while waiting, an HTML progress bar with step/total
  and ETA, the live preview; at the end the gallery, the infotext of the first image, or the
  job's error in words. Both events run outside Gradio's queue limits (``concurrency_limit=None``):
  the backend queues the jobs, so two browser tabs can wait in it at once. The page follows its job by
  id through snapshots (``backend.wait``), never by holding it.
* Interrupt and Skip act on THIS page's job (its id is kept in ``results.job``, a ``gr.State``).
* Selecting a gallery image shows its infotext; ♻ reuses its seed; "Send to img2img / inpaint"
  fill that tab from its infotext and image.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webui.backend import Backend, JobSnapshot, NotFound, QueueFull
from webui.generation.requests import GenerationRequest, RequestError

POLL_SECONDS = 0.2
EMPTY_OUTCOME: dict[str, list] = {"infotexts": [], "seeds": []}


@dataclass
class Results:
    progress: Any
    preview: Any
    gallery: Any
    infotext: Any
    send_to_img2img: Any
    send_to_inpaint: Any
    job: Any  # gr.State: this page's job id ("" when none)
    outcome: Any  # gr.State: {"infotexts": [...], "seeds": [...]} of the last job
    selected: Any  # gr.State: index of the selected gallery image
    send_to_extras: Any = None


def build_results(task: str) -> Results:
    import gradio as gr

    progress = gr.HTML("", elem_id=f"{task}_progress", js_on_load=None)
    preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{task}_preview")
    gallery = gr.Gallery(
        label="Output", columns=2, height=512, format="png", type="pil", interactive=False, elem_id=f"{task}_gallery"
    )
    with gr.Row():
        to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{task}_send_to_img2img")
        to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{task}_send_to_inpaint")
        to_extras = gr.Button("Send to Extras", size="sm", elem_id=f"{task}_send_to_extras")
    infotext = gr.Textbox(
        label="Generation parameters", lines=4, interactive=False, buttons=["copy"], elem_id=f"{task}_infotext"
    )
    return Results(
        progress=progress,
        preview=preview,
        gallery=gallery,
        infotext=infotext,
        send_to_img2img=to_img2img,
        send_to_inpaint=to_inpaint,
        job=gr.State(""),
        outcome=gr.State(dict(EMPTY_OUTCOME)),
        selected=gr.State(0),
        send_to_extras=to_extras,
    )


# --- pure helpers ---------------------------------------------------------------------------------


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA: estimating"
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"ETA: {minutes} min {secs:02d} s" if minutes else f"ETA: {secs} s"


def progress_html(state: str, position: int, progress: Any) -> str:
    """The progress line: queue position while waiting, else a bar with step/total, percent and ETA."""
    if state == "queued":
        ahead = "next to run" if position <= 1 else f"position {position} in the queue"
        return f'<div class="webui-progress queued">Waiting: {ahead}</div>'
    if state != "running":
        return ""
    percent = int(progress.fraction * 100)
    parts = [f"Step {progress.done_steps}/{progress.total_steps}" if progress.total_steps else "Starting"]
    if progress.images_total > 1:
        parts.append(f"image {min(progress.images_done + 1, progress.images_total)}/{progress.images_total}")
    if progress.textinfo:
        parts.append(html.escape(progress.textinfo))
    parts.append(f"{percent}%")
    parts.append(format_eta(progress.eta_seconds))
    return (
        f'<div class="webui-progress running"><div class="webui-progress-bar" style="width:{percent}%"></div>'
        f'<span class="webui-progress-text">{" · ".join(parts)}</span></div>'
    )


def result_images(result: Any) -> list[Any]:
    """The job's images with their infotext in the PNG ``parameters`` text (so a download keeps it)."""
    images = []
    for i, image in enumerate(result.images):
        copy = image.copy()
        if i < len(result.infotexts):
            copy.info["parameters"] = result.infotexts[i]
        images.append(copy)
    return images


def finished_message(job: JobSnapshot) -> str:
    """Words for a job that did not end ``done`` ('' when it did)."""
    from webui.ui.control_values import field_label

    if job.state == "failed":
        error = job.error or "unknown error"
        if job.error_field:
            error = error.removeprefix(f"{job.error_field}: ")
            return f"**{field_label(job.error_field)}:** {error}"
        return f"**Generation failed:** {error}"
    if job.state == "interrupted":
        kept = len(job.result.images) if job.result is not None else 0
        said = f"Interrupted; {kept} image(s) kept." if kept else "Interrupted."
        return f"{said} The app {job.error}." if job.error else said
    return ""


@dataclass(frozen=True)
class Frame:
    """One update of the results column while a job runs (``final`` once it ended, with the job as it ended)."""

    progress: str
    preview: Any = None  # a new preview image, or None for "unchanged"
    final: bool = False
    job: JobSnapshot | None = None


def watch_job(backend: Backend, job_id: str, poll: float = POLL_SECONDS) -> Iterator[Frame]:
    """Frames for the job until it finishes: queue position, progress, new previews; raises ``NotFound``."""
    last_text = None
    last_preview = 0
    job = backend.job(job_id, preview_after=last_preview)
    while not job.finished:
        progress = job.progress
        text = progress_html(job.state, job.position, progress)
        preview = None
        if progress.preview is not None:  # only sent when newer than ours
            preview, last_preview = progress.preview, progress.preview_id
        if text != last_text or preview is not None:
            last_text = text
            yield Frame(text, preview)
        job = backend.wait(job_id, poll, preview_after=last_preview)
    yield Frame("", None, final=True, job=job)


# --- wiring ---------------------------------------------------------------------------------------


def _page_request(
    backend: Backend,
    to_request: Callable[[Mapping[str, Any]], GenerationRequest],
    values: Mapping[str, Any],
    ckpt: Any,
    vae: Any,
) -> GenerationRequest:
    from webui.ui.styles_row import styled_page_request

    req = styled_page_request(backend, to_request(values), values)
    changes: dict[str, Any] = {"sd_model_checkpoint": ckpt or "", "sd_vae": vae or ""}
    settings = backend.settings()
    if "rng" not in values:
        changes["rng"] = getattr(settings, "default_rng", "GPU")
    if "output_format" not in values:
        changes["output_format"] = getattr(settings, "samples_format", "png")
    # The request's own checks; a checkpoint, LoRA or sampler the page names is checked when the job runs.
    return backend.validate(req.replace(**changes), names=False)


def attach_runner(
    backend: Backend,
    page: Any,
    controls: Any,
    to_request: Callable[[Mapping[str, Any]], GenerationRequest] | None = None,
) -> None:
    """Wire Generate / Interrupt / Skip / gallery / Send-to for a tab built with ``build_controls``."""
    if to_request is None:
        from webui.ui.control_values import request_from_values

        task = controls.task

        def to_request(values: Mapping[str, Any]) -> GenerationRequest:
            return request_from_values(task, values)

    def build(values: Mapping[str, Any], ckpt: Any, vae: Any) -> GenerationRequest:
        return _page_request(backend, to_request, values, ckpt, vae)

    _wire_generate(backend, page, controls, build)
    _wire_gallery(page, controls)


def submit_from_page(backend: Backend, build: Callable[[], GenerationRequest]) -> tuple[str, str]:
    """(job id, error markdown): submit the request ``build()`` makes, or say what is wrong."""
    from webui.ui.control_values import error_text

    try:
        request = build()
        job = backend.submit(request, source=f"{request.task} tab")  # the owner the queue list shows
    except RequestError as exc:
        return "", error_text(exc)
    except ValueError as exc:  # a tab's own conversion (an image it cannot read ...)
        return "", f"**Cannot generate:** {exc}"
    except QueueFull as exc:
        return "", f"**Not queued:** {exc}"
    return job.id, ""


def _stream(backend: Backend, job_id: str) -> Iterator[tuple]:
    """Generator behind the results column: (progress, preview, gallery, infotext, error, outcome, selected)."""
    import gradio as gr

    keep = gr.update()
    if not job_id:
        yield keep, keep, keep, keep, keep, keep, keep
        return
    job: JobSnapshot | None = None
    try:
        for frame in watch_job(backend, job_id):
            if frame.final:
                job = frame.job
            else:
                preview = gr.update(value=frame.preview, visible=True) if frame.preview is not None else keep
                yield frame.progress, preview, keep, keep, "", keep, keep
    except NotFound as exc:
        yield "", gr.update(visible=False), keep, keep, str(exc), keep, keep
        return
    assert job is not None and job.result is not None
    result = job.result
    message = finished_message(job)
    hidden = gr.update(value=None, visible=False)
    if job.state == "failed":
        gr.Warning(message.replace("**", ""))
    if job.state == "failed" and not result.images:  # the last results stay usable
        yield "", hidden, keep, keep, message, keep, keep
        return
    outcome = {"infotexts": list(result.infotexts), "seeds": list(result.seeds)}
    first = result.infotexts[0] if result.infotexts else ""
    yield "", hidden, result_images(result), first, message, outcome, 0


def _wire_generate(backend: Backend, page: Any, c: Any, build: Callable[..., GenerationRequest]) -> None:
    import gradio as gr

    r = c.results
    n_fields = len(c.inputs())

    def submit(*args: Any) -> tuple[str, str]:
        values, (ckpt, vae) = c.values(args[:n_fields]), args[n_fields:]
        job_id, error = submit_from_page(backend, lambda: build(values, ckpt, vae))
        if error:
            gr.Warning(error.replace("**", ""))
        return job_id, error

    queued = c.generate.click(
        submit,
        inputs=[*c.inputs(), page.checkpoint, page.vae],
        outputs=[r.job, c.error],
        concurrency_limit=None,
        show_progress="hidden",
    )

    def stream(job_id: str) -> Iterator[tuple]:
        yield from _stream(backend, job_id)

    streamed = queued.then(
        stream,
        inputs=[r.job],
        outputs=[r.progress, r.preview, r.gallery, r.infotext, c.error, r.outcome, r.selected],
        concurrency_limit=None,
        show_progress="hidden",
    )
    page.follow_model(streamed, reset_defaults=False, status=True)
    c.interrupt.click(lambda job_id: _act(backend.interrupt, job_id), inputs=[r.job], queue=False)
    c.skip.click(lambda job_id: _act(backend.skip, job_id), inputs=[r.job], queue=False)


def _act(action: Callable[[str], Any], job_id: str) -> None:
    if job_id:
        try:
            action(job_id)
        except KeyError:
            pass  # the job is long gone


def selected_infotext(outcome: Mapping[str, Any] | None, index: int | None) -> str:
    texts = (outcome or {}).get("infotexts") or []
    if not texts:
        return ""
    i = index if isinstance(index, int) and 0 <= index < len(texts) else 0
    return texts[i]


def selected_seed(outcome: Mapping[str, Any] | None, index: int | None) -> int | None:
    seeds = (outcome or {}).get("seeds") or []
    if not seeds:
        return None
    i = index if isinstance(index, int) and 0 <= index < len(seeds) else 0
    return int(seeds[i])


def _selected_image(gallery: Any, index: int | None) -> Any:
    if not gallery:
        return None
    i = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[i]
    return item[0] if isinstance(item, (tuple, list)) else item


def _wire_gallery(page: Any, c: Any) -> None:
    import gradio as gr

    r = c.results

    def on_select(outcome: Any, evt: gr.SelectData) -> tuple[str, int]:
        index = evt.index if isinstance(evt.index, int) else 0
        return selected_infotext(outcome, index), index

    on_select.__annotations__["evt"] = gr.SelectData  # a real class: the module uses postponed annotations
    r.gallery.select(on_select, inputs=[r.outcome], outputs=[r.infotext, r.selected], queue=False)

    def reuse(outcome: Any, index: Any) -> Any:
        seed = selected_seed(outcome, index)
        if seed is None:
            gr.Info("Generate an image first: ♻ reuses the seed of the selected image.")
            return gr.update()
        return seed

    c.widgets["reuse_seed"].click(reuse, inputs=[r.outcome, r.selected], outputs=[c.fields["seed"]], queue=False)

    def read(gallery: Any, index: Any, outcome: Any) -> tuple[Any, str]:
        return _selected_image(gallery, index), selected_infotext(outcome, index)

    inputs = [r.gallery, r.selected, r.outcome]
    page.send_button(r.send_to_img2img, "img2img", inputs, read)
    page.send_button(r.send_to_inpaint, "inpaint", inputs, read)
    if r.send_to_extras is not None:
        page.send_image_button(r.send_to_extras, "extras", inputs, read)
