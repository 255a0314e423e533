"""A1111's X/Y/Z value syntax: comma-separated values (csv quoting) and ranges.

``1-5`` (every whole number), ``1-10 (+2)`` (a step; ``(-2)`` counts down), ``1-10 [5]`` (5 values spread
evenly), and for decimal axes ``0.5-1.5 (+0.25)`` / ``0.5-1.5 [3]``. Pure python: no torch, no gradio.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

from webui.generation.requests import RequestError

_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\)|\[\s*(\d+)\s*\])?\s*$")
MAX_VALUES = 1000  # one axis; a range that would make more is refused


def split_csv(text: str) -> list[str]:
    """The comma-separated items of ``text`` (csv quoting: ``"a, b",c``), stripped, empty ones dropped."""
    if not text or not text.strip():
        return []
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as exc:
        raise ValueError(f"cannot read {text!r} as comma-separated values ({exc})") from None
    return [item.strip() for row in rows for item in row if item.strip()]


def to_csv(values: list[Any]) -> str:
    """Values back as one csv line (what the infotext's "X Values" holds)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([str(v) for v in values])
    return buf.getvalue()


def _number(text: str, kind: type) -> Any:
    return kind(text.replace(" ", ""))


def _expand_int(start: int, end: int, step: str | None, count: str | None) -> list[int]:
    if count is not None:
        n = int(count)
        if n < 1:
            return []
        if n == 1:
            return [start]
        return [int(start + (end - start) * i / (n - 1)) for i in range(n)]  # numpy linspace().astype(int), as A1111
    delta = int(step.replace(" ", "")) if step else (1 if end >= start else -1)
    if delta == 0:
        raise ValueError("a step of 0 never ends")
    stop = end + (1 if delta > 0 else -1)
    if (stop - start) / delta > MAX_VALUES:
        raise ValueError(f"makes more than {MAX_VALUES} values")
    return list(range(start, stop, delta))


def _expand_float(start: float, end: float, step: str | None, count: str | None) -> list[float]:
    if count is not None:
        n = int(count)
        if n <= 1:
            return [start][:n]
        return [round(start + (end - start) * i / (n - 1), 10) for i in range(n)]
    if step is None:  # A1111: a plain float range steps by 1
        step = "+1" if end >= start else "-1"
    delta = float(step.replace(" ", ""))
    if delta == 0:
        raise ValueError("a step of 0 never ends")
    count_f = (end - start) / delta
    if count_f < 0:
        return []
    if count_f > MAX_VALUES:
        raise ValueError(f"makes more than {MAX_VALUES} values")
    return [round(start + delta * i, 10) for i in range(int(count_f + 1e-9) + 1)]


def parse_values(text: str, kind: type, field: str = "values") -> list[Any]:
    """The values of an axis of ``kind`` (int, float or str) from its text; ``RequestError`` names the bad one."""
    items = split_csv(text) if isinstance(text, str) else [str(v) for v in (text or [])]
    out: list[Any] = []
    for item in items:
        try:
            out.extend(_parse_item(item, kind))
        except ValueError as exc:
            raise RequestError(field, f"{item!r} is not a valid value ({exc}); {SYNTAX_HELP[kind]}") from None
        if len(out) > MAX_VALUES:
            raise RequestError(field, f"has more than {MAX_VALUES} values; use fewer")
    return out


def _parse_item(item: str, kind: type) -> list[Any]:
    if kind is str:
        return [item]
    match = _RANGE.match(item) if kind in (int, float) else None
    if match:
        start, end, step, count = match.groups()
        if kind is int:
            return _expand_int(_number(start, int), _number(end, int), step, count)
        return _expand_float(_number(start, float), _number(end, float), step, count)
    convert: Callable[[str], Any] = kind
    return [convert(item)]


SYNTAX_HELP = {
    int: "use whole numbers separated by commas, or a range: 1-5, 1-10 (+2), 1-10 [5]",
    float: "use numbers separated by commas, or a range: 0.5-1.5 (+0.25), 1-10 [5]",
    str: "use values separated by commas (quote a value that holds a comma)",
}
