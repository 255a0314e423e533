"""Load a diffusers-format folder (``model_index.json`` + one sub-folder per component).

The folder was identified once (``webui.models.identify``): its record names the family, which picks the
pipeline class (the inpaint one for a 9-channel UNet). Components the app does not use (a ControlNet
pipeline's ``controlnet``) are left out with a note; text encoders the folder lacks come from
``models/text_encoder`` as for single files, or the load says which file is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from webui.families.base import TEXT_ENCODERS, FamilyAdapter
from webui.models.config_folder import t5_tokenizer_files
from webui.models.identify import IGNORED_COMPONENTS, ModelRecord
from webui.models.loader import (
    T5_TOKENIZER_DIR,
    LoadedModel,
    ModelLoadError,
    family_of,
    finish,
    guard,
    separate_text_encoders,
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def load_diffusers_folder(folder: Path, record: ModelRecord, ctx: Any) -> LoadedModel:
    import diffusers

    family = family_of(folder, record, ctx.families)
    index = _read_json(folder, "model_index.json")
    cls_name = family.pipeline_for(record)
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise ModelLoadError(folder, f"this app loads it as {cls_name!r}, which diffusers does not have")
    kwargs: dict[str, Any] = {}
    if "safety_checker" in cls._optional_components:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    notes = [IGNORED_COMPONENTS[name] for name in record.ignored]
    parts = separate_text_encoders(folder, record, family, ctx)
    kwargs.update(parts.modules)
    notes += parts.notes
    _add_missing_tokenizers(index, family, parts.modules, kwargs)
    notes += _plan_t5(folder, index, family, ctx, kwargs)
    pipe = guard(folder, lambda: cls.from_pretrained(str(folder), local_files_only=True, dtype=ctx.dtype, **kwargs))
    return finish(pipe, family, record, folder, notes, ctx.device)


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        what = "a diffusers model folder" if name == "model_index.json" else f"complete ({name} is missing)"
        raise ModelLoadError(folder, f"not {what}: no {name}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(folder, f"{name} cannot be read ({exc}); the folder is damaged") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(folder, f"{name} is not a JSON object; the folder is damaged")
    return doc


def _present(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _has_weights(path: Path) -> bool:
    return path.is_dir() and any(p.name.endswith(_WEIGHT_SUFFIXES) for p in path.iterdir())


def _add_missing_tokenizers(index: dict, family: FamilyAdapter, separate: dict, kwargs: dict) -> None:
    """A CLIP tokenizer (the bundled vocabulary) for each text encoder taken from a separate file."""
    from webui.models.tokenizers import clip_tokenizer

    for slot, name in family.text_slots().items():
        tok = name.replace("text_encoder", "tokenizer")
        if name in separate and slot != "t5xxl" and not _present(index, tok):
            kwargs[tok] = clip_tokenizer(TEXT_ENCODERS[slot].pad_token)


def _plan_t5(folder: Path, index: dict, family: FamilyAdapter, ctx: Any, kwargs: dict) -> list[str]:
    """Leave T5 out (with a note) unless the folder has its weights and a tokenizer is at hand."""
    if "t5xxl" not in family.text_encoders:
        return []
    if getattr(ctx, "drop_t5", False):
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
        return [f"T5 left out by the 'Drop T5' memory mode; {family.label} runs on its CLIP encoders"]
    reason = None
    if not (_present(index, "text_encoder_3") and _has_weights(folder / "text_encoder_3")):
        reason = "the folder has no text_encoder_3 weights"
    elif not (_present(index, "tokenizer_3") and (folder / "tokenizer_3").is_dir()):
        if t5_tokenizer_files(ctx.t5_tokenizer_dir):
            from transformers import AutoTokenizer

            kwargs["tokenizer_3"] = guard(
                folder, lambda: AutoTokenizer.from_pretrained(str(ctx.t5_tokenizer_dir), local_files_only=True)
            )
        else:
            reason = f"no T5 tokenizer in the folder or in {ctx.t5_tokenizer_dir or T5_TOKENIZER_DIR}"
    if reason is None:
        return []
    kwargs.update(text_encoder_3=None, tokenizer_3=None)
    return [f"T5 not loaded: {reason}; {family.label} runs without T5 (weaker prompt following)"]
