"""The Settings tab in a real browser: a wrong value is marked next to its setting, a good one applies
at once (the next image uses it) and is saved, server settings wait for a restart, reset restores."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import TEST_EXTENSION
from tests.browser.helpers import (
    choose,
    expect,
    open_tab,
    saved_images,
    set_number,
    set_text,
    small_job,
    text_value,
    wait_for_result,
)


@pytest.fixture
def restore_settings(app):
    """Put the app's settings back as the session started them, whatever the test left."""
    from webui.ui import settings_apply

    before = settings_apply.current_values(app.services.backend)
    yield
    settings_apply.save_settings(app.services.backend, before)


def apply(page) -> None:
    page.locator("#settings_submit").click()


def test_settings_apply_live_persist_and_reset(page, app, restore_settings):
    config = app.services.paths.config_file
    open_tab(page, "Settings")
    set_text(page, "setting_filename_pattern", "[seed]-[colour]")
    apply(page)
    expect(page.locator("#setting_filename_pattern_error")).to_contain_text("[colour] is not a token")
    expect(page.locator("#settings_result")).to_contain_text("Nothing was saved")
    assert app.services.writer.filename_pattern == "[seed]"

    set_text(page, "setting_filename_pattern", "[seed]-[prompt_words]")
    page.locator("#setting_vae_precision").get_by_label("fp32").check()  # the port is not on the page any more
    apply(page)
    result = page.locator("#settings_result")
    expect(result).to_contain_text("Applied now: Image file name pattern")
    expect(result).to_contain_text("Applied after a restart: VAE decode precision")
    expect(page.locator("#setting_filename_pattern_error")).to_be_hidden()
    saved = json.loads(config.read_text())
    assert saved["filename_pattern"] == "[seed]-[prompt_words]" and saved["vae_precision"] == "fp32"

    outputs = app.services.paths.outputs / "txt2img-images"
    before = saved_images(outputs)
    open_tab(page, "txt2img")
    small_job(page, "txt2img", "blue whale", seed=4242)
    page.locator("#txt2img_generate").click()
    wait_for_result(page, "txt2img", 4242)
    (path,) = saved_images(outputs) - before
    assert path.name.endswith("-4242-blue whale.png"), path.name

    open_tab(page, "Settings")
    page.locator("#settings_reset").click()
    expect(page.locator("#settings_result")).to_contain_text("Defaults restored")
    expect(text_value(page, "setting_filename_pattern")).to_have_value("[seed]")
    expect(page.locator("#setting_vae_precision").get_by_label("auto")).to_be_checked()
    assert app.services.writer.filename_pattern == "[seed]"
    assert "filename_pattern" not in json.loads(config.read_text())


def test_extensions_tab_lists_switches_and_the_settings_tab_shows_extension_settings(page, app, restore_settings):
    open_tab(page, "Extensions")
    table = page.locator("#extensions_table")
    expect(table).to_contain_text(TEST_EXTENSION)
    expect(table).to_contain_text("webui_settings")
    (app.services.paths.extensions / "added-later").mkdir(exist_ok=True)
    page.locator("#extensions_rescan").click()
    expect(table).to_contain_text("new: loads at the next start")

    choose(page, "extensions_name", TEST_EXTENSION)
    page.locator("#extensions_disable").click()
    expect(page.locator("#extensions_message")).to_contain_text(f"{TEST_EXTENSION} is off")
    assert app.services.extensions.get(TEST_EXTENSION).status == "disabled"
    page.locator("#extensions_enable").click()
    expect(page.locator("#extensions_message")).to_contain_text(f"{TEST_EXTENSION} is on")
    assert app.services.extensions.get(TEST_EXTENSION).status == "ok"

    open_tab(page, "Settings")
    set_number(page, "setting_browser_test_level", 7)
    apply(page)
    expect(page.locator("#settings_result")).to_contain_text("Applied now: Browser test level")
    assert app.services.extensions.options["browser_test_level"] == 7


def test_a_reload_shows_the_saved_settings_and_apply_saves_only_what_was_changed(page, app, restore_settings):
    from webui.ui import settings_apply

    config = app.services.paths.config_file
    preview = page.locator("#setting_preview_every input[type=number]")
    open_tab(page, "Settings")
    set_number(page, "setting_preview_every", 3)
    apply(page)
    expect(page.locator("#settings_result")).to_contain_text("Applied now: Live preview every N sampling steps")

    page.reload()
    open_tab(page, "Settings")
    expect(preview).to_have_value("3")  # the saved value, not the one of start-up
    # While the page is open, another client (an API call, another tab) changes another setting.
    settings_apply.save_settings(app.services.backend, {"samples_format": "webp"})
    set_text(page, "setting_filename_pattern", "[seed]-[steps]")
    apply(page)
    result = page.locator("#settings_result")
    expect(result).to_contain_text("Applied now: Image file name pattern.")
    expect(result).not_to_contain_text("File format")
    saved = json.loads(config.read_text())
    assert (saved["preview_every"], saved["samples_format"], saved["filename_pattern"]) == (3, "webp", "[seed]-[steps]")
    assert app.services.settings.samples_format == "webp"
    expect(page.locator("#setting_samples_format input[value=webp]")).to_be_checked()  # the page shows it now


def test_the_memory_line_shows_the_ram_cache_as_it_is_now(page, app, restore_settings):
    memory = page.locator("#settings_memory")
    open_tab(page, "Settings")
    set_number(page, "setting_ram_cache_models", 2)
    set_number(page, "setting_ram_cache_gib", 6)
    apply(page)
    expect(memory).to_contain_text("of at most 2 model(s)")  # Apply refreshes it: the new bounds apply at once
    expect(memory).to_contain_text("of 6.00 GiB")
    manager = app.services.manager
    manager.load("demo-sdxl-noise.safetensors")
    manager.load("demo-sd15-noise.safetensors")  # sdxl parked in the RAM cache
    page.reload()
    open_tab(page, "Settings")
    expect(memory).to_contain_text("active: demo-sd15-noise.safetensors (")
    expect(memory).to_contain_text("1 of at most 2 model(s)")
    expect(memory).to_contain_text("demo-sdxl-noise.safetensors (")
