"""The Textual Inversion panel in a real browser: it lists the embeddings for the loaded model, a click adds
the name to the prompt, and the generated image's infotext has its TI hash."""

from __future__ import annotations

import re

from tests.browser.helpers import expect, open_tab, small_job, text_value, wait_for_result
from tests.test_embeddings import write_a1111_pt, write_sdxl


def test_the_embedding_panel_adds_a_usable_name_to_the_prompt_and_the_job_uses_it(page, app):
    folder = app.root / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    write_a1111_pt(folder / "pagestyle.pt")
    write_sdxl(folder / "pagexl.safetensors")

    open_tab(page, "txt2img")
    page.locator("#txt2img_embeddings").get_by_role("button", name=re.compile("^Textual Inversion")).first.click()
    page.locator("#txt2img_embedding_refresh").click()
    table = page.locator("#txt2img_embedding_table")
    row = table.get_by_text("pagestyle", exact=True).filter(visible=True).first
    expect(row).to_be_visible()
    expect(table).to_contain_text("an SDXL embedding")  # the other family's file, with the reason it is skipped
    small_job(page, "txt2img", "a lighthouse", seed=909)
    row.click()
    expect(text_value(page, "txt2img_prompt")).to_have_value("a lighthouse pagestyle")
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 909)
    assert 'TI hashes: "pagestyle: ' in infotext, infotext
