"""txt2img in a real browser: generate, gallery + infotext + file, family switch, interrupt, two pages."""

from __future__ import annotations

import re

from tests.browser.conftest import SD3, SD15, open_page
from tests.browser.helpers import (
    JOB_TIMEOUT_MS,
    choose,
    dropdown_options,
    expect,
    gallery_images,
    load_checkpoint,
    saved_images,
    set_number,
    set_text,
    small_job,
    wait_for_result,
)
from webui.outputs.writer import read_infotext


def test_generate_shows_the_image_and_saves_it_with_its_infotext(page, app, screenshot_dir):
    outputs = app.services.paths.outputs / "txt2img-images"
    before = saved_images(outputs)
    small_job(page, "txt2img", "a red fox in the snow", seed=1234)
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 1234)
    assert infotext.startswith("a red fox in the snow") and "Size: 64x64" in infotext and "Steps: 3" in infotext
    new = saved_images(outputs) - before
    assert len(new) == 1, new
    saved = read_infotext(new.pop())
    assert saved == infotext
    shot = screenshot_dir / "webui-txt2img-after-generate.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of txt2img after a generation: {shot}")

    # Ctrl+Enter in the prompt box generates too (A1111's habit)
    set_number(page, "txt2img_seed", 1235)
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    wait_for_result(page, "txt2img", 1235)
    assert len(saved_images(outputs) - before) == 2


def test_switching_to_sd3_offers_its_samplers(page, app):
    sd15_samplers = dropdown_options(page, "txt2img_sampler")
    load_checkpoint(page, SD3)
    expect(page.locator("#txt2img_width input[type=number]")).to_have_value("512")  # the user's size stays
    expect(page.locator("#txt2img_sd3_options")).to_be_visible()
    sd3_samplers = dropdown_options(page, "txt2img_sampler")
    family = app.services.families.get("sd3")
    assert sd3_samplers == app.services.samplers.samplers_for(family, "txt2img")
    assert sd3_samplers != sd15_samplers and "Euler a" in sd15_samplers and "Euler a" not in sd3_samplers


def test_interrupt_stops_a_long_job_and_keeps_what_was_made(page, app):
    outputs = app.services.paths.outputs / "txt2img-images"
    before = saved_images(outputs)
    small_job(page, "txt2img", "a very long job", seed=42, steps=150)
    set_number(page, "txt2img_batch_count", 100)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    expect(progress).to_contain_text(re.compile(r"Step \d+/15000"), timeout=JOB_TIMEOUT_MS)
    expect(progress).to_contain_text("ETA")
    page.locator("#txt2img_interrupt").click()
    expect(page.locator("#txt2img_error")).to_contain_text("Interrupted", timeout=JOB_TIMEOUT_MS)
    kept = len(saved_images(outputs) - before)
    assert kept < 100
    # the finished images, plus the batch being sampled as its latest estimate (shown, not saved: A1111)
    expect(gallery_images(page, "txt2img")).to_have_count(kept + 1, timeout=JOB_TIMEOUT_MS)


def test_two_pages_generating_at_once_each_get_their_own_images(browser, app):
    first, second = open_page(browser, app), open_page(browser, app)
    try:
        jobs = ((first, "page one: a lighthouse", 111), (second, "page two: a teapot", 222))
        for page, prompt, seed in jobs:
            small_job(page, "txt2img", prompt, seed=seed, steps=20)
            set_number(page, "txt2img_batch_count", 3)
        for page, _, _ in jobs:
            page.locator("#txt2img_generate").click()
        for page, prompt, seed in jobs:
            infotext = wait_for_result(page, "txt2img", seed)
            assert infotext.startswith(prompt)
            expect(gallery_images(page, "txt2img")).to_have_count(3, timeout=JOB_TIMEOUT_MS)
    finally:
        first.context.close()
        second.context.close()


SDXL = "demo-sdxl-noise.safetensors"
USER_VALUES = {"txt2img_steps": "33", "txt2img_cfg_scale": "4.5", "txt2img_width": "640", "txt2img_height": "448"}


def expect_user_values(page) -> None:
    for elem_id, value in USER_VALUES.items():
        expect(page.locator(f"#{elem_id} input[type=number]")).to_have_value(value)


def test_switching_checkpoint_keeps_the_users_values_and_says_what_the_new_family_cannot_use(page, app):
    for elem_id, value in USER_VALUES.items():
        set_number(page, elem_id, float(value) if "." in value else int(value))
    choose(page, "txt2img_sampler", "UniPC")
    load_checkpoint(page, SDXL)
    expect_user_values(page)
    expect(page.locator("#txt2img_sampler input")).to_have_value("UniPC")
    load_checkpoint(page, SD15)
    expect_user_values(page)
    expect(page.locator("#txt2img_sampler input")).to_have_value("UniPC")

    table, families = app.services.samplers, app.services.families
    sd3, offered = families.get("sd3"), table.samplers_for(families.get("sd15"), "txt2img")
    lacking = next(n for n in offered if n not in table.samplers_for(sd3, "txt2img"))
    choose(page, "txt2img_sampler", lacking)  # e.g. Euler a: SD3 has no ancestral samplers
    load_checkpoint(page, SD3)
    expect_user_values(page)
    expect(page.locator("#txt2img_sampler input")).to_have_value(table.default_sampler(sd3))
    expect(page.locator("#txt2img_error")).to_contain_text(lacking)


def pasted(page, text: str) -> None:
    set_text(page, "txt2img_prompt", text)
    page.locator("#txt2img_paste").click()


def test_read_parameters_sets_the_schedule_type_of_the_pasted_sampler_and_generate_uses_it(page, app):
    choose(page, "txt2img_sampler", "Euler a")
    pasted(page, "a paper boat\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Exponential, Seed: 31, Size: 64x64")
    expect(page.locator("#txt2img_sampler input")).to_have_value("DPM++ 2M")
    expect(page.locator("#txt2img_scheduler input")).to_have_value("Exponential")
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 31)
    assert "Sampler: DPM++ 2M" in infotext and "Schedule type: Exponential" in infotext, infotext

    pasted(page, "a paper boat\nSteps: 3, Sampler: Euler a, Schedule type: Karras, Seed: 32, Size: 64x64")
    expect(page.locator("#txt2img_sampler input")).to_have_value("Euler a")
    family = app.services.families.get("sd15")
    if "Karras" in app.services.samplers.schedules_for(family, "Euler a"):
        expect(page.locator("#txt2img_scheduler input")).to_have_value("Karras")
    else:  # a pair the sampler table refuses: changed, and the page says so (never silently)
        expect(page.locator("#txt2img_error")).to_contain_text("Karras")
