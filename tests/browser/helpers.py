"""Small verbs for driving the page: pick a tab or checkpoint, fill controls, generate, wait.

Element ids are the ones ``webui.ui.controls`` documents (``<task>_prompt``, ``<task>_generate``
...). Every wait is Playwright's auto-waiting with the context's generous default timeout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def expect(target: Any) -> Any:
    """Playwright's ``expect``, imported on use so that the folder collects (and skips) without it."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


SIZE = 64  # the demo models make a 64x64 image in a fraction of a second
JOB_TIMEOUT_MS = 120_000


def open_tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def choose(page: Any, elem_id: str, option: str) -> None:
    """Pick ``option`` (its visible text, or the start of it) in the dropdown ``elem_id``."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=re.compile("^" + re.escape(option))).first.click()


def dropdown_options(page: Any, elem_id: str) -> list[str]:
    """The options the dropdown offers (opens it, reads them, closes it)."""
    page.locator(f"#{elem_id} input").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    texts = [text.replace("✓", "").strip() for text in options.all_inner_texts()]
    page.keyboard.press("Escape")
    return texts


def load_checkpoint(page: Any, name: str) -> None:
    """Switch the model bar to ``name`` and wait until the page says it is loaded."""
    choose(page, "checkpoint", name)
    expect(page.locator("#model-status")).to_contain_text(f"Loaded {name}", timeout=JOB_TIMEOUT_MS)


def set_text(page: Any, elem_id: str, text: str) -> None:
    """A textbox (one line: an input; several: a textarea)."""
    page.locator(f"#{elem_id}").locator("textarea, input[type=text]").first.fill(text)


def text_value(page: Any, elem_id: str) -> Any:
    """The locator of a textbox's editable element, for ``expect(...).to_have_value``."""
    return page.locator(f"#{elem_id}").locator("textarea, input[type=text]").first


def upload(page: Any, elem_id: str, path: Path) -> None:
    """Drop a file on an image component (its hidden file input)."""
    page.locator(f"#{elem_id} input[type=file]").first.set_input_files(str(path))


def set_number(page: Any, elem_id: str, value: float) -> None:
    """A number box or a slider's number box: type the value and leave the box so it is applied."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")
    expect(box).to_have_value(str(value))


def small_job(page: Any, task: str, prompt: str, seed: int, steps: int = 3) -> None:
    """Fill the controls of ``task`` for a quick 64x64 job (does not press Generate)."""
    set_text(page, f"{task}_prompt", prompt)
    set_number(page, f"{task}_width", SIZE)
    set_number(page, f"{task}_height", SIZE)
    set_number(page, f"{task}_steps", steps)
    set_number(page, f"{task}_seed", seed)


def gallery_images(page: Any, task: str) -> Any:
    return page.locator(f"#{task}_gallery img")


def wait_for_result(page: Any, task: str, seed: int) -> str:
    """Wait until the gallery shows an image and the infotext names ``seed``; return the infotext."""
    expect(gallery_images(page, task).first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    infotext = text_value(page, f"{task}_infotext")
    expect(infotext).to_have_value(re.compile(rf"Seed: {seed}\b"), timeout=JOB_TIMEOUT_MS)
    return infotext.input_value()


def saved_images(folder: Path) -> set[Path]:
    return set(folder.rglob("*.png")) if folder.exists() else set()
