"""Queue tab: every running and waiting job (owner, position, ETA) and this session's finished ones; cancel a
waiting job or run it next. Refreshes itself every ``REFRESH_SECONDS`` while the tab is shown.

Element ids: ``queue_table`` (running + waiting), ``queue_history``, ``queue_job`` (the job to act on),
``queue_cancel``, ``queue_run_next``, ``queue_refresh``, ``queue_message``.

The page and the API are one user: whoever may use the page may cancel any job, an API client's too (the
API's ``DELETE /webui/v1/queue/{id}`` asks for the same credentials when auth is on).
"""

from __future__ import annotations

import html
import time
from typing import Any

from webui.backend import Backend, BackendError, QueueEntry, QueueList

REFRESH_SECONDS = 1.0
TAB_LABEL = "Queue"  # webui.ui.shell.TABS
HISTORY = 50
EMPTY = "<p class='webui-queue-empty'>Nothing is running or waiting.</p>"


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _when(stamp: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else ""


def _row(e: QueueEntry, history: bool) -> str:
    cells = [
        "running" if e.state == "running" else (str(e.position) if e.state == "queued" else e.state),
        e.owner,
        e.label,
    ]
    if history:
        took = f"{e.finished - e.started:.1f} s" if e.started and e.finished else ""
        cells += [_when(e.finished), took, e.error]
    else:
        cells += [f"{int(e.fraction * 100)}%" if e.state == "running" else "", eta_text(e.eta_seconds)]
    tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
    return f"<tr data-job='{html.escape(e.id)}' data-state='{html.escape(e.state)}'>{tds}</tr>"


def table_html(entries: list[QueueEntry], history: bool = False) -> str:
    """An HTML table of queue entries (every text escaped: prompts and owners come from users)."""
    if not entries:
        return EMPTY if not history else "<p class='webui-queue-empty'>No job has finished yet.</p>"
    heads = ["#", "owner", "job"] + (["ended", "took", "message"] if history else ["progress", "ETA"])
    head = "".join(f"<th>{h}</th>" for h in heads)
    body = "".join(_row(e, history) for e in entries)
    return f"<table class='webui-queue'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def job_choices(state: QueueList) -> list[tuple[str, str]]:
    """(label, id) of each waiting job, for the dropdown of the job to act on."""
    return [(f"{e.position}. {e.owner}: {e.label}", e.id) for e in state.jobs if e.state == "queued"]


def act(backend: Backend, action: str, job_id: str | None) -> str:
    """Cancel a waiting job or run it next; the message to show."""
    if not job_id:
        return "Pick a waiting job first."
    try:
        if action == "cancel":
            backend.cancel(job_id)
            return f"Cancelled job {job_id}."
        backend.move_job(job_id, 1)
        return f"Job {job_id} runs next."
    except BackendError as exc:
        return f"**Not done:** {exc}"


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    gr.Markdown("Jobs from every tab and API client run one at a time, in this order.")
    table = gr.HTML(EMPTY, elem_id="queue_table")
    with gr.Row():
        job = gr.Dropdown(label="Waiting job", choices=[], value=None, scale=4, elem_id="queue_job")
        cancel = gr.Button("Cancel job", size="sm", scale=1, elem_id="queue_cancel")
        run_next = gr.Button("Run next", size="sm", scale=1, elem_id="queue_run_next")
        refresh = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id="queue_refresh")
    message = gr.Markdown("", elem_id="queue_message")
    gr.Markdown("### Finished this session")
    history = gr.HTML("", elem_id="queue_history")
    tabs = getattr(page, "tabs", None)
    timer = gr.Timer(REFRESH_SECONDS, active=tabs is None)  # with tabs: it ticks only while this tab is shown
    if tabs is not None:

        def follow_tab(evt: gr.SelectData) -> Any:
            return gr.Timer(active=evt.value == TAB_LABEL)

        follow_tab.__annotations__["evt"] = gr.SelectData  # a real class: the module uses postponed annotations
        tabs.select(follow_tab, outputs=[timer], queue=False, show_progress="hidden")

    def show() -> tuple[str, str, Any]:
        # Only the choices: a tick must never undo a pick made while it was on its way (a job that ended
        # meanwhile stays picked, and Cancel says it has finished).
        state = backend.queue_list(HISTORY)
        return table_html(state.jobs), table_html(state.history, history=True), gr.update(choices=job_choices(state))

    def done(message_text: str) -> tuple[str, str, Any, str]:  # after Cancel / Run next: the pick is cleared
        state = backend.queue_list(HISTORY)
        jobs, finished = table_html(state.jobs), table_html(state.history, history=True)
        return jobs, finished, gr.update(choices=job_choices(state), value=None), message_text

    outputs = [table, history, job]
    for event in (timer.tick, refresh.click):
        event(show, outputs=outputs, queue=False, show_progress="hidden")
    for button, action in ((cancel, "cancel"), (run_next, "move")):
        button.click(
            lambda j, a=action: done(act(backend, a, j)),
            inputs=[job],
            outputs=[*outputs, message],
            queue=False,
            show_progress="hidden",
        )
