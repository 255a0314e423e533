"""Styles applied to a whole request (its prompts and hires prompts) through ``Backend.apply_styles``.

Used by the page (at Generate) and the API (a request's ``styles``) alike; plain data only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def styled_request(request: Any, names: Iterable[str], apply: Callable[[str, str, list[str]], Any]) -> tuple[Any, Any]:
    """(the request with ``names`` applied to its prompts, what ``apply`` answered for the main prompts).

    ``apply(prompt, negative_prompt, names)`` is ``Backend.apply_styles``. A non-empty hires prompt gets the
    styles too (an empty one means "the prompt", which already has them), as A1111 styles its hires prompts.
    """
    names = [n for n in names if isinstance(n, str) and n]
    done = apply(request.prompt, request.negative_prompt, names)
    changes: dict[str, Any] = {"prompt": done.prompt, "negative_prompt": done.negative_prompt}
    hr_prompt, hr_negative = getattr(request, "hr_prompt", ""), getattr(request, "hr_negative_prompt", "")
    if hr_prompt or hr_negative:
        hires = apply(hr_prompt, hr_negative, names)
        changes["hr_prompt"] = hires.prompt if hr_prompt else ""
        changes["hr_negative_prompt"] = hires.negative_prompt if hr_negative else ""
    return request.replace(**changes), done
