"""The ControlNet section in a real browser: in the three generation tabs, a preview of the processed
control image, a generation with a unit (its infotext names ControlNet 0), and PNG Info restoring the unit."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from tests.browser.helpers import (
    JOB_TIMEOUT_MS,
    choose,
    expect,
    open_tab,
    small_job,
    upload,
    wait_for_result,
)
from webui.outputs.writer import encode_image


def shapes(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 30, 30), fill="white")
    draw.ellipse((34, 30, 58, 56), fill=(200, 200, 200))
    return image


@pytest.fixture(scope="module")
def control_image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("control") / "shapes.png"
    shapes().save(path)
    return str(path)


@pytest.fixture(scope="module")
def control_model(app) -> str:
    """A tiny SD 1.5 ControlNet in the session app's models folder; its ``name [hash8]`` title."""
    from tests.control_models import write_tiny_controlnet
    from webui.control.api import model_list

    folder = app.root / "models" / "ControlNet"
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_controlnet(folder, "sd15")
    titles = model_list(app.services.backend, update=True)
    assert titles, "the tiny ControlNet is not listed"
    return titles[0]


def open_unit(page, task: str, index: int = 0) -> None:
    section = page.locator(f"#{task}_controlnet")
    tab = section.get_by_role("tab", name=f"ControlNet Unit {index}")
    if not tab.is_visible():  # the accordion is closed
        section.get_by_text("ControlNet", exact=True).first.click()
    tab.click()
    expect(page.locator(f"#{task}_controlnet_{index}_enabled")).to_be_visible()


TABS = (("txt2img", "txt2img"), ("img2img", "img2img"), ("inpaint", "Inpaint"))


def test_the_section_is_in_the_three_generation_tabs(page):
    for task, title in TABS:
        open_tab(page, title)
        expect(page.locator(f"#{task}_controlnet")).to_be_visible()
        open_unit(page, task)
        for name in ("image", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode"):
            expect(page.locator(f"#{task}_controlnet_0_{name}")).to_be_visible()
        expect(page.locator(f"#{task}_controlnet").get_by_role("tab", name="ControlNet Unit 2")).to_be_visible()


def test_preview_shows_the_processed_control_image(page, control_image, screenshot_dir):
    open_unit(page, "txt2img")
    upload(page, "txt2img_controlnet_0_image", control_image)
    expect(page.locator("#txt2img_controlnet_0_image img")).to_be_visible()
    choose(page, "txt2img_controlnet_0_module", "canny")
    expect(page.locator("#txt2img_controlnet_0_threshold_a")).to_be_visible()  # canny's sliders appear
    expect(page.locator("#txt2img_controlnet_0_threshold_a")).to_contain_text("Low Threshold")
    page.locator("#txt2img_controlnet_0_preview").click()
    expect(page.locator("#txt2img_controlnet_0_processed img")).to_be_visible()
    expect(page.locator("#txt2img_controlnet_0_message")).to_have_text("")
    shot = screenshot_dir / "webui-txt2img-controlnet-preview.png"
    page.locator("#txt2img_controlnet").screenshot(path=str(shot))
    print(f"screenshot of the ControlNet section after a preview: {shot}")


def test_generating_with_a_unit_names_controlnet_0_in_the_infotext(page, control_image, control_model):
    open_unit(page, "txt2img")
    page.locator("#txt2img_controlnet_0_enabled input").check()
    choose(page, "txt2img_controlnet_0_module", "canny")
    page.locator("#txt2img_controlnet_0_refresh").click()  # the model was added after the page was built
    choose(page, "txt2img_controlnet_0_model", control_model.rsplit(" [", 1)[0])
    small_job(page, "txt2img", "a house", seed=4242)
    page.locator("#txt2img_generate").click()  # no control image yet: refused in words
    expect(page.locator("#txt2img_error")).to_contain_text("no image", timeout=JOB_TIMEOUT_MS)
    print("error box without a control image:", page.locator("#txt2img_error").inner_text())
    upload(page, "txt2img_controlnet_0_image", control_image)
    expect(page.locator("#txt2img_controlnet_0_image img")).to_be_visible()
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 4242)
    assert "ControlNet 0" in infotext and "Module: canny" in infotext, infotext
    assert control_model.rsplit(" [", 1)[0] in infotext, infotext


def test_png_info_send_to_txt2img_restores_the_unit(page, control_model, tmp_path):
    text = (
        "a house\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 99, Size: 64x64, "
        f'ControlNet 0: "Module: canny, Model: {control_model}, Weight: 0.55, Resize Mode: Just Resize, '
        "Processor Res: 256, Threshold A: 80, Threshold B: 160, Guidance Start: 0.1, Guidance End: 0.9, "
        'Pixel Perfect: False, Control Mode: My prompt is more important"'
    )
    path = tmp_path / "with-controlnet.png"
    path.write_bytes(encode_image(shapes(), text, "png"))
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", path)
    expect(page.locator("#pnginfo_table")).to_contain_text("ControlNet 0")
    page.locator("#pnginfo_send_txt2img").click()
    expect(page.get_by_role("tab", name="txt2img", exact=True)).to_have_attribute("aria-selected", "true")
    open_unit(page, "txt2img")
    expect(page.locator("#txt2img_controlnet_0_enabled input")).to_be_checked()
    expect(page.locator("#txt2img_controlnet_0_module input")).to_have_value("canny")
    expect(page.locator("#txt2img_controlnet_0_model input")).to_have_value(control_model)
    expect(page.locator("#txt2img_controlnet_0_weight input[type=number]")).to_have_value("0.55")
    expect(page.locator("#txt2img_controlnet_0_threshold_a input[type=number]")).to_have_value("80")
    expect(page.locator("#txt2img_controlnet_0_guidance_end input[type=number]")).to_have_value("0.9")
    expect(page.locator("#txt2img_controlnet_0_resize_mode input[value='Just Resize']")).to_be_checked()
    expect(
        page.locator("#txt2img_controlnet_0_control_mode input[value='My prompt is more important']")
    ).to_be_checked()
    open_unit(page, "txt2img", 1)  # the units not in the infotext are off
    expect(page.locator("#txt2img_controlnet_1_enabled input")).not_to_be_checked()
