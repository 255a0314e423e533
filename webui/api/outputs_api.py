"""Our own small route for the outputs browser: ``GET /webui/v1/outputs`` (a page of past images).

Query: ``page`` (1-based), ``folder`` (``all``, ``txt2img``, ``img2img``, ``extras``, ``grids``),
``date`` (a date folder, e.g. ``2026-12-01``; empty: every date), ``per_page`` (1-200, default
36). Answer: ``{"page", "pages", "total", "per_page", "folder", "date", "dates", "images": [{"id",
"name", "folder", "date", "size", "mtime"}]}``, newest first. It lists names only: no file is
served from here (the page shows images through Gradio's cache). Behind the API's basic auth like
every non-Gradio route (``webui.security.auth``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query

from webui.api.errors import ApiError, ApiRoute, SafeJSONResponse, error_responses
from webui.backend import Backend, Refused


def build_outputs_router(backend: Backend) -> APIRouter:
    router = APIRouter(
        prefix="/webui/v1", tags=["outputs"], route_class=ApiRoute, default_response_class=SafeJSONResponse
    )

    def list_outputs(
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        folder: Annotated[str, Query(max_length=32)] = "all",
        date: Annotated[str, Query(max_length=64)] = "",
        per_page: Annotated[int, Query(ge=1, le=200)] = 36,
    ) -> dict[str, Any]:
        """A page of the images in the outputs folder, newest first."""
        try:
            found = backend.list_outputs(page, folder, date, per_page)
        except Refused as exc:
            raise ApiError(422, "RequestError", exc.message, "folder") from None
        return {
            "page": found.page,
            "pages": found.pages,
            "total": found.total,
            "per_page": found.per_page,
            "folder": found.folder,
            "date": found.date,
            "dates": list(found.dates),
            "images": [dataclasses.asdict(e) for e in found.entries],
        }

    router.add_api_route("/outputs", list_outputs, methods=["GET"], responses=error_responses(422))
    return router
