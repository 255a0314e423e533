"""Our queue routes (not A1111's: it has no queue), under ``/webui/v1``:

* ``GET /webui/v1/queue?history=50``: ``{"jobs": [...], "history": [...], "seconds_per_unit": s}``; ``jobs`` is
  the running job (position 0) then the waiting ones in the order they run, each with ``id, state, owner,
  label, position, created, started, finished, fraction, eta_seconds, error``; ``history`` the session's
  finished jobs, newest first.
* ``DELETE /webui/v1/queue/{id}``: cancel a waiting job (it never runs): 200 ``{"done": true, "job": id}``;
  404 for an unknown id; 409 for a job that runs (stop it with ``POST /sdapi/v1/interrupt``) or has finished.
* ``POST /webui/v1/queue/{id}/move`` ``{"position": n}``: run a waiting job n-th (1 = next); 404 / 409 the same.

Who may cancel: the page and the API are one user. With ``--auth``/``--api-auth`` every route here asks for
the credentials (``webui.security.auth``), and whoever has them may cancel any job, as with ``/interrupt``.
``/sdapi/v1/progress`` is unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from webui.api.errors import ApiError, ApiRoute, SafeJSONResponse
from webui.backend import Backend, NotFound, Refused

MAX_HISTORY = 200


class QueueEntryItem(BaseModel):
    id: str
    state: str = Field(description="queued, running, done, interrupted or failed")
    owner: str = Field(description="who submitted it: 'txt2img tab', 'api 127.0.0.1', or a task ('model load')")
    label: str
    is_task: bool = False
    position: int = Field(description="1 = the next to run; 0 while running or finished")
    created: float
    started: float | None = None
    finished: float | None = None
    fraction: float = 0.0
    eta_seconds: float | None = Field(None, description="seconds until it is done; null: not known yet")
    error: str = ""


class QueueResponse(BaseModel):
    jobs: list[QueueEntryItem]
    history: list[QueueEntryItem]
    seconds_per_unit: float | None = None


class MoveRequest(BaseModel):
    position: int = Field(ge=1, le=10_000, description="1 = run it next")


class QueueControlResponse(BaseModel):
    done: bool
    job: str = ""


def _entry(e: Any) -> dict[str, Any]:
    return {name: getattr(e, name) for name in QueueEntryItem.model_fields}


def _answer(action: Any, job_id: str, *args: Any) -> dict[str, Any]:
    try:
        done = action(job_id, *args)
    except NotFound as exc:
        raise ApiError(404, "NotFound", exc.message, "id") from None
    except Refused as exc:
        raise ApiError(409, "Refused", exc.message, "id") from None
    return {"done": done.done, "job": done.job_id}


def build_queue_router(backend: Backend) -> APIRouter:
    """``/webui/v1/queue`` routes over the backend."""
    router = APIRouter(
        prefix="/webui/v1", tags=["queue"], route_class=ApiRoute, default_response_class=SafeJSONResponse
    )

    def get_queue(history: Annotated[int, Query(ge=0, le=MAX_HISTORY)] = 50) -> dict[str, Any]:
        """The running and waiting jobs with owner, position and ETA, and the session's finished jobs."""
        state = backend.queue_list(history)
        return {
            "jobs": [_entry(e) for e in state.jobs],
            "history": [_entry(e) for e in state.history],
            "seconds_per_unit": state.seconds_per_unit,
        }

    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a job that waits (a running one: ``POST /sdapi/v1/interrupt``)."""
        return _answer(backend.cancel, job_id)

    def move(job_id: str, body: Annotated[MoveRequest, Body()]) -> dict[str, Any]:
        """Run a waiting job at another place in the queue (1 = next)."""
        return _answer(backend.move_job, job_id, body.position)

    from webui.api.schemas import ErrorResponse

    control = {
        404: {"model": ErrorResponse, "description": "no job with that id (it may have finished long ago)"},
        409: {"model": ErrorResponse, "description": "the job runs (use /sdapi/v1/interrupt) or has finished"},
    }
    router.add_api_route("/queue", get_queue, methods=["GET"], response_model=QueueResponse)
    router.add_api_route(
        "/queue/{job_id}", cancel, methods=["DELETE"], response_model=QueueControlResponse, responses=control
    )
    router.add_api_route(
        "/queue/{job_id}/move", move, methods=["POST"], response_model=QueueControlResponse, responses=control
    )
    return router
