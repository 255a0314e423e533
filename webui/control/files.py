"""Control model files: what a ControlNet, T2I-Adapter, IP-Adapter or CLIP vision file is, and whether it fits.

Where they live (``webui.models.catalog.FOLDERS``): catalog kind ``"control"`` reads ``models/ControlNet`` (A1111,
which keeps all three kinds there) and ComfyUI's ``models/controlnet``, ``models/t2i_adapter`` and
``models/ipadapter``; kind ``"clip_vision"`` reads ``models/clip_vision``. Each file or model folder
(``config.json`` + ``*.safetensors``) gets a ``ModelRecord`` from the one detector (``webui.models.identify``) with
``kind`` in ``CONTROL_KINDS``, the family it was made for (asked of the family adapters, ``match_control``), and
``info["variant"]``:

* ControlNet: ``"plain"``, ``"union"`` (xinsir ControlNet-Union / ProMax, ``info["control_types"]``), ``"inpaint"``
  (SD3 inpainting ControlNets); ``info["layout"]``: ``"original"`` (lllyasviel/A1111 ``control_model.*`` keys),
  ``"single"`` (diffusers keys in one file) or ``"diffusers"`` (a folder);
* T2I-Adapter: ``"full"`` or ``"light"``; ``layout`` ``"original"`` (TencentARC keys), ``"single"``, ``"diffusers"``;
* IP-Adapter (h94 single file, ``image_proj.*`` + ``ip_adapter.*``): ``"plain"``, ``"plus"``, ``"full_face"``;
  ``info["encoder_width"]`` and ``info["encoder_output"]`` say which CLIP vision encoder it needs
  (``image_embeds``: its projection width; ``hidden_states``: its hidden width);
* CLIP vision: ``"vit-h"``, ``"vit-bigg"``, ``"vit-l"`` or ``""``; ``info`` has ``hidden_size``/``projection_dim``.

Nothing is read but the safetensors header while identifying; pickle files (``.pth``/``.ckpt``/``.bin``) are listed
with an error and never opened.

Loading them is ``webui.control.loading``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from webui.families.base import ControlFacts, UnsupportedModelError
from webui.families.registry import best_match, default_families
from webui.models.identify import PICKLE_SUFFIXES, ModelRecord, stamp_of
from webui.models.safetensors_header import ModelFileError, SafetensorsHeader, read_header

log = logging.getLogger(__name__)

CONTROL_KINDS = ("controlnet", "t2i_adapter", "ip_adapter", "clip_vision")
# Catalog kind -> the record kinds it holds.
CATALOG_KINDS: Mapping[str, tuple[str, ...]] = {
    "control": ("controlnet", "t2i_adapter", "ip_adapter"),
    "clip_vision": ("clip_vision",),
}
KIND_LABELS: Mapping[str, str] = {
    "controlnet": "ControlNet",
    "t2i_adapter": "T2I-Adapter",
    "ip_adapter": "IP-Adapter",
    "clip_vision": "CLIP vision encoder",
    "control": "ControlNet / T2I-Adapter / IP-Adapter",
}
# Weight files of a model folder, in the order they are looked for (never .bin: that is pickle).
FOLDER_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
)

CN_ORIGINAL_PREFIX = "control_model."  # the lllyasviel/A1111 layout's key prefix
PICKLE_REFUSED = (
    "a pickle-based file ({suffix}): control models are only loaded from .safetensors, so no code in a pickle can"
    " run; get the .safetensors version of this model (most are published as one)"
)
# CLIP vision towers whose head count / activation the shapes cannot show (OpenAI ViT-L, OpenCLIP ViT-H, bigG).
CLIP_VISION_TOWERS = {
    1024: ("vit-l", 16, "quick_gelu"),
    1280: ("vit-h", 16, "gelu"),
    1664: ("vit-bigg", 16, "gelu"),
}
_CLIP_VISION_FILES = {
    "vit-h": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (h94/IP-Adapter models/image_encoder/model.safetensors)",
    "vit-bigg": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors (h94/IP-Adapter sdxl_models/image_encoder)",
}


def catalog_kind(record_kind: str) -> str | None:
    """The catalog kind a record kind is listed under ("control" for the three control kinds)."""
    return next((kind for kind, kinds in CATALOG_KINDS.items() if record_kind in kinds), None)


def label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " "))


# --- identifying ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    kind: str
    variant: str
    layout: str  # "original", "single", "diffusers"
    facts: ControlFacts | None
    info: dict
    prefix: str = ""


def detect(header: SafetensorsHeader) -> _Found | None:
    """What a header is if it is a control model or CLIP vision encoder; None if it is none of them.
    Raises ``UnsupportedModelError`` for kinds that are recognised but not supported."""
    keys = header.tensors
    for find in (_controlnet_original, _controlnet_diffusers, _sd3_controlnet, _t2i, _ip_adapter, _clip_vision):
        found = find(header, keys)
        if found is not None:
            return found
    if any(k.startswith("lora_controlnet") for k in keys) or "lora_controlnet" in header.metadata:
        raise UnsupportedModelError(header.path, "this is a Control-LoRA (Stability AI), which is not supported yet")
    if any(".lllite_" in k or k.startswith("lllite_") for k in keys):
        raise UnsupportedModelError(header.path, "this is a ControlNet-LLLite (kohya), which is not supported yet")
    return None


def _first_shape(header: SafetensorsHeader, prefix: str, suffix: str) -> tuple[int, ...] | None:
    for k, info in header.tensors.items():
        if k.startswith(prefix) and k.endswith(suffix):
            return info.shape
    return None


def _context(header: SafetensorsHeader, prefix: str) -> int | None:
    shape = _first_shape(header, prefix, "attn2.to_k.weight")
    return shape[1] if shape and len(shape) == 2 else None


def _width(header: SafetensorsHeader, key: str, dim: int = 1) -> int | None:
    shape = header.shape(key)
    return shape[dim] if shape and len(shape) > dim else None


def _controlnet_original(header, keys) -> _Found | None:
    prefix = next((p for p in (CN_ORIGINAL_PREFIX, "") if p + "input_hint_block.0.weight" in keys), None)
    if prefix is None or prefix + "input_blocks.0.0.weight" not in keys:
        return None
    facts = ControlFacts(
        "controlnet", "unet", _context(header, prefix), _width(header, prefix + "label_emb.0.0.weight")
    )
    info = {"hint_channels": _width(header, prefix + "input_hint_block.0.weight")}
    if "shuffle" in header.path.name.lower():  # control_v11e_sd15_shuffle: global pooling, which shapes cannot show
        info["global_pool_conditions"] = True
    return _Found("controlnet", "plain", "original", facts, info, prefix)


def _controlnet_diffusers(header, keys) -> _Found | None:
    if "controlnet_cond_embedding.conv_in.weight" not in keys or "conv_in.weight" not in keys:
        return None
    facts = ControlFacts(
        "controlnet", "unet", _context(header, "down_blocks."), _width(header, "add_embedding.linear_1.weight")
    )
    info: dict = {"hint_channels": _width(header, "controlnet_cond_embedding.conv_in.weight")}
    if "task_embedding" in keys or "control_add_embedding.linear_1.weight" in keys:
        info["control_types"] = _width(header, "task_embedding", 0)
        return _Found("controlnet", "union", "single", facts, info)
    return _Found("controlnet", "plain", "single", facts, info)


def _sd3_controlnet(header, keys) -> _Found | None:
    if "pos_embed_input.proj.weight" not in keys or "controlnet_blocks.0.weight" not in keys:
        return None
    original = any(".attn.qkv." in k for k in keys)
    joint = "context_embedder.weight" in keys
    in_ch = _width(header, "pos_embed.proj.weight") or 16
    extra = (_width(header, "pos_embed_input.proj.weight") or in_ch) - in_ch
    info = {"inner_dim": _width(header, "controlnet_blocks.0.weight", 0), "extra_conditioning_channels": extra}
    variant = "inpaint" if extra > 0 else "plain"
    return _Found(
        "controlnet",
        variant,
        "original" if original else "single",
        ControlFacts("controlnet", "mmdit", joint=joint),
        info,
    )


def _t2i(header, keys) -> _Found | None:
    if "adapter.conv_in.weight" in keys:
        prefix, layout = "adapter.", "single"
    elif "conv_in.weight" in keys and ("body.0.block1.weight" in keys or "body.0.in_conv.weight" in keys):
        prefix, layout = "", "original"
    else:
        return None
    if any(k.startswith("style_embedding") for k in keys):
        raise UnsupportedModelError(header.path, "this is a T2I style adapter, which is not supported")
    light = any(k.startswith((prefix + "body.0.out_conv.", prefix + "body.0.body.")) for k in keys)
    if any(".down_opt.op." in k for k in keys):
        raise UnsupportedModelError(
            header.path, "this T2I-Adapter downsamples with convolutions, which is not supported"
        )
    cin = _width(header, prefix + "conv_in.weight") or 0
    downscale = unshuffle_factor(cin)
    facts = ControlFacts("t2i_adapter", "unet", downscale=downscale)
    return _Found("t2i_adapter", "light" if light else "full", layout, facts, {"input_width": cin})


def unshuffle_factor(cin: int) -> int | None:
    """The pixel-unshuffle factor of a T2I-Adapter whose first conv reads ``cin`` channels (1 or 3 image channels)."""
    for factor in (16, 8):
        if cin % (factor * factor) == 0 and cin // (factor * factor) in (1, 3):
            return factor
    return None


def _ip_adapter(header, keys) -> _Found | None:
    if not (header.has_prefix("image_proj.") and header.has_prefix("ip_adapter.")):
        return None
    if header.has_prefix("image_proj.perceiver_resampler."):
        raise UnsupportedModelError(
            header.path, "this is an IP-Adapter FaceID Plus (needs insightface), which is not supported"
        )
    cross = _first_shape(header, "ip_adapter.", "to_k_ip.weight")
    facts = ControlFacts("ip_adapter", "unet", context_dim=cross[1] if cross and len(cross) == 2 else None)
    info: dict = {"layers": sum(1 for k in keys if k.endswith("to_k_ip.weight"))}
    if "image_proj.latents" in keys:
        variant = "plus"
        info.update(encoder_width=_width(header, "image_proj.proj_in.weight"), encoder_output="hidden_states")
        info["tokens"] = _width(header, "image_proj.latents")
    elif "image_proj.proj.3.weight" in keys:
        variant = "full_face"
        info.update(encoder_width=_width(header, "image_proj.proj.0.weight"), encoder_output="hidden_states")
    elif "image_proj.proj.weight" in keys and "image_proj.norm.weight" in keys:
        variant = "plain"
        info.update(encoder_width=_width(header, "image_proj.proj.weight"), encoder_output="image_embeds")
    elif "image_proj.norm.weight" in keys:
        raise UnsupportedModelError(
            header.path, "this is an IP-Adapter FaceID (needs insightface), which is not supported"
        )
    else:
        raise UnsupportedModelError(header.path, "an IP-Adapter with an image projection this app does not know")
    return _Found("ip_adapter", variant, "single", facts, info)


def _clip_vision(header, keys) -> _Found | None:
    patch = header.shape("vision_model.embeddings.patch_embedding.weight")
    if not patch or len(patch) != 4:
        return None
    hidden = patch[0]
    projection = _width(header, "visual_projection.weight", 0)
    if projection is None:
        raise UnsupportedModelError(
            header.path,
            "this CLIP vision model has no visual projection (IP-Adapters need CLIPVisionModelWithProjection)",
        )
    variant = CLIP_VISION_TOWERS.get(hidden, ("",))[0]
    info = {"hidden_size": hidden, "projection_dim": projection}
    return _Found("clip_vision", variant, "single", None, info)


def identify_control_file(
    header: SafetensorsHeader, expect: str | None = None, families: Any = None, layout: str | None = None
) -> ModelRecord:
    """The record of a control model / CLIP vision single file; ``UnsupportedModelError`` when it is none."""
    found = detect(header)
    if found is None:
        raise UnsupportedModelError(header.path, f"not a {label(expect or 'control')} this app knows")
    return _record(header.path, header, found, "safetensors", families, layout)


def _record(
    path: Path, header: SafetensorsHeader, found: _Found, fmt: str, families: Any, layout: str | None
) -> ModelRecord:
    from webui.models.demo import DEMO_METADATA_KEY

    family = None
    if found.facts is not None:
        adapter = best_match(lambda f: f.match_control(found.facts), families)
        if adapter is None:
            raise UnsupportedModelError(
                path, f"this {label(found.kind)} fits no model family this app knows ({_facts_text(found.facts)})"
            )
        family = adapter.id
    info = {**found.info, "variant": found.variant, "layout": layout or found.layout}
    if found.kind == "ip_adapter":
        _name_encoder(info)
    return ModelRecord(
        path=path,
        kind=found.kind,
        format=fmt,
        family=family,
        denoiser_prefix=found.prefix,
        variant=found.variant,
        info=info,
        demo=header.metadata.get(DEMO_METADATA_KEY) == "true",
    )


def _facts_text(facts: ControlFacts) -> str:
    if facts.kind == "t2i_adapter":
        return f"its first layer reads {facts.downscale or 'an unusual number of'} x pixel blocks"
    if facts.denoiser == "mmdit":
        return "an MMDiT ControlNet"
    text = f"cross-attention {facts.context_dim or 'unknown'} wide"
    return text + (f", added embedding {facts.added_embedding} wide" if facts.added_embedding else "")


def _name_encoder(info: dict) -> None:
    """``info["encoder"]``: the CLIP vision tower the IP-Adapter was trained with, when it is a known one."""
    width, output = info.get("encoder_width"), info.get("encoder_output")
    for hidden, (variant, _, _) in CLIP_VISION_TOWERS.items():
        projection = {1280: 1024, 1664: 1280, 1024: 768}[hidden]
        if (output == "image_embeds" and width == projection) or (output == "hidden_states" and width == hidden):
            info["encoder"] = variant
            return


def identify_control_folder(folder: Path, expect: str | None = None, families: Any = None) -> ModelRecord:
    """The record of a model folder (``config.json`` + weights) in a control model folder."""
    folder = Path(folder)
    config = folder_config(folder)
    weights = folder_weights(folder)
    if weights is None:
        if any(folder.glob("*.safetensors.index.json")):
            raise UnsupportedModelError(
                folder, "a model folder with its weights in several shards is not supported yet; use a single file"
            )
        if any(folder.glob("*.bin")):
            raise UnsupportedModelError(folder, PICKLE_REFUSED.format(suffix=".bin"))
        raise UnsupportedModelError(folder, f"no {' or '.join(FOLDER_WEIGHTS[:2])} in this model folder")
    header = read_header(weights)
    found = detect(header)
    if found is None:
        shown = config.get("_class_name") or ",".join(config.get("architectures") or []) or "(unnamed)"
        raise UnsupportedModelError(folder, f"{str(shown)[:80]} is not a {label(expect or 'control')} this app knows")
    if found.kind == "t2i_adapter" and isinstance(config.get("adapter_type"), str):
        found = replace(found, variant="light" if config["adapter_type"] == "light_adapter" else "full")
    record = _record(folder, header, found, "diffusers", families, "diffusers")
    return replace(record, info={**record.info, "weights": weights.name})


def is_model_folder(folder: Path) -> bool:
    """A folder holding one model in the diffusers/transformers layout (config.json + weights)."""
    return (folder / "config.json").is_file() and (
        folder_weights(folder) is not None or any(folder.glob("*.bin")) or any(folder.glob("*.safetensors.index.json"))
    )


def folder_weights(folder: Path) -> Path | None:
    return next((folder / name for name in FOLDER_WEIGHTS if (folder / name).is_file()), None)


def folder_config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsupportedModelError(folder, "not a model folder: no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(folder, f"cannot read config.json: {exc}") from None
    if not isinstance(data, dict):
        raise UnsupportedModelError(folder, "config.json is not a JSON object")
    return data


def pickle_record(path: Path, expect: str) -> ModelRecord:
    """A pickle file in a control folder: listed, never opened."""
    reason = PICKLE_REFUSED.format(suffix=path.suffix.lower())
    if expect == "clip_vision":  # A1111's clip_h.pth / clip_g.pth
        reason += f", e.g. {_CLIP_VISION_FILES['vit-h']}"
    return ModelRecord(path, expect, "ckpt", error=str(ModelFileError(path, reason)))


def record_of(entry: Any) -> ModelRecord:
    if isinstance(entry, ModelRecord):
        return entry
    record = getattr(entry, "record", None)
    if isinstance(record, ModelRecord):
        return record
    raise TypeError(f"expected a catalog entry or ModelRecord, got {type(entry).__name__}")



# --- IP-Adapter <-> image encoder ----------------------------------------------------------------------


def encoder_fits(ip_record: ModelRecord, encoder_record: ModelRecord) -> bool:
    """The CLIP vision encoder gives what the IP-Adapter's image projection reads."""
    width, output = ip_record.info.get("encoder_width"), ip_record.info.get("encoder_output")
    key = "projection_dim" if output == "image_embeds" else "hidden_size"
    return width is not None and encoder_record.info.get(key) == width


def find_image_encoder(ip_entry: Any, encoders: list[Any]) -> Any:
    """The first usable CLIP vision entry (catalog kind "clip_vision") that fits the IP-Adapter; ``ModelLoadError``
    naming the file to get, and the folder to put it in, when none does."""
    from webui.models.loader import ModelLoadError

    ip_record = record_of(ip_entry)
    for entry in encoders:
        record = record_of(entry)
        if record.usable and record.kind == "clip_vision" and encoder_fits(ip_record, record):
            return entry
    info = ip_record.info
    what = "image embeddings" if info.get("encoder_output") == "image_embeds" else "hidden states"
    wanted = _CLIP_VISION_FILES.get(str(info.get("encoder", "")), "a CLIP vision model with that width")
    raise ModelLoadError(
        ip_record.path,
        f"this IP-Adapter needs a CLIP vision encoder with {info.get('encoder_width')}-wide {what}: put"
        f" {wanted} in models/clip_vision",
    )


# --- does it fit the loaded model? --------------------------------------------------------------------


def family_mismatch(record: Any, family: Any, families: Any = None) -> str | None:
    """Why a control model (entry, record or ``LoadedControl``) cannot be used with a model of ``family`` (an adapter
    or id), in words; None when the families agree."""
    registry = families if families is not None else default_families()
    record = getattr(record, "record", record)  # a catalog entry: its record (whose kind is the model's)
    wanted = family if isinstance(family, str) else family.id
    have = record.family
    if have is None or have == wanted:
        return None
    kind = label(record.kind)
    name = Path(record.path).name
    return (
        f"the {kind} {name} is for {_family_label(registry, have)}; the loaded model is"
        f" {_family_label(registry, wanted)}: pick {'an' if kind[0] in 'AEIOU' else 'a'} {kind} made for"
        f" {_family_label(registry, wanted)}"
    )


def _family_label(registry: Any, family_id: str) -> str:
    try:
        return registry.get(family_id).label
    except Exception:  # noqa: BLE001 - an unknown id is shown as is
        return family_id


def shape_mismatch(loaded: Any, denoiser: Any) -> str | None:
    """Why a loaded control model (``loading.LoadedControl``) does not fit the loaded denoiser (a UNet or SD3 transformer), e.g. a released
    ControlNet on a tiny demo model of the same family; None when the widths agree."""
    config = denoiser.config
    name = loaded.path.name
    kind = label(loaded.kind)
    model = loaded.model
    if loaded.kind == "ip_adapter":
        first = next((v for k, v in model["ip_adapter"].items() if k.endswith("to_k_ip.weight")), None)
        if first is not None and first.shape[1] != config.get("cross_attention_dim"):
            return (
                f"the {kind} {name} reads a {first.shape[1]}-wide text context; the loaded model's is"
                f" {config.get('cross_attention_dim')} wide"
            )
        return None
    mine = model.config
    if loaded.kind == "t2i_adapter":
        widths, channels = list(config.get("block_out_channels") or []), list(mine.get("channels") or [])
        if channels[: len(widths)] != widths[: len(channels)]:
            return f"the {kind} {name} has channels {channels}; the loaded UNet has {widths}"
        return None
    if "block_out_channels" not in mine:  # SD3: the transformer's width
        have = mine["num_attention_heads"] * mine["attention_head_dim"]
        want = config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0)
        if have != want:
            return f"the {kind} {name} is {have} wide; the loaded transformer is {want} wide"
        return None
    for key in ("cross_attention_dim", "block_out_channels", "projection_class_embeddings_input_dim"):
        if _norm(mine.get(key)) != _norm(config.get(key)):
            return f"the {kind} {name} has {key} {_norm(mine.get(key))}; the loaded UNet has {_norm(config.get(key))}"
    return None


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a control file, or of a model folder's weights (``identify.stamp_of``)."""
    return stamp_of(path)


__all__ = [
    "CATALOG_KINDS",
    "CONTROL_KINDS",
    "PICKLE_SUFFIXES",
    "catalog_kind",
    "detect",
    "encoder_fits",
    "family_mismatch",
    "find_image_encoder",
    "identify_control_file",
    "identify_control_folder",
    "shape_mismatch",
]
