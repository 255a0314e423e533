"""A1111 prompt syntax, as plain data: ``<lora:...>`` tags, attention weights, BREAK, 75-token chunks.

Pure python (no torch): the UI's token counter and the API import it. The tokenizer is passed in;
anything with the ``transformers`` call signature (``tok(list_of_texts, add_special_tokens=False)``)
and ``get_vocab()`` works.

Attention syntax (A1111 "Original" emphasis):

* ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, ``(text:1.3)``
  multiplies it by 1.3; brackets nest and the factors multiply in the order the brackets close.
* ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the literal characters; a lone ``\\`` is dropped.
* A bracket left open applies to the rest of the prompt (round ones first, then square ones); a
  closing bracket without an opening one is literal text.
* ``BREAK`` (a whole word, upper case) starts a new 75-token chunk.

One deliberate difference from A1111: a ``BREAK`` inside brackets still breaks (A1111 multiplies its
marker's -1 by the bracket weight, so it becomes the word "BREAK" with a negative weight).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

CHUNK_LENGTH = 75  # tokens per chunk, without the start and end tokens (77 with them)
COMMA_BACKTRACK = 20  # A1111 "comma_padding_backtrack": how far back a chunk may break at a comma
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
BREAK = ("BREAK", -1.0)
# The largest attention or LoRA weight a prompt may give (either sign). Brackets multiply: 1000 nested "("
# give 1.1**1000 = 2.5e41, which overflows fp32 and turns the whole image into NaN; weights past a few units
# only make noise, so a prompt beyond this is refused with a message instead of failing as a NaN image.
MAX_WEIGHT = 100.0

_LORA_TAG = re.compile(r"<(?:lora|lyco):([^>]*)>", re.IGNORECASE)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_ATTENTION_TOKEN = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\])          # \( \) \[ \] \\ : the literal character
    | (?P<backslash>\\)                  # any other backslash: dropped
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)   # ":1.3)" closes a round bracket with an explicit weight
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class LoraTag:
    """``<lora:name:weight>``: the LoRA ``name`` is active for this job at ``weight``."""

    name: str
    weight: float


# --- <lora:...> tags -----------------------------------------------------------------------------


def _lora_from_body(body: str) -> LoraTag:
    """Read ``name[:te_weight[:unet_weight[:dyn]]]`` (or ``te=``/``unet=``/``dyn=``), A1111's format.

    We apply one weight to the whole LoRA: the text-encoder weight (the first number, or ``te=``).
    """
    name, *args = (part.strip() for part in body.split(":"))
    if not name:
        raise ValueError(f"<lora:{body}> has no LoRA name; write it like <lora:name:0.8>")
    positional = [arg for arg in args if "=" not in arg]
    named = dict(arg.split("=", 1) for arg in args if "=" in arg)
    named = {key.strip().lower(): value.strip() for key, value in named.items()}
    text = named.get("te", positional[0] if positional else "1")
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise ValueError(f"<lora:{body}>: the weight {text!r} is not a number; write it like <lora:{name}:0.8>")
    return LoraTag(name, weight)


def extract_loras(text: str) -> tuple[str, list[LoraTag]]:
    """Remove every ``<lora:...>``/``<lyco:...>`` tag; return the remaining text and the LoRAs.

    A LoRA named twice is returned once, where it first appears, with the last weight (as A1111).
    Raises ValueError naming the tag when a tag has no name or a weight that is not a number.
    """
    found: dict[str, LoraTag] = {}
    for match in _LORA_TAG.finditer(text):
        tag = _lora_from_body(match.group(1))
        found[tag.name] = tag  # keeps the first position, takes the last weight
    return _LORA_TAG.sub("", text), list(found.values())


def strip_loras(text: str) -> str:
    """``text`` without its ``<lora:...>`` tags, never raising (for the live token counter)."""
    return _LORA_TAG.sub("", text)


# --- attention weights ---------------------------------------------------------------------------


class _Fragments:
    """The parser's output while it runs: [text, weight] pairs and BREAK markers."""

    def __init__(self) -> None:
        self.items: list[list[Any]] = []  # [text, weight, is_break]

    def add_text(self, text: str) -> None:
        for i, part in enumerate(_BREAK_WORD.split(text)):
            if i:
                self.items.append([BREAK[0], BREAK[1], True])
            self.items.append([part, 1.0, False])

    def scale_from(self, start: int, factor: float) -> None:
        for item in self.items[start:]:
            if not item[2]:
                item[1] *= factor

    def merged(self) -> list[tuple[str, float]]:
        out: list[list[Any]] = []
        for text, weight, is_break in self.items:
            if out and not is_break and not out[-1][2] and out[-1][1] == weight:
                out[-1][0] += text
            else:
                out.append([text, weight, is_break])
        return [(text, weight) for text, weight, _ in out] or [("", 1.0)]


def _as_weight(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "1.2.3": A1111 crashes; we keep it as text
        return None


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (fragment, weight) pairs with A1111's rules (module docstring).

    A BREAK becomes ``("BREAK", -1.0)``; neighbours with equal weights are merged; an empty
    prompt gives ``[("", 1.0)]``.
    """
    out = _Fragments()
    rounds: list[int] = []
    squares: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(match.lastgroup or 0)
        weight = _as_weight(value) if kind == "weight" else None
        if kind == "escaped":
            out.items.append([value, 1.0, False])
        elif kind == "backslash":
            out.items.append(["", 1.0, False])
        elif kind == "open":
            (rounds if value == "(" else squares).append(len(out.items))
        elif weight is not None and rounds:
            out.scale_from(rounds.pop(), weight)
        elif kind == "close" and value == ")" and rounds:
            out.scale_from(rounds.pop(), ROUND_FACTOR)
        elif kind == "close" and value == "]" and squares:
            out.scale_from(squares.pop(), SQUARE_FACTOR)
        else:  # text, a colon, or a bracket/weight that closes nothing
            out.add_text(match.group(0))
    for start in rounds:
        out.scale_from(start, ROUND_FACTOR)
    for start in squares:
        out.scale_from(start, SQUARE_FACTOR)
    return out.merged()


def weight_problem(text: str) -> str:
    """ "" when every attention weight and ``<lora:...>`` weight of ``text`` is within ±``MAX_WEIGHT``,
    else a message naming the first one that is not and what to write instead."""
    try:
        body, loras = extract_loras(text)
    except ValueError as exc:
        return str(exc)
    return tags_problem(body, loras)


def tags_problem(body: str, loras: Any) -> str:
    """``weight_problem`` for a prompt already split by ``extract_loras`` (its text and its LoRA tags)."""
    for tag in loras:
        if abs(tag.weight) > MAX_WEIGHT:
            return (
                f"<lora:{tag.name}:...> has the weight {tag.weight:g}; LoRA weights must be between "
                f"-{MAX_WEIGHT:g} and {MAX_WEIGHT:g} (usually -2 to 2), write it like <lora:{tag.name}:0.8>"
            )
    for fragment, weight in parse_prompt_attention(body):
        if abs(weight) > MAX_WEIGHT and not is_break((fragment, weight)):
            shown = fragment.strip()[:40] or fragment[:40]
            return (
                f"the attention weight of {shown!r} is {weight:.3g}: brackets multiply (each ( by 1.1), and weights"
                f" beyond ±{MAX_WEIGHT:g} overflow the model; use fewer brackets or an explicit weight such as"
                f" ({shown}:1.5)"
            )
    return ""


def is_break(fragment: tuple[str, float]) -> bool:
    return fragment[0] == BREAK[0] and fragment[1] == BREAK[1]


# --- 75-token chunks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptChunk:
    """Up to 75 token ids of one prompt (no start/end/padding tokens) and their weights."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]

    def padded(self, bos: int, eos: int, pad: int) -> tuple[list[int], list[float]]:
        """The 77 ids the text encoder reads: start, tokens, end, then ``pad`` up to 77."""
        fill = CHUNK_LENGTH - len(self.tokens)
        ids = [bos, *self.tokens, eos] + [pad] * fill
        return ids, [1.0, *self.weights, 1.0] + [1.0] * fill


EMPTY_CHUNK = PromptChunk((), ())


class _ChunkBuilder:
    """Fills 75-token chunks the way A1111 does, counting tokens for the UI counter."""

    def __init__(self, comma_id: int | None, backtrack: int) -> None:
        self.comma_id, self.backtrack = comma_id, backtrack
        self.chunks: list[PromptChunk] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1
        self.count = 0

    def close(self, is_last: bool = False) -> None:
        self.count += len(self.tokens) if is_last else CHUNK_LENGTH
        self.chunks.append(PromptChunk(tuple(self.tokens), tuple(self.weights)))
        self.tokens, self.weights, self.last_comma = [], [], -1

    def _break_at_comma(self) -> None:
        """Move the tokens after the last comma into the next chunk."""
        cut = self.last_comma + 1
        tail = self.tokens[cut:], self.weights[cut:]
        self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
        self.close()
        self.tokens, self.weights = list(tail[0]), list(tail[1])

    def _should_backtrack(self) -> bool:
        size = len(self.tokens)
        return (
            bool(self.backtrack)
            and size == CHUNK_LENGTH
            and self.last_comma != -1
            and size - self.last_comma <= self.backtrack
        )

    def add(self, token: int, weight: float) -> None:
        if token == self.comma_id:
            self.last_comma = len(self.tokens)
        elif self._should_backtrack():
            self._break_at_comma()
        if len(self.tokens) == CHUNK_LENGTH:
            self.close()
        self.tokens.append(token)
        self.weights.append(weight)

    def finish(self) -> tuple[list[PromptChunk], int]:
        if self.tokens or not self.chunks:
            self.close(is_last=True)
        return self.chunks, self.count


def tokenize_fragments(tokenizer: Any, fragments: list[tuple[str, float]]) -> list[list[int]]:
    """Token ids of each fragment, without special tokens (BREAK markers give no ids)."""
    texts = [text for text, weight in fragments if not is_break((text, weight))]
    ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else [])
    return [[] if is_break(fragment) else list(next(ids)) for fragment in fragments]


def _comma_id(tokenizer: Any) -> int | None:
    """The id of the word-final comma, or None. One lookup: ``get_vocab()`` copies all 49,408 entries (16 ms)."""
    token_id = tokenizer.convert_tokens_to_ids(",</w>")
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return token_id


def chunk_fragments(
    tokenizer: Any, fragments: list[tuple[str, float]], *, backtrack: int = COMMA_BACKTRACK
) -> tuple[list[PromptChunk], int]:
    """A1111's chunking of one parsed prompt: returns (chunks, token count for the counter).

    A chunk holds at most 75 tokens; a BREAK closes the current chunk; when a chunk is full and a
    comma lies within the last ``backtrack`` tokens, the chunk ends after that comma.
    """
    builder = _ChunkBuilder(_comma_id(tokenizer), backtrack)
    for fragment, ids in zip(fragments, tokenize_fragments(tokenizer, fragments)):
        if is_break(fragment):
            builder.close()
        for token in ids:
            builder.add(token, fragment[1])
    return builder.finish()


def count_tokens(tokenizer: Any, text: str) -> tuple[int, int]:
    """(tokens used, limit) for the UI's "12/75" counter; the limit grows by 75 per chunk.

    LoRA tags do not count (they are removed before encoding); a BREAK counts its chunk as full. With prompt
    editing or alternation the longest text a step sees counts (as A1111).
    """
    from webui.generation.prompt_editing import prompt_texts

    texts = prompt_texts(strip_loras(text))
    used = max(chunk_fragments(tokenizer, parse_prompt_attention(t))[1] for t in texts)
    return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH
