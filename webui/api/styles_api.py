"""Prompt styles in the A1111 API: ``styles`` on txt2img/img2img and ``GET /sdapi/v1/prompt-styles``.

A1111 applies ``styles`` (a list of style names from ``styles.csv``) to the prompt and the negative
prompt before it runs the job, so the infotext and ``info["prompt"]`` hold the styled prompts and
``info["styles"]`` the names. A name that no style has is skipped, as A1111 skips it; we also say so in
``info["warnings"]`` and list the styles there are. A non-empty hires prompt gets the styles too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from webui.api.errors import ApiError
from webui.backend import Backend, StyledPrompt, TaskFailed

MAX_LISTED = 20  # styles named in a warning about an unknown one


def _styled(backend: Backend, prompt: str, negative: str, names: list[str]) -> StyledPrompt:
    try:
        return backend.apply_styles(prompt, negative, names)
    except TaskFailed as exc:  # the styles file cannot be read
        raise ApiError(500, "StylesFileError", str(exc), "styles") from None


def unknown_warning(unknown: Sequence[str], known: Sequence[str]) -> str:
    listed = ", ".join(repr(n) for n in known[:MAX_LISTED]) + (" ..." if len(known) > MAX_LISTED else "")
    there = f"the styles are: {listed}" if known else "there is no style yet (styles.csv is empty or missing)"
    return f"no style named {', '.join(repr(n) for n in unknown)}; it was skipped as in A1111 ({there})"


def apply_request_styles(backend: Backend, call: Any, names: Sequence[str] | None) -> None:
    """Apply ``names`` to ``call.request``'s prompts in place; ``call.styles`` gets the names applied."""
    from webui.backend.styles import styled_request

    names = [n for n in (names or ()) if isinstance(n, str) and n]
    if not names:
        return
    call.request, done = styled_request(call.request, names, lambda p, n, s: _styled(backend, p, n, s))
    call.styles = list(done.applied)
    if done.unknown:
        call.warnings.append(unknown_warning(done.unknown, [s.name for s in backend.styles()]))


def prompt_styles(backend: Backend) -> list[dict[str, Any]]:
    """A1111's ``GET /sdapi/v1/prompt-styles``: ``[{name, prompt, negative_prompt}]`` in file order."""
    try:
        styles = backend.styles()
    except TaskFailed as exc:
        raise ApiError(500, "StylesFileError", str(exc)) from None
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]
