"""Outputs tab: past images from the outputs folder, newest first, by folder and date, a page at a time.

Everything goes through the backend (``list_outputs``, ``output_info``, ``output_image``,
``output_thumbnail``, ``trash_output``). The page holds the ids of the images it shows in a
``gr.State`` (kept on the server); a click on the gallery sends only an index into that list, and
the backend checks each id again before it reads or moves a file. Thumbnails and the selected
image reach the browser as PIL images, copied into Gradio's own cache like every generated image:
no route serves the outputs folder. The folder path is shown as text to copy (the server may be
remote: nothing opens a file manager). "Delete" asks first, then moves the image (and its sidecar
``.txt``) to ``outputs/.trash/<today>/``.

Element ids: ``outputs_folder``, ``outputs_date``, ``outputs_refresh``, ``outputs_prev``,
``outputs_next``, ``outputs_page``, ``outputs_page_info``, ``outputs_gallery``, ``outputs_image``,
``outputs_name``, ``outputs_infotext``, ``outputs_table``, ``outputs_folder_path``,
``outputs_message``, ``outputs_send_<tab>``, ``outputs_send_extras``, ``outputs_delete``,
``outputs_trash_confirm``, ``outputs_trash_cancel``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from webui.backend import Backend, BackendError, OutputInfo, OutputPage

log = logging.getLogger(__name__)

TAB_LABEL = "Outputs"
PER_PAGE = 36
ALL_DATES = ("All dates", "")
SEND_TO = (("txt2img", "Send to txt2img"), ("img2img", "Send to img2img"), ("inpaint", "Send to inpaint"))
EMPTY = "No images here yet: generate one, or choose another folder or date."


def page_text(listing: OutputPage) -> str:
    if not listing.total:
        return EMPTY
    first = (listing.page - 1) * listing.per_page + 1
    last = first + len(listing.entries) - 1
    return f"Page {listing.page} of {listing.pages}: images {first}-{last} of {listing.total}"


def gallery_items(backend: Backend, listing: OutputPage) -> list[tuple[Any, str]]:
    """(thumbnail, caption) of each entry; an entry whose thumbnail cannot be made is left out (logged)."""
    items = []
    for entry in listing.entries:
        try:
            items.append((backend.output_thumbnail(entry.id), entry.name))
        except BackendError as exc:
            log.info("outputs: no thumbnail for %s: %s", entry.id, exc)
    return items


def info_line(info: OutputInfo) -> str:
    when = datetime.fromtimestamp(info.mtime).strftime("%Y-%m-%d %H:%M:%S")
    size = f"{info.width}x{info.height}, " if info.width else ""
    return f"**{info.name}** ({size}{info.size / 1024:.0f} KiB, {when})"


def show_entry(backend: Backend, output_id: str | None) -> tuple[Any, str, str, list[list[str]] | None, str, str]:
    """(image, info line, infotext, table rows, folder path, message) of one image; never raises."""
    from webui.ui.png_info_tab import NO_PARAMETERS, parameter_rows

    if not output_id:
        return None, "", "", None, "", ""
    try:
        info = backend.output_info(output_id)
        image = backend.output_image(output_id)
    except BackendError as exc:
        return None, "", "", None, "", str(exc)
    rows = parameter_rows(info.infotext) if info.infotext else None
    return image, info_line(info), info.infotext, rows, info.folder_path, "" if info.infotext else NO_PARAMETERS


def read_for_send(backend: Backend, output_id: str | None, infotext: str) -> tuple[Any, str]:
    """(image, infotext) for ``page.send_button``: the image as the backend reads it again."""
    if not output_id:
        return None, infotext or ""
    try:
        return backend.output_image(output_id), infotext or ""
    except BackendError:
        return None, infotext or ""


def wire_send_to_extras(page: Any, button: Any, selected: Any, backend: Backend) -> None:
    """"Send to Extras": the selected image goes to the Extras tab's input (only the image: Extras has no
    generation fields)."""
    page.send_image_button(button, "extras", [selected], lambda output_id: read_for_send(backend, output_id, ""))


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    first = backend.list_outputs(1, "all", "", PER_PAGE)
    with gr.Row():
        folder = gr.Dropdown(choices=list(first.folders), value="all", label="Folder", elem_id="outputs_folder")
        date = gr.Dropdown(choices=[ALL_DATES], value="", label="Date", elem_id="outputs_date")
        number = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="outputs_page")
        with gr.Column(min_width=160):
            refresh = gr.Button("Refresh", elem_id="outputs_refresh")
            with gr.Row():
                prev_button = gr.Button("◀ Newer", elem_id="outputs_prev", size="sm")
                next_button = gr.Button("Older ▶", elem_id="outputs_next", size="sm")
    info = gr.Markdown(elem_id="outputs_page_info")
    ids = gr.State([])
    selected = gr.State("")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Images",
                columns=6,
                fit_columns=False,  # a few images stay thumbnails, not one per row
                height=640,
                allow_preview=False,
                object_fit="cover",
                interactive=False,
                elem_id="outputs_gallery",
            )
        with gr.Column(scale=2):
            image = gr.Image(label="Image", type="pil", interactive=False, height=384, elem_id="outputs_image")
            name = gr.Markdown(elem_id="outputs_name")
            message = gr.Markdown(elem_id="outputs_message")
            text = gr.Textbox(
                label="Parameters", lines=5, interactive=False, buttons=["copy"], elem_id="outputs_infotext"
            )
            table = gr.Dataframe(headers=["parameter", "value"], interactive=False, wrap=True, elem_id="outputs_table")
            path = gr.Textbox(
                label="Folder on the server", interactive=False, buttons=["copy"], elem_id="outputs_folder_path"
            )
            with gr.Row():
                sends = {tab: gr.Button(title, elem_id=f"outputs_send_{tab}") for tab, title in SEND_TO}
                extras = gr.Button("Send to Extras", elem_id="outputs_send_extras")
            delete = gr.Button("Delete", variant="stop", elem_id="outputs_delete")
            with gr.Row(visible=False) as confirm_row:
                confirm_text = gr.Markdown()
                confirm = gr.Button("Move to trash", variant="stop", elem_id="outputs_trash_confirm")
                cancel = gr.Button("Cancel", elem_id="outputs_trash_cancel")

    listing_outputs = [gallery, ids, info, date, number]
    detail_outputs = [image, name, text, table, path, message]

    def listing(page_no: Any, folder_key: str, day: str) -> list[Any]:
        try:
            found = backend.list_outputs(int(page_no or 1), folder_key or "all", day or "", PER_PAGE)
        except BackendError as exc:
            return [[], [], str(exc), gr.update(), gr.update()]
        dates = [ALL_DATES, *((d, d) for d in found.dates)]
        day = day if day in found.dates else ""
        return [
            gallery_items(backend, found),
            [e.id for e in found.entries],
            page_text(found),
            gr.update(choices=dates, value=day),
            found.page,
        ]

    def step(delta: int) -> Any:
        def move(page_no: Any, folder_key: str, day: str) -> list[Any]:
            return listing(max(1, int(page_no or 1) + delta), folder_key, day)

        return move

    def pick(shown: list[str], evt: gr.SelectData) -> list[Any]:
        index = evt.index if isinstance(evt.index, int) else -1
        output_id = shown[index] if 0 <= index < len(shown) else ""
        return [output_id, *show_entry(backend, output_id), gr.update(visible=False)]

    pick.__annotations__["evt"] = gr.SelectData  # a real class: the module uses postponed annotations

    def ask(output_id: str, shown_name: str) -> list[Any]:
        if not output_id:
            return [gr.update(visible=False), "", "Pick an image first."]
        return [gr.update(visible=True), f"Move {shown_name or 'this image'} to the trash (outputs/.trash)?", ""]

    def trash(output_id: str, page_no: Any, folder_key: str, day: str) -> list[Any]:
        try:
            done = backend.trash_output(output_id)
            note = f"Moved to {done.moved_to[0]}" + (" (with its .txt)" if len(done.moved_to) > 1 else "")
        except BackendError as exc:
            note = str(exc)
        return [*listing(page_no, folder_key, day), "", None, "", "", None, "", note, gr.update(visible=False)]

    inputs = [number, folder, date]
    refresh.click(listing, inputs=inputs, outputs=listing_outputs, show_progress="hidden")
    prev_button.click(step(-1), inputs=inputs, outputs=listing_outputs, show_progress="hidden")
    next_button.click(step(1), inputs=inputs, outputs=listing_outputs, show_progress="hidden")
    number.submit(listing, inputs=inputs, outputs=listing_outputs, show_progress="hidden")

    def first_page(folder_key: str, day: str) -> list[Any]:
        return listing(1, folder_key, day)

    folder.input(first_page, inputs=[folder, date], outputs=listing_outputs, show_progress="hidden")
    date.input(first_page, inputs=[folder, date], outputs=listing_outputs, show_progress="hidden")
    gallery.select(pick, inputs=[ids], outputs=[selected, *detail_outputs, confirm_row], show_progress="hidden")
    delete.click(ask, inputs=[selected, name], outputs=[confirm_row, confirm_text, message], show_progress="hidden")
    cancel.click(lambda: gr.update(visible=False), outputs=confirm_row, show_progress="hidden")
    confirm.click(
        trash,
        inputs=[selected, *inputs],
        outputs=[*listing_outputs, selected, *detail_outputs, confirm_row],
        show_progress="hidden",
    )
    page.send_button(sends["txt2img"], "txt2img", [text], lambda infotext: (None, infotext or ""))
    for tab in ("img2img", "inpaint"):
        page.send_button(
            sends[tab], tab, [selected, text], lambda output_id, infotext: read_for_send(backend, output_id, infotext)
        )
    wire_send_to_extras(page, extras, selected, backend)
    page.on_load(listing, inputs=inputs, outputs=listing_outputs)

    def on_tab(page_no: Any, folder_key: str, day: str, evt: gr.SelectData) -> list[Any]:
        if evt.value != TAB_LABEL:
            return [gr.skip() for _ in listing_outputs]
        return listing(page_no, folder_key, day)

    on_tab.__annotations__["evt"] = gr.SelectData
    page.after_build(
        lambda: (
            page.tabs.select(on_tab, inputs=inputs, outputs=listing_outputs, show_progress="hidden")
            if page.tabs is not None
            else None
        )
    )
