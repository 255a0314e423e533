"""img2img's "SD upscale" accordion in a real browser: the uploaded image comes back upscaled and redrawn."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.browser.helpers import expect, open_tab, saved_images, set_number, small_job, upload, wait_for_result
from webui.outputs.writer import read_infotext


def test_sd_upscale_from_the_img2img_tab(page, app, tmp_path):
    path = tmp_path / "small.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), "RGB").save(path)
    outputs = app.services.paths.outputs / "img2img-images"
    before = saved_images(outputs)
    open_tab(page, "img2img")
    upload(page, "img2img_image", path)
    expect(page.locator("#img2img_image img")).to_be_visible()
    small_job(page, "img2img", "a watercolor of a boat", seed=7, steps=4)
    page.locator("#img2img_sd_upscale").get_by_text("SD upscale", exact=True).first.click()
    page.locator("#img2img_sd_upscale_enabled input[type=checkbox]").check()
    set_number(page, "img2img_sd_upscale_overlap", 16)
    page.locator("#img2img_generate").click()
    infotext = wait_for_result(page, "img2img", 7)
    assert "SD upscale overlap: 16" in infotext and "SD upscale upscaler: Lanczos" in infotext
    new = saved_images(outputs) - before
    assert len(new) == 1, new
    saved = new.pop()
    assert Image.open(saved).size == (96, 96)  # 48 x 2, from 64 x 64 tiles
    assert "SD upscale upscaler: Lanczos" in read_infotext(saved)
