"""A1111 prompt editing and alternation, as plain data: the prompt text each sampling step sees.

Pure python (no torch). ``prompt_schedule(text, steps)`` returns ``[(until_step, text), ...]``: the
prompt to encode for steps up to and including ``until_step`` (1-based), the last entry ending at
``steps``. The syntax, inside square brackets:

* ``[from:to:when]``: ``from`` for the steps up to ``when``, ``to`` after it. ``when`` is a step
  number when it is 1 or more, else a fraction of the steps (``0.5`` of 20 steps is step 10);
  ``[to:when]`` adds ``to`` after ``when``, ``[from::when]`` removes ``from`` after it.
* ``[a|b|c]``: alternation, ``a`` at step 1, ``b`` at step 2, ``c`` at step 3, ``a`` at step 4...
* Both nest, inside each other and inside attention brackets: ``(a [b:c:5]:1.2)``, ``[a:[b|c]:0.5]``.
* ``[text]`` without a colon or a pipe stays the attention de-emphasis (``prompts.py`` reads it), as
  does a bracket whose last part is not a number (``[a:b]``).
* ``\\[``, ``\\]``, ``\\(``, ``\\)``, ``\\:``, ``\\|`` are literal characters (the backslash stays in the
  text for ``prompts.py``).
* A closing bracket that closes nothing, or closes a bracket of the other kind, is literal text, and so
  is a bracket left open; a colon or pipe outside square brackets is text.

Each pass counts its own steps: hires fix's second pass computes its schedule from its own step count
(as A1111's "hires steps counted separately").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COUNT_STEPS = 150  # the token counter reads the texts of a pass this long (A1111's steps slider ends there)
MAX_DEPTH = 40  # nesting deeper than this is read as plain text (no editing), never a RecursionError

_TOKEN = re.compile(r"\\.|[\[\]():|]|[^\\\[\]():|]+|\\", re.DOTALL)
_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*")


@dataclass(frozen=True)
class Scheduled:
    before: Node
    after: Node
    when: float


@dataclass(frozen=True)
class Alternate:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    """Brackets kept in the text (attention): ``open`` + parts joined by their separators + ``close``."""

    open: str
    parts: tuple[Node, ...]
    separators: tuple[str, ...]
    close: str


Node = str | Scheduled | Alternate | Group | tuple  # a tuple is a sequence of nodes


class _TooDeep(Exception):
    pass


def _match_brackets(tokens: list[str]) -> dict[int, int]:
    """Index of each opening bracket -> index of its closing one; mismatched or unclosed ones are left out."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i, tok in enumerate(tokens):
        if tok in "[(" and len(tok) == 1:
            stack.append(i)
        elif tok in "])" and len(tok) == 1 and stack and tokens[stack[-1]] == ("[" if tok == "]" else "("):
            pairs[stack.pop()] = i
    return pairs


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _TOKEN.findall(text)
        self.pairs = _match_brackets(self.tokens)

    def parse(self) -> Node:
        return self._sequence(0, len(self.tokens), 0, splits=False)[0][0]

    def _sequence(self, start: int, end: int, depth: int, *, splits: bool) -> tuple[list[Node], list[str]]:
        """Nodes of tokens[start:end]; with ``splits``, cut at this level's ':' and '|' (a square bracket's parts)."""
        if depth > MAX_DEPTH:
            raise _TooDeep
        parts: list[Node] = []
        seps: list[str] = []
        current: list[Node] = []
        i = start
        while i < end:
            tok = self.tokens[i]
            if i in self.pairs:
                close = self.pairs[i]
                current.append(self._bracket(i, close, depth + 1))
                i = close + 1
                continue
            if splits and tok in (":", "|"):
                parts.append(tuple(current))
                seps.append(tok)
                current = []
            else:
                current.append(tok)
            i += 1
        parts.append(tuple(current))
        return parts, seps

    def _bracket(self, open_at: int, close_at: int, depth: int) -> Node:
        if self.tokens[open_at] == "(":
            inner, _ = self._sequence(open_at + 1, close_at, depth, splits=False)
            return Group("(", (inner[0],), (), ")")
        parts, seps = self._sequence(open_at + 1, close_at, depth, splits=True)
        return _square(parts, seps)


def _plain(node: Node) -> str | None:
    """The text of a node made of plain tokens only (a ``when`` number), else None."""
    if isinstance(node, str):
        return node
    if isinstance(node, tuple) and all(isinstance(n, str) for n in node):
        return "".join(node)
    return None


def _square(parts: list[Node], seps: list[str]) -> Node:
    """What a square bracket means: editing, alternation, or the attention de-emphasis it is written as."""
    if seps and all(s == "|" for s in seps):
        return Alternate(tuple(parts))
    if seps in ([":"], [":", ":"]):
        when = _plain(parts[-1])
        if when is not None and _NUMBER.fullmatch(when):
            before = parts[0] if len(parts) == 3 else ()
            return Scheduled(before, parts[-2], float(when))
    return Group("[", tuple(parts), tuple(seps), "]")


def parse(text: str) -> Node:
    """The prompt as a tree of text, editing, alternation and kept brackets (plain text when too deep)."""
    try:
        return _Parser(text).parse()
    except _TooDeep:
        return text


def _when_step(when: float, steps: int) -> int:
    """The last step of ``from``: a step number (>= 1) or a fraction of ``steps``; never past ``steps``."""
    return min(steps, int(when * steps if when < 1 else when))


def render(node: Node, step: int, steps: int) -> str:
    """The prompt text that step ``step`` (1-based) of ``steps`` sees."""
    if isinstance(node, str):
        return node
    if isinstance(node, tuple):
        return "".join(render(n, step, steps) for n in node)
    if isinstance(node, Scheduled):
        return render(node.before if step <= _when_step(node.when, steps) else node.after, step, steps)
    if isinstance(node, Alternate):
        return render(node.options[(step - 1) % len(node.options)], step, steps)
    inner = [render(p, step, steps) for p in node.parts]
    body = inner[0] + "".join(sep + part for sep, part in zip(node.separators, inner[1:]))
    return node.open + body + node.close


def _change_steps(node: Node, steps: int, out: set[int]) -> None:
    """The steps after which the text may change (the ends of the schedule's entries)."""
    if isinstance(node, tuple):
        for n in node:
            _change_steps(n, steps, out)
    elif isinstance(node, Scheduled):
        when = _when_step(node.when, steps)
        if when >= 1:
            out.add(when)
        _change_steps(node.before, steps, out)
        _change_steps(node.after, steps, out)
    elif isinstance(node, Alternate):
        out.update(range(1, steps + 1))
        for n in node.options:
            _change_steps(n, steps, out)
    elif isinstance(node, Group):
        for n in node.parts:
            _change_steps(n, steps, out)


def has_editing(text: str) -> bool:
    """Whether ``text`` has any editing or alternation (a cheap test first: no '[' means none)."""
    return "[" in text and _has_dynamic(parse(text))


def _has_dynamic(node: Node) -> bool:
    if isinstance(node, (Scheduled, Alternate)):
        return True
    if isinstance(node, tuple):
        return any(_has_dynamic(n) for n in node)
    if isinstance(node, Group):
        return any(_has_dynamic(n) for n in node.parts)
    return False


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """``[(until_step, text), ...]`` for a pass of ``steps`` steps; neighbours with the same text are merged."""
    steps = max(1, int(steps))
    if "[" not in text:
        return [(steps, text)]
    tree = parse(text)
    ends: set[int] = {steps}
    _change_steps(tree, steps, ends)
    schedule: list[tuple[int, str]] = []
    for end in sorted(ends):
        rendered = render(tree, end, steps)
        if schedule and schedule[-1][1] == rendered:
            schedule[-1] = (end, rendered)
        else:
            schedule.append((end, rendered))
    return schedule


def text_at(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of ``schedule`` at step ``step`` (1-based); past the end, the last one."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]


def prompt_texts(text: str, steps: int = COUNT_STEPS) -> list[str]:
    """Every distinct text the steps of a pass see, in order (the token counter counts the longest)."""
    return list(dict.fromkeys(t for _, t in prompt_schedule(text, steps)))
