"""Text encoders from separate files (ComfyUI-style ``clip_l.safetensors``, ``t5xxl_fp16.safetensors``).

The files hold transformers-layout keys, with or without the ``text_model.`` prefix. The
model is built without allocating weights (accelerate's ``init_empty_weights``) and the
file's tensors are assigned into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from webui.families.base import FamilyAdapter
from webui.families.registry import BUILTIN
from webui.models.safetensors_header import ModelFileError

# A text encoder cut out of a checkpoint may keep its prefix there (SD3: text_encoders.<slot>.transformer.).
_FILE_PREFIXES = tuple(dict.fromkeys(p for family in BUILTIN for p in family.text_encoder_file_prefixes))


def strip_checkpoint_prefix(key: str) -> str:
    """The transformers key of a text encoder tensor, without a checkpoint's prefix (SD3's)."""
    for prefix in _FILE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def load_text_encoder_file(path: Path, config: Mapping[str, Any], family: FamilyAdapter, slot: str, dtype: Any) -> Any:
    """A transformers text encoder (eval mode, ``dtype``) built from ``config`` with ``path``'s weights."""
    import accelerate
    import safetensors.torch
    import torch
    import transformers

    cls = getattr(transformers, config["architectures"][0])
    with accelerate.init_empty_weights():
        model = cls(cls.config_class.from_dict(dict(config)))
    tensors = safetensors.torch.load_file(str(path))
    if any(k.endswith(".scale_weight") for k in tensors):
        raise ModelFileError(path, "scaled-fp8 text encoder files are not supported; use the fp16 or plain fp8 file")
    if slot == "t5xxl":
        state = _t5_state(tensors, model)
    else:
        state = _clip_state(tensors, model)
        if family.pooled_clip_l and slot == "clip_l":
            # SD3 uses CLIP-L's pooled output unprojected (diffusers does the same for single files)
            state["text_projection.weight"] = torch.eye(config["hidden_size"])
    model.load_state_dict(state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [k for k, v in model.state_dict().items() if v.is_meta]
    if missing:
        raise ModelFileError(
            path, f"the file lacks {len(missing)} weights of a {cls.__name__} (e.g. {missing[0]}); is it the right file?"
        )
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype == torch.float16 and keep:  # as transformers/diffusers do: T5's "wo" overflows in fp16
        for name, param in model.named_parameters():
            if any(part in keep for part in name.split(".")):
                param.data = param.data.float()
    return model.eval()


def _clip_state(tensors: Mapping[str, Any], model: Any) -> dict:
    core = {}
    for key, t in tensors.items():
        core[strip_checkpoint_prefix(key).removeprefix("text_model.")] = t
    return {k: core[k.removeprefix("text_model.")] for k in model.state_dict() if k.removeprefix("text_model.") in core}


def _t5_state(tensors: Mapping[str, Any], model: Any) -> dict:
    core = {}
    for key, t in tensors.items():
        core[strip_checkpoint_prefix(key)] = t
    embed = core.get("shared.weight", core.get("encoder.embed_tokens.weight"))
    if embed is not None:
        core.setdefault("shared.weight", embed)
        core.setdefault("encoder.embed_tokens.weight", embed)
    return {k: core[k] for k in model.state_dict() if k in core}
