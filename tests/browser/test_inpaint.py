"""img2img and Inpaint in a real browser: upload an image, paint a mask with the mouse, generate."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.browser.helpers import (
    expect,
    open_tab,
    saved_images,
    set_number,
    small_job,
    upload,
    wait_for_result,
)

COLOR = (120, 160, 200)


def init_image(tmp_path: Path) -> Path:
    path = tmp_path / "init.png"
    Image.new("RGB", (64, 64), COLOR).save(path)
    return path


def paint_stroke_at_center(page, elem_id: str) -> None:
    """Drag the brush over the middle of the editor's canvas (the image is centred in it)."""
    canvas = page.locator(f"#{elem_id} canvas").first
    expect(canvas).to_be_visible()
    canvas.scroll_into_view_if_needed()  # the mouse only reaches what is inside the viewport
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 10, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x - 10 + 2 * step, y)
    page.mouse.up()


def test_img2img_generates_from_the_uploaded_image(page, app, tmp_path):
    outputs = app.services.paths.outputs / "img2img-images"
    before = saved_images(outputs)
    open_tab(page, "img2img")
    upload(page, "img2img_image", init_image(tmp_path))
    expect(page.locator("#img2img_image img")).to_be_visible()
    small_job(page, "img2img", "a watercolor of a boat", seed=5, steps=4)
    set_number(page, "img2img_denoising_strength", 0.5)
    page.locator("#img2img_generate").click()
    infotext = wait_for_result(page, "img2img", 5)
    assert "Denoising strength: 0.5" in infotext
    assert len(saved_images(outputs) - before) == 1


def test_inpaint_repaints_only_where_the_brush_went(page, app, tmp_path):
    outputs = app.services.paths.outputs / "img2img-images"
    before = saved_images(outputs)
    open_tab(page, "Inpaint")
    page.locator("#inpaint_generate").click()  # nothing uploaded yet: the page says what to do
    expect(page.locator("#inpaint_error")).to_contain_text("upload the image")
    upload(page, "inpaint_editor", init_image(tmp_path))
    page.locator("#inpaint_generate").click()  # nothing painted yet
    expect(page.locator("#inpaint_error")).to_contain_text("paint over the area")
    paint_stroke_at_center(page, "inpaint_editor")
    small_job(page, "inpaint", "a red hat", seed=9, steps=4)
    set_number(page, "inpaint_mask_blur", 2)
    page.locator("#inpaint_inpainting_fill").get_by_label("latent noise").check()
    page.locator("#inpaint_generate").click()
    infotext = wait_for_result(page, "inpaint", 9)
    assert "Mask blur: 2" in infotext and "Masked content: latent noise" in infotext
    new = saved_images(outputs) - before
    assert len(new) == 1
    with Image.open(new.pop()) as result:
        pixels = result.convert("RGB")
        assert pixels.size == (64, 64)
        for corner in ((0, 0), (63, 0), (0, 63), (63, 63)):
            assert pixels.getpixel(corner) == COLOR, corner  # outside the mask: the original
        assert pixels.getpixel((32, 32)) != COLOR  # under the brush: repainted
