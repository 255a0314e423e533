"""A1111 "infotext": the generation parameters stored with every image, written and read back.

Layout (A1111 ``create_infotext`` / ``parse_generation_parameters``)::

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      (omitted when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

The last line is ``", ".join(f"{key}: {quote(value)}")``; it only counts as parameters when the
pattern below finds at least three pairs in it, otherwise it is part of the prompt. Pure python:
the UI and the API read infotext without torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

NEGATIVE_PREFIX = "Negative prompt:"

# A1111's pattern for one "Key: value" pair of the last line: a JSON-quoted value or anything up
# to the next comma.
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
MIN_PARAM_PAIRS = 3

# Values A1111 1.10 assumes for keys an infotext leaves out (each was its default when the key was
# not written). Types as A1111 injects them: strings where the UI expects text, numbers elsewhere.
# Not injected: "Emphasis" (A1111 derives it from the prompt's attention syntax; our prompt parser
# decides that), "Cache FP16 weight for LoRA" (only with FP8 weights, see parse_infotext).
MISSING_KEY_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0),
    ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
    ("Refiner switch by sampling steps", False),
)

_NEEDS_QUOTES = (",", ":", "\n", '"')


def quote(value: Any) -> str:
    """The value as written after ``Key: ``; JSON-encoded when it holds ``,`` ``:`` a newline or ``"``.

    A1111 quotes on ``,`` ``:`` and newline; quoting values with ``"`` too keeps a value that starts
    and ends with quotes from being JSON-decoded on the way back (A1111 reads both forms).
    """
    text = str(value)
    if any(ch in text for ch in _NEEDS_QUOTES):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> Any:
    """A value as read: JSON-decoded when it is wrapped in double quotes and valid JSON."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_params(params: Mapping[str, Any]) -> str:
    """The parameter line: pairs in the order given, None dropped; a key equal to its value alone."""
    parts = [key if key == value else f"{key}: {quote(value)}" for key, value in params.items() if value is not None]
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """A1111's infotext: prompt, ``Negative prompt:`` line (when not empty), parameter line."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params(params)}".strip()


def split_infotext(text: str) -> tuple[str, str, dict[str, Any]]:
    """(prompt, negative prompt, parameters in written order): no size splitting, no defaults.

    Parameters are A1111's: quoted values JSON-decoded, everything else the text as written.
    ``format_infotext(*split_infotext(text))`` gives back an infotext we wrote.
    """
    *lines, last = text.strip().split("\n")
    if len(PARAM_PATTERN.findall(last)) < MIN_PARAM_PAIRS:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw_line in lines:
        line = raw_line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    params: dict[str, Any] = {}
    for key, value in PARAM_PATTERN.findall(last):
        params[key] = unquote(value)
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111's ``parse_generation_parameters``: a dict of ``Prompt``, ``Negative prompt`` and params.

    Values are the text as written (quoted ones JSON-decoded). ``WxH`` values also give ``<Key>-1``
    and ``<Key>-2`` (``Size: 512x768`` -> ``Size-1: "512"``, ``Size-2: "768"``; ``Size`` is kept).
    Keys left out get A1111's defaults (``MISSING_KEY_DEFAULTS``). An old ``First pass size`` is
    turned into the first-pass ``Size`` and a ``Hires resize`` as A1111 does. Not done here:
    A1111's style extraction, ``Hypernet`` prompt tags and ``Version``-based back-compat flags.
    """
    prompt, negative_prompt, params = split_infotext(text)
    res: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative_prompt}
    for key, value in params.items():
        res[key] = value
        match = IMAGE_SIZE_PATTERN.match(value) if isinstance(value, str) else None
        if match is not None:
            res[f"{key}-1"], res[f"{key}-2"] = match.group(1), match.group(2)
    for key, default in MISSING_KEY_DEFAULTS:
        res.setdefault(key, default)
    if res["FP8 weight"] != "Disable":
        res.setdefault("Cache FP16 weight for LoRA", False)
    _restore_old_hires_size(res)
    return res


def old_hires_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """Pre-1.0 A1111 hires fix: the first pass had about 512x512 pixels, sides rounded up to 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_size(res: dict[str, Any]) -> None:
    """``First pass size: WxH`` (old hires fix): Size was the final size; make it A1111 1.x's shape."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        first_w, first_h = int(first_w), int(first_h)
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    except ValueError:
        return
    if first_w == 0 or first_h == 0:
        first_w, first_h = old_hires_first_pass_size(width, height)
    res["Size"], res["Size-1"], res["Size-2"] = f"{first_w}x{first_h}", first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def parse_hashes(value: str) -> dict[str, str]:
    """``"name: hash, name2: hash2"`` (``Lora hashes``, ``TI hashes``) as a dict; bad parts skipped."""
    hashes: dict[str, str] = {}
    for part in str(value).split(","):
        name, sep, digest = part.partition(":")
        if sep and name.strip() and digest.strip():
            hashes[name.strip()] = digest.strip()
    return hashes
