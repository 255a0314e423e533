"""Embeddings in prompts: where an embedding's name appears, its vectors take the place of the tokens.

As A1111 does it: the name is matched on token ids (the CLIP tokenizer lowercases, so ``EasyNegative``
and ``easynegative`` are the same word), inside one weighted fragment, longest name first. A match puts
``vectors`` placeholder tokens in the chunk (a whole embedding never straddles two chunks: it starts a
new chunk when it does not fit) and records where they are; the vectors get the fragment's weight, so
``(name:1.2)`` weights them. ``inserted`` then swaps the text encoder's token embeddings at those
positions for the vectors, for one forward call, through a forward hook that is removed right after:
the model the RAM cache holds is never changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from webui.generation.prompts import CHUNK_LENGTH, PromptChunk, _ChunkBuilder, _comma_id, is_break, tokenize_fragments

PLACEHOLDER_ID = 0  # any id below the end token works (legacy CLIP pools at the highest id); A1111 uses 0 too


@dataclass(frozen=True)
class EmbeddedChunk(PromptChunk):
    """A chunk with embeddings: ``fixes`` are (offset of the first placeholder token, embedding name)."""

    fixes: tuple[tuple[int, str], ...] = ()


class NameTable:
    """The token ids of each embedding name, looked up by their first id, longest first."""

    def __init__(self, tokenizer: Any, vectors: Mapping[str, int]) -> None:
        names = list(vectors)
        ids = tokenizer(names, add_special_tokens=False, truncation=False)["input_ids"] if names else []
        self.vectors = dict(vectors)
        self._by_first: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name, tokens in zip(names, ids):
            if tokens:
                self._by_first.setdefault(tokens[0], []).append((tuple(tokens), name))
        for options in self._by_first.values():
            options.sort(key=lambda item: -len(item[0]))

    def match(self, ids: Sequence[int], at: int) -> tuple[str, int] | None:
        """(name, number of prompt tokens it covers) of the embedding whose name starts at ``ids[at]``."""
        for tokens, name in self._by_first.get(ids[at], ()):
            if tuple(ids[at : at + len(tokens)]) == tokens:
                return name, len(tokens)
        return None


class _Builder(_ChunkBuilder):
    """``prompts._ChunkBuilder`` that also places embeddings and keeps their offsets through comma breaks."""

    def __init__(self, comma_id: int | None, backtrack: int) -> None:
        super().__init__(comma_id, backtrack)
        self.fixes: list[tuple[int, str]] = []
        self.used: list[str] = []

    def close(self, is_last: bool = False) -> None:
        fixes, self.fixes = tuple(self.fixes), []
        super().close(is_last)
        last = self.chunks[-1]
        self.chunks[-1] = EmbeddedChunk(last.tokens, last.weights, fixes)

    def _break_at_comma(self) -> None:
        cut = self.last_comma + 1
        moved = [(offset - cut, name) for offset, name in self.fixes if offset >= cut]
        self.fixes = [fix for fix in self.fixes if fix[0] < cut]
        super()._break_at_comma()
        self.fixes = moved

    def add_embedding(self, name: str, vectors: int, weight: float) -> None:
        if len(self.tokens) + vectors > CHUNK_LENGTH:
            self.close()
        self.fixes.append((len(self.tokens), name))
        self.tokens += [PLACEHOLDER_ID] * vectors
        self.weights += [weight] * vectors
        if name not in self.used:
            self.used.append(name)


def chunk_with_embeddings(
    tokenizer: Any, fragments: list[tuple[str, float]], table: NameTable, *, backtrack: int = 20
) -> tuple[list[PromptChunk], list[str]]:
    """``prompts.chunk_fragments`` with the embeddings of ``table`` placed: (chunks, names used in order)."""
    builder = _Builder(_comma_id(tokenizer), backtrack)
    for fragment, ids in zip(fragments, tokenize_fragments(tokenizer, fragments)):
        if is_break(fragment):
            builder.close()
        _place(builder, table, ids, fragment[1])
    chunks, _ = builder.finish()
    return chunks, builder.used


def count_with_embeddings(tokenizer: Any, text: str, vectors: Mapping[str, int]) -> tuple[int, int]:
    """``prompts.count_tokens`` where each embedding named counts its vectors (as A1111's counter)."""
    import math

    from webui.generation.prompt_editing import prompt_texts
    from webui.generation.prompts import strip_loras

    table = NameTable(tokenizer, vectors)
    # with prompt editing or alternation, the longest text a step sees counts (as ``prompts.count_tokens``)
    used = max(_count(tokenizer, table, t) for t in prompt_texts(strip_loras(text)))
    return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


def _count(tokenizer: Any, table: NameTable, text: str) -> int:
    from webui.generation.prompts import parse_prompt_attention

    builder = _Builder(_comma_id(tokenizer), 20)
    fragments = parse_prompt_attention(text)
    for fragment, ids in zip(fragments, tokenize_fragments(tokenizer, fragments)):
        if is_break(fragment):
            builder.close()
        _place(builder, table, ids, fragment[1])
    return builder.finish()[1]


def _place(builder: _Builder, table: NameTable, ids: Sequence[int], weight: float) -> None:
    """Add one fragment's tokens, each embedding named in them as its placeholder vectors."""
    i = 0
    while i < len(ids):
        found = table.match(ids, i)
        if found is None:
            builder.add(ids[i], weight)
            i += 1
        else:
            builder.add_embedding(found[0], table.vectors[found[0]], weight)
            i += found[1]


def used_names(tokenizer: Any, texts: Sequence[str], names: Sequence[str]) -> list[str]:
    """The embeddings of ``names`` that ``texts`` (prompts without LoRA tags) use, in order of first use."""
    from webui.generation.prompts import parse_prompt_attention

    lowered = " ".join(texts).lower()
    candidates = [name for name in names if name.lower() in lowered]  # a cheap first filter
    if not candidates:
        return []
    table = NameTable(tokenizer, {name: 1 for name in candidates})
    used: list[str] = []
    for text in texts:
        fragments = parse_prompt_attention(text)
        for fragment, ids in zip(fragments, tokenize_fragments(tokenizer, fragments)):
            for i in range(len(ids)):
                found = table.match(ids, i)
                if found is not None and found[0] not in used:
                    used.append(found[0])
    return used


@contextmanager
def inserted(encoder: Any, replacements: list[tuple[int, int, Any]]) -> Iterator[None]:
    """While inside, ``encoder``'s token embeddings at (row, start) are replaced by the [n, D] vectors given."""
    if not replacements:
        yield
        return

    def swap(_module: Any, _args: Any, output: Any) -> Any:
        output = output.clone()
        for row, start, vectors in replacements:
            output[row, start : start + vectors.shape[0]] = vectors.to(device=output.device, dtype=output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()
