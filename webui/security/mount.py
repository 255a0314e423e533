"""Mount the Gradio UI on the API app with the login, the file limits and the API's basic auth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.security.auth import gradio_auth_options, load_credentials, protect_api
from webui.security.files import gradio_file_options, protect_files

# Gradio features that talk to the Hugging Face Hub or open extra routes on a caller's say-so: off.
# (run history stores runs in a Hub bucket with a token the caller sends; MCP exposes every event as a tool.)
# The footer's "Use via API" page documents Gradio's event API, which the app does not offer (its API
# is /sdapi/v1, documented at /docs).
CLOSED_FEATURES = {
    "run_history": False,
    "mcp_server": False,
    "enable_monitoring": False,
    "footer_links": ["gradio", "settings"],
}


def mount_ui(api: Any, blocks: Any, services: Any, base: Path) -> Any:
    """``gr.mount_gradio_app(api, blocks, "/")`` made safe to expose; ``SettingsError`` for a bad auth file.

    ``base`` resolves a relative ``auth_file`` (the app's root, as for every other path setting).
    """
    import gradio as gr

    credentials = load_credentials(services.settings, base)
    hide_event_api(blocks)
    app = gr.mount_gradio_app(
        api,
        blocks,
        path="/",
        **gradio_auth_options(credentials),
        **gradio_file_options(services.paths, services.settings, base),
        **CLOSED_FEATURES,
    )
    # Gradio checks that a file named in an event's input was uploaded (is in its upload folder) only
    # when ``has_launched`` is set, which ``launch()`` does and ``mount_gradio_app`` does not: without
    # this, any event with an image input copies any file the server can read (``{"path": "/etc/passwd"}``)
    # into the upload folder, from where ``/gradio_api/file=`` serves it.
    blocks.has_launched = True
    protect_api(app, credentials)
    protect_files(app)
    return app


def hide_event_api(blocks: Any) -> None:
    """Leave the UI's events out of Gradio's API description.

    Gradio 6 embeds that description (every event with its inputs, including the dropdowns' choices:
    the checkpoint and LoRA names) in the page at ``/``, which it serves before the login. "private"
    only hides an event from the description and from Gradio's client libraries; the page itself
    calls events by index and works as before.
    """
    for fn in blocks.fns.values():
        fn.api_visibility = "private"
