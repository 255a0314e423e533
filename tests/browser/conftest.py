"""The real app in-process on tiny demo models of each family, driven by Debian's chromium.

Session fixtures: ``app`` (base URL + the app's services), ``browser`` (headless chromium through
Playwright's sync API); per test: ``page`` (a fresh browser context with the UI loaded). The whole
folder is skipped, with the reason, when playwright or /usr/bin/chromium is missing locally; CI
(``.ci/run``) installs both.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import expect

CHROMIUM = Path(os.environ.get("WEBUI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Jobs are tiny, but a shared CI machine with 2 cores can be slow: wait generously, never sleep.
TIMEOUT_MS = 90_000
VIEWPORT = {"width": 1400, "height": 1000}
SD15 = "demo-sd15-noise.safetensors"
SD3 = "demo-sd3-noise.safetensors"


def _missing() -> str:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright; CI installs it)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    return ""


def pytest_configure(config: pytest.Config) -> None:
    # gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix, and noisy.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:gradio.queueing")
    config.addinivalue_line("filterwarnings", "ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(autouse=True, scope="session")
def _need_browser() -> None:
    reason = _missing()
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")


TEST_EXTENSION = "browser-test-extension"
_EXTENSION_FILES = {
    "extension.toml": f'name = "{TEST_EXTENSION}"\nversion = "1.0"\ndescription = "A setting, nothing else."\n',
    "__init__.py": (
        "from webui.hooks import SettingSpec, hookimpl\n\n\n"
        "@hookimpl\n"
        "def webui_settings():\n"
        '    return [SettingSpec("browser_test_level", 3, "Browser test level", section="Browser test")]\n'
    ),
}


def write_test_extension(extensions_dir: Path) -> None:
    """An extension with one setting and no job hooks (it changes no image)."""
    folder = extensions_dir / TEST_EXTENSION
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in _EXTENSION_FILES.items():
        (folder / name).write_text(text, encoding="utf-8")


@dataclass
class App:
    url: str
    services: Any
    root: Path


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory, _need_browser: None) -> Iterator[App]:
    """The composed app (API + Gradio UI) on a free port over demo sd15, sdxl and sd3 checkpoints."""
    from tests.app_services import tmp_services
    from tests.browser.server import serve_app
    from webui.app import build_server
    from webui.models.demo import demo_checkpoint_name, write_demo_models

    root = tmp_path_factory.mktemp("browser-app")
    write_demo_models(root / "models", ("sd15", "sdxl", "sd3"))
    write_test_extension(root / "ext")  # tmp_services puts the extensions folder there
    services = tmp_services(root, preview_every=1, default_model=demo_checkpoint_name("sd15"))
    server_app = build_server(services)
    services.generation.start()
    try:
        with serve_app(server_app) as url:
            yield App(url, services, root)
    finally:
        services.generation.stop()


@pytest.fixture(scope="session")
def browser(_need_browser: None) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def ensure_model(app: App, name: str) -> None:
    """Make ``name`` the loaded checkpoint (through the backend, on the generation worker, as the model bar does)."""
    backend = app.services.backend
    loaded = backend.loaded()
    if loaded is None or loaded.name != name:
        backend.load_model(name, timeout=TIMEOUT_MS / 1000, source="test load")


def open_page(browser: Any, app: App, model: str = SD15) -> Any:
    """A new browser context (its own Gradio session) showing the UI with ``model`` loaded.

    The model is loaded before the page opens, so the page's first sync (checkpoint box, family
    defaults) is the only one: once the checkpoint box shows the model, the controls are settled
    and a test can fill them without a late reset racing it.
    """
    ensure_model(app, model)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(app.url + "/")
    expect(page.locator("#checkpoint input")).to_have_value(re.compile("^" + re.escape(model)))
    return page


@pytest.fixture
def page(browser: Any, app: App) -> Iterator[Any]:
    """The UI in a fresh browser context, SD 1.5 demo loaded."""
    page = open_page(browser, app)
    try:
        yield page
    finally:
        page.context.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    folder = Path(os.environ.get("WEBUI_SCREENSHOT_DIR") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder
