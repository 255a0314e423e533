"""PNG Info tab: drop an image, read its generation parameters (ours or A1111's), send them to a tab.

The image arrives as the uploaded file itself (``type="filepath"``, ``image_mode=None``), so its
PNG text chunks and EXIF survive; ``read_infotext`` reads both. The file is opened here, as PNG,
JPEG or WebP only (``webui.security.images``, which the upload guard uses too): whatever else
reaches the tab (a text file, a broken image, another format) gets words ("not an image"), never a
server error, an exception name or a server path. Element ids: ``pnginfo_image``,
``pnginfo_text``, ``pnginfo_table``, ``pnginfo_message``, ``pnginfo_send_<tab>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from webui.backend import Backend

log = logging.getLogger(__name__)

SEND_TO = (("txt2img", "Send to txt2img"), ("img2img", "Send to img2img"), ("inpaint", "Send to inpaint"))
TABLE_HEADERS = ["parameter", "value"]
NO_PARAMETERS = "This image has no generation parameters (no PNG `parameters` text and no EXIF UserComment)."
NOT_AN_IMAGE = "Cannot read this file: this is not an image. Drop a PNG, JPEG or WebP image, e.g. one made by this app."


def parameter_rows(text: str) -> list[list[str]]:
    """The infotext as written, one (name, value) row each: prompt, negative prompt, then the rest."""
    from webui.outputs.infotext import split_infotext

    prompt, negative, params = split_infotext(text)
    rows = [["Prompt", prompt]]
    if negative:
        rows.append(["Negative prompt", negative])
    rows.extend([str(key), str(value)] for key, value in params.items())
    return rows


def _open(path: str | Path) -> Any:
    """The file as a PIL image, pixels not decoded yet, opened only as PNG, JPEG or WebP (raises otherwise)."""
    from webui.security.images import open_lazily

    return open_lazily(path)


def read_parameters(path: str | Path | None) -> tuple[str, list[list[str]], str]:
    """(infotext, table rows, message for the user) for the image at ``path``; never raises."""
    from webui.outputs.writer import read_infotext

    if not path:
        return "", [], ""
    try:
        with _open(path) as image:
            text = read_infotext(image)
    except Exception as exc:  # noqa: BLE001 - whatever was dropped, the page answers in words
        log.info("PNG Info: %s is not a readable image (%s)", Path(path).name, type(exc).__name__)
        return "", [], NOT_AN_IMAGE
    if not text:
        return "", [], NO_PARAMETERS
    return text, parameter_rows(text), ""


def open_image(path: str | Path | None) -> Any:
    """The image at ``path`` as a loaded PIL image (None without a path, or when it is not an image)."""
    from webui.security.images import open_image as open_checked

    if not path:
        return None
    try:
        return open_checked(path)  # PNG/JPEG/WebP only, pixel count checked before decoding
    except Exception:  # noqa: BLE001 - read_parameters already told the user
        return None


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column():
            image = gr.Image(
                label="Source",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                elem_id="pnginfo_image",
            )
        with gr.Column():
            message = gr.Markdown(elem_id="pnginfo_message")
            text = gr.Textbox(label="Parameters", lines=6, interactive=False, buttons=["copy"], elem_id="pnginfo_text")
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="pnginfo_table")
            with gr.Row():
                buttons = {tab: gr.Button(title, elem_id=f"pnginfo_send_{tab}") for tab, title in SEND_TO}

    def show(path: str | None) -> tuple[str, Any, str]:
        infotext, rows, note = read_parameters(path)
        return infotext, rows or None, note

    image.change(show, inputs=image, outputs=[text, table, message], concurrency_limit=None, show_progress="hidden")
    page.send_button(buttons["txt2img"], "txt2img", [text], lambda infotext: (None, infotext))
    for tab in ("img2img", "inpaint"):
        page.send_button(buttons[tab], tab, [image, text], lambda path, infotext: (open_image(path), infotext))
