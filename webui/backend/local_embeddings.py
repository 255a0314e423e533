"""The backend's embedding list: each embedding file, usable or not by the loaded model (A1111's loaded/skipped)."""

from __future__ import annotations

from typing import Any

from webui.backend.records import EmbeddingInfo

USABLE = "usable"


def _loaded_model(services: Any) -> tuple[Any, Any]:
    """(family, text encoder widths) of the loaded model, or (None, None) when none is loaded."""
    from webui.models.embeddings import text_widths
    from webui.models.manager import ModelNotLoadedError

    manager = services.manager
    family = manager.family
    if family is None:
        return None, None
    try:
        return family, text_widths(manager.loaded.pipeline, family)
    except ModelNotLoadedError:  # unloaded meanwhile
        return None, None


def embedding_rows(services: Any) -> list[EmbeddingInfo]:
    """Usable ones first (by name), then the skipped ones with the reason; with no model loaded, every readable one."""
    library = getattr(services, "embeddings", None)
    if library is None:
        return []
    family, widths = _loaded_model(services)
    found = library.for_family(family, widths)
    rows = [_row(e, True, USABLE) for e in found.loaded.values()]
    return rows + [_row(e, False, reason) for e, reason in found.skipped.values()]


def _row(embedding: Any, usable: bool, status: str) -> EmbeddingInfo:
    return EmbeddingInfo(
        embedding.name,
        embedding.step,
        embedding.sd_checkpoint,
        embedding.sd_checkpoint_name,
        embedding.shape,
        embedding.vectors,
        usable,
        status,
    )


def count_with_embeddings(services: Any, tokenizer: Any, text: str, plain: tuple[int, int]) -> tuple[int, int]:
    """The token counter's (used, limit) where each embedding the loaded model uses counts its vectors."""
    library = getattr(services, "embeddings", None)
    if library is None:
        return plain
    family, widths = _loaded_model(services)
    if family is None:
        return plain
    lowered = text.lower()
    vectors = {
        name: e.vectors for name, e in library.for_family(family, widths).loaded.items() if name.lower() in lowered
    }
    if not vectors:
        return plain
    from webui.generation.embedding_tokens import count_with_embeddings as count

    return count(tokenizer, text, vectors)
