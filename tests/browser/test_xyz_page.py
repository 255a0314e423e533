"""The X/Y/Z plot from the txt2img page: choose the script, an axis of steps and one of samplers (a dropdown),
generate; the grid is saved in txt2img-grids with its Script fields and the gallery shows it first, then the cells."""

from __future__ import annotations

import re
import time

from tests.browser.helpers import JOB_TIMEOUT_MS, choose, expect, gallery_images, saved_images, set_text, small_job
from webui.outputs.writer import read_infotext


def pick(page, elem_id: str, option: str) -> None:
    """A dropdown option by its exact text (``choose`` builds a regex that Playwright reads "/" in)."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).first.click()


def test_xyz_plot_from_the_page(page, app):
    grids = app.services.paths.outputs / "txt2img-grids"
    before = saved_images(grids)
    small_job(page, "txt2img", "a small boat", seed=77, steps=2)
    expect(page.locator("#txt2img_xyz_x_type")).to_be_hidden()
    pick(page, "txt2img_script", "X/Y/Z plot")
    expect(page.locator("#txt2img_xyz_x_type")).to_be_visible()
    choose(page, "txt2img_xyz_x_type", "Steps")
    set_text(page, "txt2img_xyz_x_values", "1-2")
    choose(page, "txt2img_xyz_y_type", "Sampler")
    expect(page.locator("#txt2img_xyz_y_dropdown")).to_be_visible()
    for name in ("UniPC", "DDIM"):  # typed, so the list is short and still while the option is clicked
        box = page.locator("#txt2img_xyz_y_dropdown input")
        box.click()
        box.fill(name)
        expect(page.get_by_role("option", name=name, exact=True).first).to_be_visible()
        box.press("Enter")  # the first option the typed text matches
        page.keyboard.press("Escape")
        expect(page.locator("#txt2img_xyz_y_dropdown")).to_contain_text(name)
    page.locator("#txt2img_generate").click()
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while not saved_images(grids) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    new = saved_images(grids) - before
    assert len(new) == 1, new
    text = read_infotext(new.pop())
    assert re.search(r'X Type: Steps, X Values: "1,2", Y Type: Sampler, Y Values: "UniPC,DDIM"', text), text
    expect(gallery_images(page, "txt2img")).to_have_count(1 + 4, timeout=JOB_TIMEOUT_MS)
    infotext = page.locator("#txt2img_infotext").locator("textarea, input[type=text]").first
    expect(infotext).to_have_value(re.compile("Script: X/Y/Z plot"), timeout=JOB_TIMEOUT_MS)
