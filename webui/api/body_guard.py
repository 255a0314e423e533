"""Checks on a request body before FastAPI parses it: size, nesting, finite numbers, valid Unicode.

Python's JSON parser accepts what no A1111 client sends and what later code cannot handle:
``NaN``/``Infinity`` (a response that echoes them cannot be written as JSON), lone UTF-16
surrogates such as ``"\\ud800"`` (they cannot be encoded as UTF-8: the tokenizer, the PNG text
chunk and the JSON answer all fail on them) and nesting deep enough to exhaust the recursion
limit. ``check_body`` turns each into a 4xx that names the field, so no handler ever sees them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from webui.api.errors import ApiError

MAX_BODY_BYTES = 128 * 1024 * 1024  # a 4096x4096 RGB PNG as base64 is under 70 MB
MAX_DEPTH = 64  # A1111 bodies nest 3-4 levels (alwayson_scripts args)


def too_large(size: int, limit: int = MAX_BODY_BYTES) -> ApiError:
    return ApiError(
        413,
        "RequestTooLarge",
        f"the request body is {size} bytes; the limit is {limit} bytes (send smaller images)",
        "body",
    )


def _path(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _bad_text(value: str) -> bool:
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_error(where: str) -> ApiError:
    return ApiError(
        422,
        "RequestError",
        "contains text that is not valid Unicode (a lone UTF-16 surrogate such as \\ud800); send UTF-8 text",
        where,
    )


def find_problem(value: Any, max_depth: int = MAX_DEPTH) -> ApiError | None:
    """The first unusable value in parsed JSON (non-finite number, bad text, too deep), or None."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        if len(where) > max_depth:
            return ApiError(422, "RequestError", f"the body nests deeper than {max_depth} levels", _path(where[:3]))
        if isinstance(item, float) and not math.isfinite(item):
            return ApiError(422, "RequestError", f"must be a finite number, got {item}", _path(where))
        if isinstance(item, str) and _bad_text(item):
            return _text_error(_path(where))
        if isinstance(item, dict):
            for key, child in item.items():
                if _bad_text(key):
                    return _text_error(_path(where))
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, i)) for i, child in enumerate(item))
    return None


def check_body(raw: bytes, max_bytes: int = MAX_BODY_BYTES) -> None:
    """Raise ApiError for a body the handlers must not see; malformed JSON is left to FastAPI's 422."""
    if len(raw) > max_bytes:
        raise too_large(len(raw), max_bytes)
    if not raw:
        return
    try:
        parsed = json.loads(raw)
    except RecursionError:
        raise ApiError(422, "RequestError", f"the body nests deeper than {MAX_DEPTH} levels", "body") from None
    except ValueError:  # not JSON (or not UTF-8): FastAPI answers with its own message
        return
    problem = find_problem(parsed)
    if problem is not None:
        raise problem
