"""The Outputs tab in a real browser: a generated image is listed, shown with its infotext, sent to
txt2img, and moved to the trash."""

from __future__ import annotations

from pathlib import Path

from tests.browser.conftest import SD15
from tests.browser.helpers import JOB_TIMEOUT_MS, expect, open_tab, text_value
from webui.generation.requests import GenerationRequest


def _generate(app) -> tuple[Path, str]:
    request = GenerationRequest(
        prompt="a paper boat on a pond",
        negative_prompt="rain",
        steps=3,
        seed=9911,
        width=64,
        height=64,
        sd_model_checkpoint=SD15,
    )
    job = app.services.generation.submit(request, source="test")
    assert job.wait(JOB_TIMEOUT_MS / 1000) and job.state == "done", job.error
    return Path(job.result.paths[0]), job.result.infotexts[0]


def test_open_the_tab_see_the_image_send_it_to_txt2img_and_delete_it(page, app):
    path, infotext = _generate(app)
    open_tab(page, "Outputs")
    page.locator("#outputs_refresh").click()  # the tab lists on selection too; the button makes it certain
    expect(page.locator("#outputs_page_info")).to_contain_text("Page 1 of")
    gallery = page.locator("#outputs_gallery")
    expect(gallery.get_by_text(path.name)).to_be_visible()  # newest first: its caption is on page 1
    gallery.locator("button.thumbnail-item, .thumbnail-item").first.click()
    expect(text_value(page, "outputs_infotext")).to_have_value(infotext)
    expect(page.locator("#outputs_name")).to_contain_text(path.name)
    expect(text_value(page, "outputs_folder_path")).to_have_value(str(path.parent))
    expect(page.locator("#outputs_image img")).to_be_visible()

    page.locator("#outputs_send_txt2img").click()
    expect(page.get_by_role("tab", name="txt2img", exact=True)).to_have_attribute("aria-selected", "true")
    expect(text_value(page, "txt2img_prompt")).to_have_value("a paper boat on a pond")
    expect(text_value(page, "txt2img_neg_prompt")).to_have_value("rain")
    expect(page.locator("#txt2img_seed input[type=number]")).to_have_value("9911")

    open_tab(page, "Outputs")
    page.locator("#outputs_send_extras").click()  # the image goes to the Extras tab's source
    expect(page.get_by_role("tab", name="Extras", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_image img")).to_be_visible()

    open_tab(page, "Outputs")
    page.locator("#outputs_delete").click()
    expect(page.locator("#outputs_trash_confirm")).to_be_visible()
    assert path.exists()  # nothing moves before the confirmation
    page.locator("#outputs_trash_confirm").click()
    expect(page.locator("#outputs_message")).to_contain_text("Moved to")
    expect(gallery.get_by_text(path.name)).to_have_count(0)
    assert not path.exists()
    trashed = list((app.services.writer.root / ".trash").rglob(path.name))
    assert len(trashed) == 1 and trashed[0].stat().st_size > 0
