"""The Extras tab in a real browser: a txt2img image sent to Extras and upscaled with a tiny model."""

from __future__ import annotations

import re

from PIL import Image

from tests.browser.helpers import JOB_TIMEOUT_MS, choose, expect, saved_images, small_job, text_value, wait_for_result
from tests.upscaler_files import compact_state, save_safetensors
from webui.outputs.writer import read_infotext

MODEL = "2x_browser_compact"


def test_send_to_extras_and_upscale_with_a_model(page, app):
    save_safetensors(compact_state(scale=2), app.services.paths.models / "ESRGAN" / f"{MODEL}.safetensors")
    outputs = app.services.paths.outputs / "extras-images"
    before = saved_images(outputs)
    small_job(page, "txt2img", "a small house", seed=808)
    page.locator("#txt2img_generate").click()
    wait_for_result(page, "txt2img", 808)
    page.locator("#txt2img_send_to_extras").click()
    expect(page.get_by_role("tab", name="Extras", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_image img")).to_be_visible()

    page.locator("#extras_refresh").click()
    choose(page, "extras_upscaler_1", MODEL)
    page.locator("#extras_generate").click()
    expect(page.locator("#extras_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(text_value(page, "extras_info")).to_have_value(
        re.compile(rf"Postprocess upscale by: 2, Postprocess upscaler: {MODEL}"), timeout=JOB_TIMEOUT_MS
    )
    new = saved_images(outputs) - before
    assert len(new) == 1, new
    path = new.pop()
    assert Image.open(path).size == (128, 128)
    assert read_infotext(path).endswith(f"Postprocess upscale by: 2, Postprocess upscaler: {MODEL}")
