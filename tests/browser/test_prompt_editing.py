"""Prompt editing and wildcards from the txt2img page: the infotext keeps the editing syntax with the chosen
wildcard, a seed chooses the same line again, and an edit past the last step gives the unedited image."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from tests.browser.helpers import JOB_TIMEOUT_MS, expect, saved_images, set_number, small_job, text_value
from webui.outputs.writer import read_infotext

COLORS = ("crimson", "teal", "amber")


def generate(page, app, prompt: str, seed: int) -> tuple[str, np.ndarray]:
    outputs = app.services.paths.outputs / "txt2img-images"
    before = saved_images(outputs)
    small_job(page, "txt2img", prompt, seed=seed)
    page.locator("#txt2img_generate").click()
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while not saved_images(outputs) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    new = saved_images(outputs) - before
    assert len(new) == 1, new
    path = new.pop()
    infotext = read_infotext(path)
    expect(text_value(page, "txt2img_infotext")).to_have_value(infotext, timeout=JOB_TIMEOUT_MS)  # the page shows it
    return infotext, np.asarray(Image.open(path).convert("RGB"))


def test_editing_and_wildcards_from_the_page(page, app):
    cards = app.root / "models" / "wildcards"
    cards.mkdir(parents=True, exist_ok=True)
    (cards / "bt_color.txt").write_text("\n".join(COLORS) + "\n")
    set_number(page, "txt2img_cfg_scale", 7)

    infotext, edited = generate(page, app, "a __bt_color__ [fox:cat:3]", seed=515)  # 3 steps: never switches
    first_line = infotext.split("\n")[0]
    chosen = first_line.removeprefix("a ").removesuffix(" [fox:cat:3]")
    assert chosen in COLORS, first_line
    again, repeated = generate(page, app, "a __bt_color__ [fox:cat:3]", seed=515)
    assert again == infotext and np.array_equal(repeated, edited)
    _, plain = generate(page, app, f"a {chosen} fox", seed=515)
    assert np.array_equal(plain, edited)  # the edit's text before the switch is exactly what was encoded
    _, switched = generate(page, app, f"a {chosen} [fox:cat:1]", seed=515)
    assert not np.array_equal(switched, plain)
