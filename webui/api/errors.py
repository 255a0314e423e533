"""JSON errors for the ``/sdapi/v1`` routes: one shape, the right status code, never a traceback.

``{"error": <kind>, "detail": <what was wrong and what to do>, "field": <request field or null>,
"valid": [<names>] or null}``. The router's ``ApiRoute`` turns every exception of its routes
into that shape, including FastAPI's body validation and parsing errors (which would otherwise be
``{"detail": [...]}``), so an app that mounts the router needs no exception handlers. Before a
handler runs, ``webui.api.body_guard`` refuses bodies over the size limit (413), ``NaN``/``Infinity``
and text that is not valid Unicode (422). Answers are written by ``SafeJSONResponse``, which cannot
fail on a value that plain JSON cannot hold (a file name that is not UTF-8, a non-finite number).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from webui.generation.requests import RequestError, listed_choices

log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped (so a non-UTF-8 file name cannot break the answer) and NaN as null."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        except ValueError:
            text = json.dumps(_finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


class ApiError(Exception):
    """An error answer: status code, kind, message, and optionally the field and the valid names."""

    def __init__(
        self, status: int, error: str, detail: str, field: str | None = None, valid: list[str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field, self.valid = status, error, detail, field, valid

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, "field": self.field, "valid": self.valid}
        return SafeJSONResponse(body, status_code=self.status)


def request_error(exc: RequestError) -> ApiError:
    """422 naming the field; ``valid`` lists the choices whenever the message does."""
    valid = listed_choices(exc)
    return ApiError(422, "RequestError", exc.message, exc.field, list(valid) if valid is not None else None)


def not_found(field: str, exc: KeyError, valid: list[str] | None = None) -> ApiError:
    """404 from a catalog lookup; the catalog's message already lists the available names."""
    message = exc.args[0] if exc.args else str(exc)
    return ApiError(404, "NotFound", str(message), field, valid)


# A model that cannot fit in RAM or on the GPU (the load was refused before it started). 507 Insufficient
# Storage: the server cannot hold what the request needs. A 5xx, because the request is well formed and the
# limit is the server's (a 4xx tells clients their JSON is wrong); not 500, because nothing crashed and the
# server and its loaded model are unaffected; not 503, which this API answers for "queue full, try later" and
# which common retry recipes (urllib3 Retry's status_forcelist 500/502/503/504) repeat on their own: retrying
# cannot succeed until someone frees memory or picks another model. A1111 clients read ``detail``.
NOT_ENOUGH_MEMORY = 507


def not_enough_memory(message: str, field: str | None = "sd_model_checkpoint") -> ApiError:
    """The refusal of a load that cannot fit: what it needs, what is free, what to free (the manager's words)."""
    return ApiError(NOT_ENOUGH_MEMORY, "NotEnoughMemory", message, field)


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
        return ApiError(422, "RequestError", _NOT_JSON, "body")
    return ApiError(422, "RequestError", "; ".join(messages), _field_of(tuple(errors[0].get("loc", ()))))


_NOT_JSON = "the body is not valid JSON; send a JSON object (UTF-8) with A1111's field names"


def http_error(exc: HTTPException) -> ApiError:
    """Starlette/FastAPI's HTTPException (e.g. a body that is not UTF-8) in our shape, same status."""
    if exc.status_code == 400:
        return ApiError(400, "RequestError", _NOT_JSON, "body")
    kind = "RequestError" if exc.status_code < 500 else "ServerError"
    return ApiError(exc.status_code, kind, str(exc.detail))


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
                if request.method in _BODY_METHODS:
                    await _guard_body(request)
                return await handler(request)
            except HTTPException as exc:
                return http_error(exc).response()
            except ClientDisconnect:  # gone while sending the body: nobody reads an answer
                return ApiError(400, "RequestError", "the client closed the connection", "body").response()
            except Exception as exc:  # noqa: BLE001 - the boundary where errors become JSON answers
                return to_api_error(exc).response()

        return route


_BODY_METHODS = ("POST", "PUT", "PATCH")


async def _guard_body(request: Request) -> None:
    """Read the body (at most ``MAX_BODY_BYTES``) and refuse what the handlers must not see."""
    from webui.api.body_guard import MAX_BODY_BYTES, check_body, too_large

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large(int(length))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large(size)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: FastAPI's body parsing reads it instead of the spent stream
    check_body(body)


# OpenAPI documentation of the error answers, for ``responses=`` of each route.
def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    from webui.api.schemas import ErrorResponse

    text = {
        400: "the body is not JSON in UTF-8",
        404: "an unknown checkpoint, VAE or LoRA (the answer lists the valid names)",
        413: "the body is larger than the limit",
        422: "a field has a value the app cannot use (the answer names it)",
        500: "the job failed (the answer has its message)",
        503: "the queue is full; try again later",
        507: "the model cannot fit in RAM or on the GPU; the answer says how much it needs and what to free",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}
