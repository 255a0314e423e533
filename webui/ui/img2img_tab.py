"""img2img tab: an init image, resize mode and denoising strength, then the shared controls and runner.

The image is ``init_image`` (a request field, ``gr.Image(type="pil")``), so the controls' request
builder takes it as is. Element id of the image: ``img2img_image``; the rest as in ``controls``.
"""

from __future__ import annotations

from typing import Any

from webui.backend import Backend


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    from webui.control.ui import section_for, with_units
    from webui.ui.controls import build_controls, request_from_values
    from webui.ui.page import PasteTarget
    from webui.ui.runner import attach_runner
    from webui.ui.sd_upscale_section import section_for as sd_upscale_section
    from webui.ui.sd_upscale_section import with_sd_upscale
    from webui.xyz.ui import with_xyz, xyz_section

    def image_input() -> dict[str, Any]:
        image = gr.Image(
            label="Image for img2img",
            type="pil",
            image_mode="RGB",
            sources=["upload", "clipboard"],
            height=360,
            elem_id="img2img_image",
        )
        return {"init_image": image}

    sections = [section_for(backend), sd_upscale_section(backend), xyz_section(backend)]
    controls = build_controls(backend, page, "img2img", inputs_slot=image_input, sections=sections)
    to_request = with_xyz(with_sd_upscale(with_units(lambda values: request_from_values("img2img", values))))
    attach_runner(backend, page, controls, to_request=to_request)
    page.register_paste_target(PasteTarget("img2img", controls, image=controls.extra["init_image"]))
