"""Mount the Gradio UI on the API app with the login, the file limits and the API's basic auth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.security.auth import gradio_auth_options, load_credentials, protect_api
from webui.security.files import gradio_file_options, protect_files
from webui.security.gradio_guard import GradioRequestGuard
from webui.security.site_guard import SitePolicy, protect_site
from webui.security.throttle import LoginThrottle, LoginThrottleMiddleware
from webui.security.uploads import UploadGuard, UploadStore

MAX_UPLOAD_REQUEST_BYTES = 256 * 1024 * 1024  # one request of the page's uploads (each file: MAX_UPLOAD_SIZE)

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


def mount_ui(api: Any, blocks: Any, services: Any, base: Path, policy: SitePolicy | None = None) -> Any:
    """``gr.mount_gradio_app(api, blocks, "/")`` made safe to expose; ``SettingsError`` for a bad auth file.

    ``base`` resolves a relative ``auth_file`` (the app's root, as for every other path setting);
    ``policy`` (default: from the settings) says which Host names and origins are served.
    Middleware, outermost first: Host and Origin (``SiteGuard``), CORS, uploads, Gradio's bodies and
    events, the login throttle, remote fetches, API credentials.
    """
    import gradio as gr
    from gradio.utils import get_upload_folder

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
    throttle = LoginThrottle()
    protect_api(app, credentials, throttle)
    protect_files(app)
    if credentials.ui:
        app.add_middleware(LoginThrottleMiddleware, throttle=throttle)
    upload_root = Path(get_upload_folder())
    app.add_middleware(GradioRequestGuard, blocks=blocks, upload_root=upload_root)
    store = UploadStore(upload_root)
    store.prune()  # uploads of earlier runs past their age
    app.add_middleware(UploadGuard, store=store, blocks=blocks, max_request_bytes=MAX_UPLOAD_REQUEST_BYTES)
    protect_site(app, policy or SitePolicy.from_settings(services.settings))
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
