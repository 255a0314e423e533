"""Prompt styles on the page: an A1111 styles.csv in the app's folder, picked at Generate, applied to the
prompt boxes, the prompt saved as a new style, and picked again from a pasted infotext."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.browser.helpers import choose, expect, set_text, small_job, text_value, wait_for_result
from webui.generation.styles import read_styles

SAMPLE = Path(__file__).parent.parent / "fixtures" / "styles_a1111.csv"


def test_styles_apply_at_generate_into_the_boxes_and_save(page, app):
    path = app.services.paths.styles_file(app.services.settings)
    shutil.copy(SAMPLE, path)  # copied in while the app runs: ↻ reads it again
    page.locator("#txt2img_styles_refresh").click()
    small_job(page, "txt2img", "a red fox", seed=4321)
    choose(page, "txt2img_styles", "Sharp")
    page.keyboard.press("Escape")
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 4321)
    assert infotext.startswith("a red fox, sharper focus\nNegative prompt: blurrier")  # styled, as A1111 writes
    expect(text_value(page, "txt2img_prompt")).to_have_value("a red fox")  # the box keeps what was typed

    page.locator("#txt2img_styles_apply").click()
    expect(text_value(page, "txt2img_prompt")).to_have_value("a red fox, sharper focus")
    expect(text_value(page, "txt2img_neg_prompt")).to_have_value("blurrier")

    set_text(page, "txt2img_style_name", "Fox, sharp")
    page.locator("#txt2img_style_save").click()
    expect(page.locator("#txt2img_style_status")).to_contain_text("Saved style")
    saved = {s.name: s for s in read_styles(path)}
    assert (
        saved["Fox, sharp"].prompt == "a red fox, sharper focus" and saved["Fox, sharp"].negative_prompt == "blurrier"
    )
    assert len(saved) == len(read_styles(SAMPLE)) + 1  # every other style is still there
    choose(page, "txt2img_styles", "Fox, sharp")  # offered at once
    page.keyboard.press("Escape")

    # ↙ with the infotext in the prompt box: the style is picked again and taken off the prompts (A1111's default)
    set_text(page, "txt2img_prompt", infotext)
    page.locator("#txt2img_paste").click()
    expect(text_value(page, "txt2img_prompt")).to_have_value("a red fox")
    expect(text_value(page, "txt2img_neg_prompt")).to_have_value("")
    expect(page.locator("#txt2img_styles")).to_contain_text("Sharp")
    expect(page.locator("#txt2img_styles")).not_to_contain_text("Fox, sharp")
