"""The Models tab in a real browser: "Create demo models" shows its work and makes a LoRA per family,
which the LoRA panel offers and a generation uses."""

from __future__ import annotations

import re

from tests.browser.helpers import JOB_TIMEOUT_MS, expect, open_tab, small_job, text_value, wait_for_result

# Every text the message box shows, kept by the page (the first ones last only while a model is built).
RECORD_MESSAGES = """() => {
  const box = document.getElementById('models_message');
  window.__modelsMessages = [];
  new MutationObserver(() => window.__modelsMessages.push(box.innerText))
    .observe(box, {subtree: true, childList: true, characterData: true});
}"""


def test_create_demo_models_shows_progress_and_makes_a_lora_the_lora_panel_offers(page, app):
    open_tab(page, "Models")
    message = page.locator("#models_message")
    expect(message).to_be_attached()
    page.evaluate(RECORD_MESSAGES)
    page.locator("#create-demo").click()
    expect(message).to_contain_text("Demo models ready", timeout=JOB_TIMEOUT_MS)
    seen = page.evaluate("() => window.__modelsMessages")
    assert any("Creating the demo models: SD 1.5 (1 of 3)" in text for text in seen), seen
    expect(page.locator("#model-table")).to_contain_text("demo-sd3-lora.safetensors")

    open_tab(page, "txt2img")
    page.locator("#txt2img_lora").get_by_role("button", name=re.compile("^LoRA")).first.click()
    page.locator("#txt2img_lora_refresh").click()
    row = page.locator("#txt2img_lora_table").get_by_text("demo-sd15-lora", exact=True).filter(visible=True).first
    expect(row).to_be_visible()
    small_job(page, "txt2img", "a lighthouse", seed=808)
    row.click()
    expect(text_value(page, "txt2img_prompt")).to_have_value("a lighthouse <lora:demo-sd15-lora:1>")
    page.locator("#txt2img_generate").click()
    infotext = wait_for_result(page, "txt2img", 808)
    assert 'Lora hashes: "demo-sd15-lora: ' in infotext, infotext
