"""The Queue tab: a long job runs, two wait; the page lists them with owner, position and ETA, cancels one and
runs the other next, and shows the cancelled one under the session's finished jobs."""

from __future__ import annotations

from tests.browser.helpers import choose, expect, open_tab
from webui.generation.requests import GenerationRequest


def test_the_queue_tab_lists_jobs_and_cancels_a_waiting_one(page, app):
    backend = app.services.backend
    long_job = GenerationRequest(prompt="a long job", width=64, height=64, steps=150, n_iter=100)
    running = backend.submit(long_job, source="api 10.0.0.7")
    first = backend.submit(GenerationRequest(prompt="first waiting", width=64, height=64, steps=2), source="api bot")
    second = backend.submit(
        GenerationRequest(prompt="<b>second</b> waiting", width=64, height=64, steps=2), source="img2img tab"
    )
    try:
        open_tab(page, "Queue")
        table = page.locator("#queue_table")
        expect(table.locator(f"tr[data-job='{running.id}']")).to_contain_text("api 10.0.0.7")
        expect(table.locator(f"tr[data-job='{running.id}']")).to_contain_text("running")
        row = table.locator(f"tr[data-job='{first.id}']")
        expect(row).to_contain_text("api bot")
        expect(row.locator("td").first).to_have_text("1")
        expect(table.locator(f"tr[data-job='{second.id}']")).to_contain_text("<b>second</b> waiting")  # escaped
        expect(table.locator(f"tr[data-job='{second.id}'] td").first).to_have_text("2")

        choose(page, "queue_job", "2. img2img tab")
        page.locator("#queue_run_next").click()
        expect(page.locator("#queue_message")).to_contain_text("runs next")
        expect(table.locator(f"tr[data-job='{second.id}'] td").first).to_have_text("1")
        backend.submit(GenerationRequest(prompt="third", width=64, height=64, steps=2), source="api late")
        expect(table).to_contain_text("api late")  # the tab refreshes itself while shown

        choose(page, "queue_job", "2. api bot")
        page.locator("#queue_cancel").click()
        expect(page.locator("#queue_message")).to_contain_text(f"Cancelled job {first.id}")
        expect(table.locator(f"tr[data-job='{first.id}']")).to_have_count(0)
        expect(page.locator(f"#queue_history tr[data-job='{first.id}']")).to_contain_text("cancelled before it ran")
        assert backend.job(first.id).state == "interrupted"
    finally:
        backend.interrupt(running.id)
    assert backend.wait(second.id, 120).state == "done"
