"""The tiny control model writers live in ``webui.control.demo`` (the app offers them as demo models); this module
keeps the name the brief gave them for tests."""

from webui.control.demo import (  # noqa: F401
    CLIP_VISION,
    tiny_clip_vision,
    tiny_controlnet,
    tiny_ip_adapter_state,
    tiny_t2i_adapter,
    write_demo_control_models,
    write_tiny_clip_vision,
    write_tiny_controlnet,
    write_tiny_ip_adapter,
    write_tiny_t2i_adapter,
)
