"""JSON errors for the ``/sdapi/v1`` routes: one shape, the right status code, never a traceback.

``{"error": <kind>, "detail": <what was wrong and what to do>, "field": <request field or null>,
"valid": [<names>] or null}``. The router's ``ApiRoute`` turns every exception of its routes
into that shape, including FastAPI's body validation errors (which would otherwise be
``{"detail": [...]}``), so an app that mounts the router needs no exception handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from webui.generation.requests import RequestError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: status code, kind, message, and optionally the field and the valid names."""

    def __init__(
        self, status: int, error: str, detail: str, field: str | None = None, valid: list[str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field, self.valid = status, error, detail, field, valid

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, "field": self.field, "valid": self.valid}
        return JSONResponse(body, status_code=self.status)


def request_error(exc: RequestError) -> ApiError:
    return ApiError(422, "RequestError", exc.message, exc.field)


def not_found(field: str, exc: KeyError, valid: list[str] | None = None) -> ApiError:
    """404 from a catalog lookup; the catalog's message already lists the available names."""
    message = exc.args[0] if exc.args else str(exc)
    return ApiError(404, "NotFound", str(message), field, valid)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's errors as one readable message; ``field`` is the first field at fault."""
    errors = list(exc.errors())
    if not errors:
        return ApiError(422, "RequestError", "the request body is not valid", "body")
    messages = []
    for err in errors[:5]:
        where = _field_of(tuple(err.get("loc", ())))
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
        messages.append(f"{where}: {err.get('msg', 'invalid value')}{got}")
    if errors[0].get("type") == "json_invalid":
        messages = ["the body is not valid JSON; send a JSON object with A1111's field names"]
    return ApiError(422, "RequestError", "; ".join(messages), _field_of(tuple(errors[0].get("loc", ()))))


def to_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, RequestError):
        return request_error(exc)
    log.exception("unexpected error in an API route")
    return ApiError(500, "ServerError", f"{type(exc).__name__}: {exc}. The server keeps running; see its log.")


class ApiRoute(APIRoute):
    """An APIRoute whose errors are JSON in the shape above (set as the router's ``route_class``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - the boundary where errors become JSON answers
                return to_api_error(exc).response()

        return route


# OpenAPI documentation of the error answers, for ``responses=`` of each route.
def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    from webui.api.schemas import ErrorResponse

    text = {
        404: "an unknown checkpoint, VAE or LoRA (the answer lists the valid names)",
        422: "a field has a value the app cannot use (the answer names it)",
        500: "the job failed (the answer has its message)",
        503: "the queue is full; try again later",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}
