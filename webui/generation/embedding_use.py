"""Which embeddings one pass of a job uses, recorded on the job: ``TI hashes`` and why one was skipped.

``pass_embeddings`` is what the encode stage calls for each pass (first pass, hires, refiner): the
installed embeddings that fit the pass's model (``webui.models.embeddings.fit``) and that its
prompts name. A named embedding that does not fit (another family, SD3) is not applied and the job's
warnings say why, as A1111 lists it under "skipped"; its name then stays plain prompt text.
"""

from __future__ import annotations

from typing import Any

TI_HASH_LEN = 12  # A1111's embedding shorthash: the first 12 hex digits of the file's sha256


def pass_embeddings(job: Any, pipe: Any, family: Any, texts: list[str]) -> dict[str, Any]:
    """name -> Embedding of the embeddings ``texts`` use that fit ``pipe``; hashes and warnings go on ``job``."""
    library = getattr(job.parts, "embeddings", None)
    if library is None:
        return {}
    from webui.generation.embedding_tokens import used_names
    from webui.models.embeddings import text_widths

    found = library.for_family(family, text_widths(pipe, family))
    tokenizer = _first_tokenizer(pipe, family)
    if tokenizer is None:
        return {}
    names = [*found.loaded, *found.skipped]
    used = used_names(tokenizer, texts, names)
    applied = {name: found.loaded[name] for name in used if name in found.loaded}
    for name in used:
        if name in found.skipped:
            _warn(job, f"Embedding {name!r} was not applied: {found.skipped[name][1]}")
    _record_hashes(job, applied)
    return applied


def cache_state(applied: dict[str, Any]) -> tuple:
    """What the prompt cache key needs of the embeddings applied: each file's name and version."""
    return tuple((name, str(e.path), e.size, e.mtime_ns) for name, e in sorted(applied.items()))


def _first_tokenizer(pipe: Any, family: Any) -> Any:
    recipe = getattr(family, "conditioning", None)
    for slot in recipe.slots if recipe is not None else ():
        tokenizer = getattr(pipe, slot.tokenizer, None)
        if tokenizer is not None:
            return tokenizer
    return None


def _warn(job: Any, message: str) -> None:
    warnings = getattr(job, "warnings", None)
    if warnings is not None and message not in warnings:
        warnings.append(message)


def _record_hashes(job: Any, applied: dict[str, Any]) -> None:
    hashes = getattr(job.parts, "hashes", None)
    table = getattr(job, "ti_hashes", None)
    if hashes is None or table is None:
        return
    for name, embedding in applied.items():
        if name in table:
            continue
        try:
            digest = hashes.get(embedding.path, compute=True)
        except OSError:  # removed since it was read: the image is still worth saving
            digest = None
        if digest:
            table[name] = digest[:TI_HASH_LEN]
