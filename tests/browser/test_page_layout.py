"""How the page looks in a real browser: the token counters sit in their prompt boxes, and the model
status stays one line with the load's tuning details folded away."""

from __future__ import annotations

from tests.browser.conftest import SD15
from tests.browser.helpers import expect, load_checkpoint, set_text

SDXL = "demo-sdxl-noise.safetensors"


def box(page, selector: str) -> dict:
    found = page.locator(selector).first
    expect(found).to_be_visible()
    return found.bounding_box()


def test_each_token_counter_sits_in_the_top_right_corner_of_its_prompt_box(page, screenshot_dir):
    set_text(page, "txt2img_prompt", "a lighthouse at dusk")
    expect(page.locator("#txt2img_token_counter")).to_contain_text("/75")
    for prompt, counter in (("txt2img_prompt", "txt2img_token_counter"), ("txt2img_neg_prompt", "txt2img_neg_token_counter")):
        frame, text, label = box(page, f"#{prompt}"), box(page, f"#{counter}"), box(page, f"#{prompt} [data-testid=block-info]")
        assert frame["y"] <= text["y"] and text["y"] + text["height"] <= frame["y"] + frame["height"], (frame, text)
        assert frame["x"] + frame["width"] - 40 <= text["x"] + text["width"] <= frame["x"] + frame["width"], (frame, text)
        assert abs((text["y"] + text["height"] / 2) - (label["y"] + label["height"] / 2)) < label["height"], (label, text)
    shot = screenshot_dir / "webui-txt2img-prompt-boxes.png"
    page.screenshot(path=str(shot), clip={**box(page, "#txt2img_toprow"), "height": 400})
    print(f"screenshot of the prompt boxes: {shot}")


def test_the_model_status_is_one_line_and_the_tuning_details_are_folded_away(page):
    load_checkpoint(page, SDXL)
    status = page.locator("#model-status")
    assert "\n" not in status.inner_text().strip()
    assert status.bounding_box()["height"] < 40
    details = page.locator("#model-details")
    expect(details).to_be_hidden()
    page.locator("#model-details-box").get_by_text("Model details").click()
    expect(details).to_contain_text("attention")
    load_checkpoint(page, SD15)
