"""PNG Info in a real browser: drop an image, see its parameters, send them (and the image) to a tab."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from tests.browser.conftest import SD15
from tests.browser.helpers import JOB_TIMEOUT_MS, choose, expect, open_tab, text_value, upload, wait_for_result
from webui.generation.requests import GenerationRequest
from webui.outputs.writer import encode_image

A1111_INFOTEXT = (
    "masterpiece, a castle on a hill\n"
    "Negative prompt: lowres\n"
    "Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 3141592, "
    "Size: 64x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def generated_png(app) -> tuple[str, str]:
    """(path, infotext) of an image our app made."""
    request = GenerationRequest(
        prompt="a lighthouse at dusk",
        negative_prompt="fog",
        steps=4,
        seed=77,
        width=64,
        height=64,
        sd_model_checkpoint=SD15,
    )
    job = app.services.generation.submit(request, source="test")
    assert job.wait(JOB_TIMEOUT_MS / 1000) and job.state == "done", job.error
    return job.result.paths[0], job.result.infotexts[0]


def test_round_trip_from_our_png_to_txt2img(page, app):
    path, infotext = generated_png(app)
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", path)
    expect(text_value(page, "pnginfo_text")).to_have_value(infotext)
    table = page.locator("#pnginfo_table")
    expect(table).to_contain_text("a lighthouse at dusk")
    expect(table).to_contain_text("77")
    page.locator("#pnginfo_send_txt2img").click()
    expect(page.get_by_role("tab", name="txt2img", exact=True)).to_have_attribute("aria-selected", "true")
    expect(text_value(page, "txt2img_prompt")).to_have_value("a lighthouse at dusk")
    expect(text_value(page, "txt2img_neg_prompt")).to_have_value("fog")
    expect(page.locator("#txt2img_seed input[type=number]")).to_have_value("77")
    expect(page.locator("#txt2img_steps input[type=number]")).to_have_value("4")


def test_a1111_jpeg_parameters_and_image_go_to_img2img_and_inpaint(page, tmp_path):
    path = tmp_path / "a1111.jpg"
    path.write_bytes(encode_image(Image.new("RGB", (64, 64), (200, 40, 40)), A1111_INFOTEXT, "jpg"))
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", path)
    expect(text_value(page, "pnginfo_text")).to_have_value(A1111_INFOTEXT)
    expect(page.locator("#pnginfo_table")).to_contain_text("v1-5-pruned-emaonly")

    page.locator("#pnginfo_send_img2img").click()
    expect(page.get_by_role("tab", name="img2img", exact=True)).to_have_attribute("aria-selected", "true")
    expect(text_value(page, "img2img_prompt")).to_have_value("masterpiece, a castle on a hill")
    expect(page.locator("#img2img_seed input[type=number]")).to_have_value("3141592")
    expect(page.locator("#img2img_cfg_scale input[type=number]")).to_have_value("6.5")
    expect(page.locator("#img2img_image img")).to_be_visible()

    open_tab(page, "PNG Info")
    page.locator("#pnginfo_send_inpaint").click()
    expect(page.get_by_role("tab", name="Inpaint", exact=True)).to_have_attribute("aria-selected", "true")
    expect(text_value(page, "inpaint_prompt")).to_have_value("masterpiece, a castle on a hill")
    expect(page.locator("#inpaint_editor canvas").first).to_be_visible()


def test_an_image_without_parameters_says_so(page, tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(path)
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", path)
    expect(page.locator("#pnginfo_message")).to_contain_text(re.compile("no generation parameters"))


EXPONENTIAL = (
    "a tin robot\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Exponential, CFG scale: 5, Seed: 4321, Size: 64x64"
)


def test_send_to_txt2img_sets_the_pasted_schedule_type_and_generate_uses_it(page, tmp_path):
    path = tmp_path / "exponential.png"
    path.write_bytes(encode_image(Image.new("RGB", (64, 64), (40, 90, 200)), EXPONENTIAL, "png"))
    choose(page, "txt2img_sampler", "Euler a")
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", path)
    expect(text_value(page, "pnginfo_text")).to_have_value(EXPONENTIAL)
    page.locator("#pnginfo_send_txt2img").click()
    expect(page.locator("#txt2img_sampler input")).to_have_value("DPM++ 2M")
    expect(page.locator("#txt2img_scheduler input")).to_have_value("Exponential")
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 4321)
    assert "Sampler: DPM++ 2M" in infotext and "Schedule type: Exponential" in infotext, infotext


NOT_IMAGES = {
    "notes.png": b"these are my prompts, not an image\n",  # named .txt, the page itself refuses it
    "broken.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # a PNG signature, then nothing a PNG has
}


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_a_file_that_is_not_an_image_says_so_in_words(page, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_IMAGES[name])
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", path)
    # The tab's message, or the upload guard's notice when the upload is refused before it reaches the tab.
    expect(page.locator("body")).to_contain_text(re.compile(r"not (an|a readable [\w ,]+) image", re.IGNORECASE))
    body = page.locator("body").inner_text()
    assert "cache/gradio" not in body and str(tmp_path) not in body and "Traceback" not in body
