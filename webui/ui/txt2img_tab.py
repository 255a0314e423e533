"""txt2img tab: the shared generation controls (with hires fix) and the runner; nothing of its own."""

from __future__ import annotations

from typing import Any

from webui.backend import Backend


def build(backend: Backend, page: Any) -> None:
    from webui.control.ui import section_for, with_units
    from webui.ui.controls import build_controls, request_from_values
    from webui.ui.page import PasteTarget
    from webui.ui.runner import attach_runner
    from webui.xyz.ui import with_xyz, xyz_section

    controls = build_controls(backend, page, "txt2img", sections=[section_for(backend), xyz_section(backend)])
    to_request = with_xyz(with_units(lambda values: request_from_values("txt2img", values)))
    attach_runner(backend, page, controls, to_request=to_request)
    page.register_paste_target(PasteTarget("txt2img", controls))
