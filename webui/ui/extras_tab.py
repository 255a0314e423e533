"""Extras tab: upscale one image, a batch of uploads, or a folder, with the upscalers of the models folder.

A1111's layout: "Single Image", "Batch Process" (uploaded files) and "Batch from Directory" (a folder
in, a folder out; both must lie inside the outputs folder), then "Scale by" / "Scale to" (with crop),
Upscaler 1, Upscaler 2 and its visibility. The job goes through the backend's queue like a
generation; Interrupt stops it between tiles. Results are saved to ``outputs/extras-images`` (or the
output folder). Element ids: ``extras_image``, ``extras_batch_files``, ``extras_input_dir``,
``extras_output_dir``, ``extras_resize_mode``, ``extras_upscaling_resize``, ``extras_upscaler_1``,
``extras_upscaler_2``, ``extras_upscaler_2_visibility``, ``extras_generate``, ``extras_interrupt``,
``extras_gallery``, ``extras_info``, ``extras_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from webui.backend import Backend

log = logging.getLogger(__name__)

MODES = ("Single Image", "Batch Process", "Batch from Directory")
RESIZE_CHOICES = ("Scale by", "Scale to")
WAIT_SECONDS = 0.5


def _open_uploads(files: Any) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    from pathlib import Path

    from webui.generation.requests import RequestError
    from webui.security.images import NotAnImage, open_image

    images, names = [], []
    for item in files or []:
        path = getattr(item, "name", None) or str(item)
        try:
            images.append(open_image(Path(path).read_bytes()))
        except NotAnImage:
            raise RequestError("files", f"{Path(path).name} is not an image; upload PNG, JPEG or WebP files") from None
        names.append(Path(path).name)
    return tuple(images), tuple(names)


def extras_request(backend: Backend, mode: str, values: dict[str, Any]) -> Any:
    """The ``ExtrasRequest`` for the tab's values (``RequestError`` for what it cannot use)."""
    from webui.generation.requests import RequestError
    from webui.upscale.extras import ExtrasRequest

    output_dir = ""
    if mode == MODES[1]:
        images, names = _open_uploads(values["files"])
    elif mode == MODES[2]:
        if not str(values["input_dir"] or "").strip():
            raise RequestError("input_dir", "give the folder of images to upscale (inside the outputs folder)")
        images, names = backend.extras_folder_images(values["input_dir"].strip())
        output_dir = str(values["output_dir"] or "").strip()
    else:
        images, names = ((values["image"],), ("",)) if values["image"] is not None else ((), ())
    return ExtrasRequest(
        images=images,
        names=names,
        resize_mode=RESIZE_CHOICES.index(values["resize_mode"]) if values["resize_mode"] in RESIZE_CHOICES else 0,
        upscaling_resize=float(values["upscaling_resize"] or 2),
        upscaling_resize_w=int(values["upscaling_resize_w"] or 512),
        upscaling_resize_h=int(values["upscaling_resize_h"] or 512),
        upscaling_crop=bool(values["upscaling_crop"]),
        upscaler_1=values["upscaler_1"] or "None",
        upscaler_2=values["upscaler_2"] or "None",
        extras_upscaler_2_visibility=float(values["extras_upscaler_2_visibility"] or 0),
        output_dir=output_dir,
    )


def run_extras(backend: Backend, mode: str, values: dict[str, Any]) -> Iterator[tuple[Any, str, str, str]]:
    """(gallery, info, error, job id) updates while the job runs; errors are words in the error box."""
    import gradio as gr

    from webui.generation.requests import RequestError

    try:
        job = backend.submit_extras(extras_request(backend, mode, values), source="ui")
    except RequestError as exc:
        yield gr.update(), "", f"{exc.field}: {exc.message}", ""
        return
    except Exception as exc:
        log.exception("extras: the job could not be queued")
        yield gr.update(), "", f"The upscale could not start: {exc}", ""
        return
    yield gr.update(), "Waiting in the queue ...", "", job.id
    while not (job := backend.wait(job.id, WAIT_SECONDS)).finished:
        p = job.progress
        yield gr.update(), f"{p.textinfo} (tile {p.step} of {p.steps})" if p.steps else p.textinfo, "", job.id
    result = job.result
    images = list(result.images) if result is not None else []
    info = (result.info.get("html_info", "") if result is not None else "") or ""
    error = job.error if job.state == "failed" else ("Interrupted." if job.state == "interrupted" else "")
    yield images, info, error, ""


def _upscaler_names(backend: Backend) -> list[str]:
    try:
        return [u.name for u in backend.upscalers()]
    except Exception:
        log.exception("extras: listing the upscalers failed")
        return ["None", "Lanczos", "Nearest"]


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    names = _upscaler_names(backend)
    with gr.Row():
        with gr.Column():
            with gr.Tabs(elem_id="extras_mode_tabs"):
                with gr.Tab(MODES[0], id="single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="pil", image_mode="RGB", elem_id="extras_image", height=360)
                with gr.Tab(MODES[1], id="batch", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(label="Images", file_count="multiple", elem_id="extras_batch_files")
                with gr.Tab(MODES[2], id="folder", elem_id="extras_folder_tab") as folder_tab:
                    input_dir = gr.Textbox(label="Input folder (inside outputs/)", elem_id="extras_input_dir")
                    output_dir = gr.Textbox(
                        label="Output folder (inside outputs/; empty: outputs/extras-images)",
                        elem_id="extras_output_dir",
                    )
            mode = gr.State(MODES[0])
            for tab, name in ((single_tab, MODES[0]), (batch_tab, MODES[1]), (folder_tab, MODES[2])):
                tab.select(lambda n=name: n, outputs=[mode], queue=False)
            resize_mode = gr.Radio(list(RESIZE_CHOICES), value="Scale by", label="Resize", elem_id="extras_resize_mode")
            upscaling_resize = gr.Slider(1, 8, 2, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
            with gr.Row():
                width = gr.Number(512, label="Width", precision=0, elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, label="Height", precision=0, elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
            upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
            visibility = gr.Slider(
                0, 1, 0, step=0.001, label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility"
            )
            refresh = gr.Button("Refresh upscalers", size="sm", elem_id="extras_refresh")
        with gr.Column():
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                interrupt = gr.Button("Interrupt", elem_id="extras_interrupt")
            error = gr.Markdown("", elem_id="extras_error")
            gallery = gr.Gallery(
                label="Result", columns=2, height=512, format="png", interactive=False, elem_id="extras_gallery"
            )
            info = gr.Textbox(label="Info", interactive=False, elem_id="extras_info")
    job = gr.State("")
    keys = ("image", "files", "input_dir", "output_dir", "resize_mode", "upscaling_resize")
    keys += ("upscaling_resize_w", "upscaling_resize_h", "upscaling_crop", "upscaler_1", "upscaler_2")
    keys += ("extras_upscaler_2_visibility",)
    inputs = [image, files, input_dir, output_dir, resize_mode, upscaling_resize, width, height, crop]
    inputs += [upscaler_1, upscaler_2, visibility]

    def go(chosen: str, *values: Any) -> Iterator[tuple[Any, str, str, str]]:
        yield from run_extras(backend, chosen, dict(zip(keys, values)))

    generate.click(go, inputs=[mode, *inputs], outputs=[gallery, info, error, job])

    def stop(job_id: str) -> None:
        if job_id:
            backend.interrupt(job_id)

    interrupt.click(stop, inputs=[job], queue=False)

    def refreshed() -> list[Any]:
        choices = [u.name for u in backend.upscalers(refresh=True)]
        return [gr.update(choices=choices), gr.update(choices=choices)]

    refresh.click(refreshed, outputs=[upscaler_1, upscaler_2], queue=False)
    page.image_targets["extras"] = image
