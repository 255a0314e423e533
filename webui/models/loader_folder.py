"""Load a diffusers-format folder (``model_index.json`` + one sub-folder per component)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from webui.models.config_folder import t5_tokenizer_files
from webui.models.detect import Detection
from webui.models.families import FamilySpec
from webui.models.ldm_config import text_slots
from webui.models.loader import T5_TOKENIZER_DIR, LoadedModel, ModelLoadError, guard, finish

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def load_diffusers_folder(folder: Path, ctx: Any) -> LoadedModel:
    import diffusers

    index = _read_json(folder, "model_index.json")
    family, detection = _identify(folder, index, ctx.families)
    cls_name = family.pipelines["inpaint"] if detection.inpaint and family.denoiser == "unet" else index["_class_name"]
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise ModelLoadError(folder, f"model_index.json names {cls_name!r}, which diffusers does not have")
    kwargs: dict[str, Any] = {}
    if "safety_checker" in cls._optional_components:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    notes = _plan_t5(folder, index, family, ctx, kwargs)
    pipe = guard(folder, lambda: cls.from_pretrained(str(folder), local_files_only=True, dtype=ctx.dtype, **kwargs))
    return finish(pipe, family, detection, folder, notes, ctx.device)


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


def _family_id(index: dict, denoiser: str, config: dict) -> str | None:
    cls = str(index.get("_class_name", ""))
    if denoiser == "transformer":
        if not cls.startswith("StableDiffusion3"):
            return None
        if config.get("dual_attention_layers"):
            return "sd35_medium"
        return "sd35_large" if config.get("qk_norm") else "sd3"
    if cls.startswith("StableDiffusionXL"):
        refiner = index.get("requires_aesthetics_score") or not _present(index, "text_encoder")
        return "sdxl_refiner" if refiner else "sdxl"
    if cls.startswith("StableDiffusion") and "Upscale" not in cls and "Depth" not in cls:
        return "sd2" if config.get("cross_attention_dim") == 1024 else "sd15"
    return None


def _identify(folder: Path, index: dict, families: Any) -> tuple[FamilySpec, Detection]:
    denoiser = "transformer" if _present(index, "transformer") else "unet"
    config = _read_json(folder, f"{denoiser}/config.json")
    family_id = _family_id(index, denoiser, config)
    if family_id is None or family_id not in families:
        raise ModelLoadError(folder, f"a {index.get('_class_name', 'unknown')} folder, which this app does not support")
    family = families.get(family_id)
    components = {denoiser} | {n for n in ("vae",) if _present(index, n)}
    components |= {slot for slot, name in text_slots(family).items() if _present(index, name)}
    in_channels = int(config.get("in_channels", family.latent_channels))
    variant = "inpaint" if in_channels == 9 else ""
    return family, Detection(family_id, frozenset(components), in_channels, "", (), variant)


def _plan_t5(folder: Path, index: dict, family: FamilySpec, ctx: Any, kwargs: dict) -> list[str]:
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
