"""A small LRU of encoded prompts, so an unchanged prompt is not run through the text encoders again.

The key is everything the encoding depends on: the model's identity and text-encoder state
(checkpoint file, LoRAs and their weights: the caller's ``model_state``), the text encoder
objects themselves, prompt, negative prompt, clip skip, use of T5 and the batch size. A hit is
only served while the very same text encoder modules are alive (held by weak reference), so a
reloaded model never gets another model's encodings even if Python reuses an object id.

Hits return fresh clones: a caller that edits the tensors in place cannot corrupt the cache.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
DEFAULT_SIZE = 16


@dataclass(frozen=True)
class PromptKey:
    model_state: Hashable
    encoders: tuple[int, ...]  # id() of each text encoder (None -> 0), checked against weak refs on a hit
    prompt: str
    negative: str
    clip_skip: int
    use_t5: bool
    batch: int

    @classmethod
    def of(
        cls,
        pipe: Any,
        model_state: Hashable,
        prompt: str,
        negative: str,
        *,
        clip_skip: int = 1,
        use_t5: bool = True,
        batch: int = 1,
    ) -> PromptKey:
        encoders = tuple(id(m) if m is not None else 0 for m in _encoders(pipe))
        return cls(model_state, encoders, prompt, negative, clip_skip, use_t5, batch)


def _encoders(pipe: Any) -> tuple[Any, ...]:
    return tuple(getattr(pipe, name, None) for name in TEXT_ENCODER_NAMES)


def _clone(value: Any) -> Any:
    clone = getattr(value, "clone", None)
    return clone() if callable(clone) else value


@dataclass
class _Entry:
    refs: tuple[Any, ...]  # weak references to the encoders (or None)
    value: Mapping[str, Any]

    def alive_for(self, pipe: Any) -> bool:
        current = _encoders(pipe)
        return all((r is None and m is None) or (r is not None and r() is m) for r, m in zip(self.refs, current))


class PromptCache:
    """LRU of ``encode_prompts`` results; one per app (the engine owns it). Thread-safe."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 0:
            raise ValueError(f"the prompt cache size must be 0 (off) or more, got {size}")
        self.size = size
        self._items: OrderedDict[PromptKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def resize(self, size: int) -> None:
        """Keep at most ``size`` encodings from now on (0: off), dropping the oldest at once."""
        if size < 0:
            raise ValueError(f"the prompt cache size must be 0 (off) or more, got {size}")
        with self._lock:
            self.size = size
            while len(self._items) > size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get_or_encode(self, pipe: Any, key: PromptKey, encode: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The cached encoding for ``key`` (cloned), or ``encode()``'s result, stored for next time."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry.alive_for(pipe):
                self._items.move_to_end(key)
                self.hits += 1
                return {k: _clone(v) for k, v in entry.value.items()}
            if entry is not None:
                del self._items[key]
            self.misses += 1
        value = dict(encode())
        if self.size == 0:
            return value
        refs = tuple(weakref.ref(m) if m is not None else None for m in _encoders(pipe))
        stored = {k: _clone(v) for k, v in value.items()}
        with self._lock:
            self._items[key] = _Entry(refs, stored)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
