"""Inpaint tab: paint the mask with a brush over the image (or upload one), then the shared controls.

The editor (``gr.ImageEditor``, ``type="pil"``, RGBA) gives ``{"background", "layers", "composite"}``:
the background is the image, every painted pixel of any layer (alpha > 0) is part of the mask.
An uploaded mask (white = repaint) replaces the painted one. ``image_and_mask`` turns both into
the request's ``init_image`` and ``mask``. Element ids: ``inpaint_editor``, ``inpaint_mask_upload``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.backend import Backend
from webui.generation.requests import GenerationRequest, RequestError

BRUSH_COLOR = "#000000"
EDITOR_KEY = "inpaint_editor"
MASK_UPLOAD_KEY = "inpaint_mask_upload"
NO_IMAGE = "upload the image to inpaint into the editor first"
NO_MASK = "paint over the area to repaint with the brush, or upload a mask (white = repaint)"


def _editor_part(value: Any, key: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(key)
    return value if key in ("background", "composite") else None  # a bare image: no layers


def painted_mask(layers: list[Any], size: tuple[int, int]) -> Any:
    """An ``L`` mask of ``size``: 255 wherever any layer has paint (alpha > 0), else 0."""
    from PIL import Image, ImageChops

    mask = Image.new("L", size, 0)
    for layer in layers or []:
        if layer is None:
            continue
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha.point(lambda v: 255 if v > 0 else 0))
    return mask


def _flatten(image: Any) -> Any:
    """RGB, transparent areas on white (as the editor shows them)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def image_and_mask(editor_value: Any, uploaded_mask: Any = None, allow_empty: bool = False) -> tuple[Any, Any]:
    """(init image RGB, mask L with white = repaint) from the editor's value and an optional uploaded mask.

    Raises ``RequestError`` (``init_image`` / ``mask``) when there is no image, or when nothing is
    painted and ``allow_empty`` is False ("Inpaint not masked" with no paint repaints everything).
    """
    background = _editor_part(editor_value, "background")
    if background is None:
        background = _editor_part(editor_value, "composite")
    if background is None:
        raise RequestError("init_image", NO_IMAGE)
    image = _flatten(background)
    if uploaded_mask is not None:
        return image, uploaded_mask.convert("L")
    mask = painted_mask(_editor_part(editor_value, "layers") or [], image.size)
    if mask.getbbox() is None and not allow_empty:
        raise RequestError("mask", NO_MASK)
    return image, mask


def editor_value(image: Any) -> dict[str, Any]:
    """The editor's value showing ``image`` with nothing painted (for "Send to inpaint")."""
    return {"background": image, "layers": [], "composite": image}


def request_from_inpaint_values(values: Mapping[str, Any]) -> GenerationRequest:
    """The inpaint request from the controls' values plus the editor and uploaded mask."""
    from webui.ui.controls import MASK_MODE_LABELS, request_from_values

    fields = {k: v for k, v in values.items() if k not in (EDITOR_KEY, MASK_UPLOAD_KEY)}
    inverted = fields.get("inpainting_mask_invert") in (1, MASK_MODE_LABELS[1])
    image, mask = image_and_mask(values.get(EDITOR_KEY), values.get(MASK_UPLOAD_KEY), allow_empty=inverted)
    return request_from_values("inpaint", {**fields, "init_image": image, "mask": mask})


def _inputs() -> dict[str, Any]:
    import gradio as gr

    editor = gr.ImageEditor(
        label="Image: paint the area to repaint",
        type="pil",
        image_mode="RGBA",
        sources=["upload", "clipboard"],
        brush=gr.Brush(colors=[BRUSH_COLOR], color_mode="fixed"),
        eraser=gr.Eraser(),
        layers=False,
        transforms=(),
        height=420,
        elem_id=EDITOR_KEY,
    )
    with gr.Accordion("Upload a mask instead (white = repaint)", open=False):
        mask = gr.Image(
            label="Mask", type="pil", image_mode="L", sources=["upload", "clipboard"], elem_id=MASK_UPLOAD_KEY
        )
    return {EDITOR_KEY: editor, MASK_UPLOAD_KEY: mask}


def build(backend: Backend, page: Any) -> None:
    from webui.control.ui import section_for, with_units
    from webui.ui.controls import build_controls
    from webui.ui.page import PasteTarget
    from webui.ui.runner import attach_runner

    controls = build_controls(backend, page, "inpaint", inputs_slot=_inputs, sections=[section_for(backend)])
    attach_runner(backend, page, controls, to_request=with_units(request_from_inpaint_values))
    page.register_paste_target(
        PasteTarget("inpaint", controls, image=controls.extra[EDITOR_KEY], image_value=editor_value)
    )
