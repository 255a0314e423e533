"""Control model files: what a ControlNet, T2I-Adapter, IP-Adapter or CLIP vision file is, and loading it offline.

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
with an error and never opened. Loading builds every config from the header shapes (or the folder's
``config.json``), so it works with ``HF_HUB_OFFLINE=1`` and never touches the Hub.

Loaded models are cached (``ControlCache``) by (path, mtime_ns of the weights, device, dtype), least recently used
first out, ``CACHE_ENTRIES`` entries at most (a few ControlNets of 1.4-5 GB each is what a GPU holds anyway). The
cached objects are shared: callers must not change them in place (move a copy, or build pipelines that do not).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from webui.families.base import ControlFacts, UnsupportedModelError
from webui.families.registry import best_match, default_families
from webui.families.shapes import ConfigInferenceError, count, has_prefix, need
from webui.models.identify import PICKLE_SUFFIXES, ModelRecord, stamp_of
from webui.models.ldm_names import RESNET_LDM_NAMES
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
CACHE_ENTRIES = 4

PICKLE_REFUSED = (
    "a pickle-based file ({suffix}): control models are only loaded from .safetensors, so no code in a pickle can"
    " run; get the .safetensors version of this model (most are published as one)"
)
_CN_ORIGINAL_PREFIX = "control_model."
_T2I_TYPES = {8: "full_adapter", 16: "full_adapter_xl"}  # diffusers' adapter class per unshuffle factor
# CLIP vision towers whose head count / activation the shapes cannot show (OpenAI ViT-L, OpenCLIP ViT-H, bigG).
_CLIP_VISION = {
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
    prefix = next((p for p in (_CN_ORIGINAL_PREFIX, "") if p + "input_hint_block.0.weight" in keys), None)
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
    downscale = _unshuffle(cin)
    facts = ControlFacts("t2i_adapter", "unet", downscale=downscale)
    return _Found("t2i_adapter", "light" if light else "full", layout, facts, {"input_width": cin})


def _unshuffle(cin: int) -> int | None:
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
    variant = _CLIP_VISION.get(hidden, ("",))[0]
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
    for hidden, (variant, _, _) in _CLIP_VISION.items():
        projection = {1280: 1024, 1664: 1280, 1024: 768}[hidden]
        if (output == "image_embeds" and width == projection) or (output == "hidden_states" and width == hidden):
            info["encoder"] = variant
            return


def identify_control_folder(folder: Path, expect: str | None = None, families: Any = None) -> ModelRecord:
    """The record of a model folder (``config.json`` + weights) in a control model folder."""
    folder = Path(folder)
    config = _folder_config(folder)
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


def _folder_config(folder: Path) -> dict:
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

    ip_record = _record_of(ip_entry)
    for entry in encoders:
        record = _record_of(entry)
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


def shape_mismatch(loaded: LoadedControl, denoiser: Any) -> str | None:
    """Why a loaded control model does not fit the loaded denoiser (a UNet or SD3 transformer), e.g. a released
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


# --- loading -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedControl:
    """A loaded control model. ``model``: a diffusers ``ControlNetModel`` / ``ControlNetUnionModel`` /
    ``SD3ControlNetModel`` / ``T2IAdapter``, or for an IP-Adapter the state dict ``{"image_proj": {...},
    "ip_adapter": {...}}`` that ``pipeline.load_ip_adapter(model, subfolder="", weight_name="",
    image_encoder_folder=None)`` takes. Shared by the cache: do not change it in place."""

    kind: str
    family: str | None
    variant: str
    model: Any
    path: Path
    info: Mapping[str, Any]


class ControlCache:
    """Loaded control models and image encoders by (path, mtime_ns, device, dtype); at most ``max_entries``,
    the least recently used dropped first. Thread-safe; a file changed on disk is loaded again."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max(1, int(max_entries))
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, LoadedControl] = OrderedDict()

    def get(self, key: tuple) -> LoadedControl | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: LoadedControl) -> None:
        with self._lock:
            for old in [k for k in self._items if k[0] == key[0] and k != key and k[1] != key[1]]:
                del self._items[old]  # an older version of the same file
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_DEFAULT_CACHE = ControlCache()


def _record_of(entry: Any) -> ModelRecord:
    if isinstance(entry, ModelRecord):
        return entry
    record = getattr(entry, "record", None)
    if isinstance(record, ModelRecord):
        return record
    raise TypeError(f"expected a catalog entry or ModelRecord, got {type(entry).__name__}")


def _current_record(entry: Any, expect: str) -> ModelRecord:
    from webui.models.identify import identify, is_current

    if isinstance(entry, (str, Path)):
        return identify(Path(entry), expect=expect)
    record = _record_of(entry)
    return record if is_current(record) else identify(record.path, expect=expect)


def _weights_path(record: ModelRecord) -> Path:
    if record.format == "diffusers":
        weights = folder_weights(record.path)
        if weights is None:
            raise ModelFileError(record.path, "the model folder has no .safetensors weights")
        return weights
    return record.path


def load_control(
    entry: Any, device: Any = "cpu", dtype: Any = None, *, cache: ControlCache | None = None
) -> LoadedControl:
    """Load a ControlNet / T2I-Adapter / IP-Adapter (``entry``: a catalog entry, its ``ModelRecord`` or a path) on
    ``device`` in ``dtype`` (None: as stored, float32 for fp32 files). Offline; ``ModelLoadError`` says why not."""
    record = _current_record(entry, "control")
    if record.kind not in CATALOG_KINDS["control"] and record.usable:
        from webui.models.loader import ModelLoadError

        raise ModelLoadError(
            record.path, f"this is a {label(record.kind)}, not a ControlNet, T2I-Adapter or IP-Adapter"
        )
    return _cached(record, device, dtype, cache, _load_control)


def load_image_encoder(entry: Any, device: Any = "cpu", dtype: Any = None, *, cache: ControlCache | None = None) -> Any:
    """A ``transformers.CLIPVisionModelWithProjection`` from models/clip_vision (single file or folder), in eval mode."""
    record = _current_record(entry, "clip_vision")
    if record.kind != "clip_vision" and record.usable:
        from webui.models.loader import ModelLoadError

        raise ModelLoadError(record.path, f"this is a {label(record.kind)}, not a CLIP vision encoder")
    return _cached(record, device, dtype, cache, _load_clip_vision).model


def _cached(record: ModelRecord, device: Any, dtype: Any, cache: ControlCache | None, load) -> LoadedControl:
    from webui.models.loader import ModelLoadError, guard

    if record.error:
        raise ModelLoadError(record.path, record.reason)
    cache = _DEFAULT_CACHE if cache is None else cache
    weights = _weights_path(record)
    try:
        mtime = weights.stat().st_mtime_ns
    except OSError as exc:
        raise ModelLoadError(record.path, f"cannot be read ({exc.strerror or exc})") from None
    key = (str(record.path.resolve()), mtime, str(device), str(dtype))
    hit = cache.get(key)
    if hit is not None:
        return hit
    loaded = guard(record.path, lambda: load(record, weights, device, dtype), f"loading the {label(record.kind)}")
    cache.put(key, loaded)
    return loaded


def _read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _family(record: ModelRecord):
    return default_families().get(record.family) if record.family else None


def _load_control(record: ModelRecord, weights: Path, device: Any, dtype: Any) -> LoadedControl:
    import torch

    state = _read_tensors(weights)
    config = _folder_config(record.path) if record.format == "diffusers" else None
    if record.kind == "ip_adapter":
        model = {
            part: {
                k[len(part) + 1 :]: v.to(device, dtype or v.dtype) for k, v in state.items() if k.startswith(part + ".")
            }
            for part in ("image_proj", "ip_adapter")
        }
    elif record.kind == "t2i_adapter":
        model = _build_t2i(record, state, config)
    else:
        model = _build_controlnet(record, state, config)
    if isinstance(model, torch.nn.Module):
        model = _move(model, device, dtype)
        model.eval()
        _refuse_nonfinite(record, model)
    return LoadedControl(record.kind, record.family, record.variant, model, record.path, dict(record.info))


def _move(model: Any, device: Any, dtype: Any) -> Any:
    """``model`` on ``device`` in ``dtype`` (None: as loaded); no cast when it already is in it."""
    if dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        return model.to(device=device, dtype=dtype)
    return model.to(device)


def _refuse_nonfinite(record: ModelRecord, model: Any) -> None:
    from webui.security.weights import nonfinite_message, nonfinite_weights

    bad = nonfinite_weights({record.kind: model})
    if bad:
        raise ModelFileError(record.path, nonfinite_message(bad))


def _instantiate(cls: Any, config: Mapping[str, Any], state: dict) -> Any:
    """``cls(**config)`` with ``state`` loaded strictly; built on the meta device (no random init of big models)
    unless it has buffers the file does not carry."""
    import inspect

    import torch

    accepted = inspect.signature(cls.__init__).parameters
    clean = {k: v for k, v in config.items() if not k.startswith("_") and k in accepted}
    with torch.device("meta"):
        model = cls.from_config(clean)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ModelFileError(
            Path("model"),
            f"its tensors do not match the architecture read from it (missing {sorted(missing)[:3]},"
            f" unexpected {sorted(unexpected)[:3]})",
        )
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model = cls.from_config(clean)
        model.load_state_dict(state, strict=True)
    return model


# --- ControlNet ----------------------------------------------------------------------------------------

_RESNET_FROM_LDM = {ldm: diffusers for diffusers, ldm in RESNET_LDM_NAMES.items()}
_CN_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "input_hint_block.0": "controlnet_cond_embedding.conv_in",
    "middle_block_out.0": "controlnet_mid_block",
}


def _resnet_name(parts: list[str]) -> str:
    for n in (2, 1):
        head = ".".join(parts[:n])
        if head in _RESNET_FROM_LDM:
            return ".".join([_RESNET_FROM_LDM[head], *parts[n:]])
    raise ConfigInferenceError(f"unexpected resnet parameter {'.'.join(parts)!r}")


def controlnet_key_from_original(key: str, layers_per_block: int, hint_last: int) -> str:
    """The diffusers name of one lllyasviel/A1111 ControlNet key (``control_model.`` already removed)."""
    for old, new in _CN_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    parts = key.split(".")
    head = parts[0]
    if head == "input_hint_block":
        i, rest = int(parts[1]), ".".join(parts[2:])
        if i == hint_last:
            return f"controlnet_cond_embedding.conv_out.{rest}"
        return f"controlnet_cond_embedding.blocks.{i // 2 - 1}.{rest}"
    if head == "zero_convs":
        return f"controlnet_down_blocks.{parts[1]}.{'.'.join(parts[3:])}"
    if head == "input_blocks":
        block, j = divmod(int(parts[1]) - 1, layers_per_block + 1)
        if j == layers_per_block and parts[2:4] == ["0", "op"]:
            return f"down_blocks.{block}.downsamplers.0.conv.{'.'.join(parts[4:])}"
        if parts[2] == "0":
            return f"down_blocks.{block}.resnets.{j}.{_resnet_name(parts[3:])}"
        if parts[2] == "1":
            return f"down_blocks.{block}.attentions.{j}.{'.'.join(parts[3:])}"
    if head == "middle_block":
        m = int(parts[1])
        if m in (0, 2):
            return f"mid_block.resnets.{m // 2}.{_resnet_name(parts[2:])}"
        if m == 1:
            return f"mid_block.attentions.0.{'.'.join(parts[2:])}"
    raise ConfigInferenceError(f"no diffusers name for ControlNet key {key!r}")


def controlnet_from_original(state: Mapping[str, Any], prefix: str = _CN_ORIGINAL_PREFIX) -> dict:
    """An original-layout ControlNet state dict (prefixed or not) under diffusers names."""
    body = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    rx = re.compile(r"input_blocks\.(\d+)\.0\.op\.weight$")
    downs = sorted(int(m.group(1)) for k in body if (m := rx.match(k)))
    n_input = count(body, "input_blocks.")
    layers = downs[0] - 1 if downs else n_input - 1
    if layers < 1:
        raise ConfigInferenceError(f"unexpected ControlNet layout: downsamplers at input blocks {downs}")
    hint_last = count(body, "input_hint_block.") - 1
    return {controlnet_key_from_original(k, layers, hint_last): v for k, v in body.items()}


def controlnet_config(
    shapes: Mapping[str, tuple[int, ...]], family: Any, info: Mapping[str, Any] | None = None
) -> dict:
    """The diffusers config of a (plain or Union) UNet ControlNet from its diffusers-named tensor shapes."""
    info = info or {}
    levels = count(shapes, "down_blocks.")
    layers = count(shapes, "down_blocks.0.resnets.")
    if not levels or not layers:
        raise ConfigInferenceError("no down blocks found")
    channels = [need(shapes, f"down_blocks.{b}.resnets.0.conv1.weight")[0] for b in range(levels)]
    attn = [has_prefix(shapes, f"down_blocks.{b}.attentions.") for b in range(levels)]
    depths = [
        count(shapes, f"down_blocks.{b}.attentions.0.transformer_blocks.") if a else 1 for b, a in enumerate(attn)
    ]
    mid_attn = has_prefix(shapes, "mid_block.attentions.")
    mid_depth = count(shapes, "mid_block.attentions.0.transformer_blocks.")
    if mid_attn and mid_depth != depths[-1]:
        if attn[-1]:
            raise ConfigInferenceError("the mid block's transformer depth differs from the last level's")
        depths[-1] = mid_depth
    n_blocks = count(shapes, "controlnet_cond_embedding.blocks.")
    embedding = [need(shapes, "controlnet_cond_embedding.conv_in.weight")[0]]
    embedding += [need(shapes, f"controlnet_cond_embedding.blocks.{2 * k + 1}.weight")[0] for k in range(n_blocks // 2)]
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    proj_in = next(
        (s for k, s in shapes.items() if k.endswith("proj_in.weight") and k.startswith(("down_blocks.", "mid_block."))),
        None,
    )
    config: dict = {
        "in_channels": need(shapes, "conv_in.weight")[1],
        "conditioning_channels": need(shapes, "controlnet_cond_embedding.conv_in.weight")[1],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_attn else "UNetMidBlock2D",  # (Union: always cross-attn)
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "cross_attention_dim": context or (family.reference.get("cross_attention_dim", 768) if family else 768),
        "use_linear_projection": bool(proj_in and len(proj_in) == 2),
        "conditioning_embedding_out_channels": embedding,
        "norm_num_groups": 32,
    }
    reference = family.reference if family is not None else {}
    if "heads" in reference:
        config["attention_head_dim"] = int(reference["heads"])
    else:
        head_dim = int(reference.get("head_dim", 64))
        config["attention_head_dim"] = [max(1, c // head_dim) for c in channels]
    if family is not None and family.upcast_attention:
        config["upcast_attention"] = True
    adm = shapes.get("add_embedding.linear_1.weight")
    if adm:
        if family is None or not hasattr(family, "added_embedding_config"):
            raise ConfigInferenceError("an added embedding, but no family that has one")
        config.update(family.added_embedding_config(adm[1]))
    if info.get("global_pool_conditions"):
        config["global_pool_conditions"] = True
    if "task_embedding" in shapes:
        n_types, trans_channels = need(shapes, "task_embedding")
        config.update(
            num_control_type=n_types,
            num_trans_channel=trans_channels,
            num_trans_layer=count(shapes, "transformer_layes."),
            num_proj_channel=need(shapes, "spatial_ch_projs.weight")[0],
        )
    return config


def _build_controlnet(record: ModelRecord, state: dict, config: dict | None) -> Any:
    import diffusers

    family = _family(record)
    if record.info.get("extra_conditioning_channels") is not None or "controlnet_blocks.0.weight" in state:
        if record.info.get("layout") == "original":
            state = sd3_controlnet_from_original(state)
        config = config or sd3_controlnet_config(_shapes(state), family)
        return _instantiate(diffusers.SD3ControlNetModel, config, state)
    if record.info.get("layout") == "original":
        state = controlnet_from_original(state, record.denoiser_prefix)
    cls = diffusers.ControlNetUnionModel if record.variant == "union" else diffusers.ControlNetModel
    if config is None:
        config = controlnet_config(_shapes(state), family, record.info)
    return _instantiate(cls, config, state)


# --- SD3 ControlNet --------------------------------------------------------------------------------------


def sd3_controlnet_from_original(state: Mapping[str, Any]) -> dict:
    """Stability's SD3.5 Large ControlNet keys (``attn.qkv``, ``mlp.fc1``, ``adaLN_modulation.1``) under diffusers
    names, as diffusers' ``scripts/convert_sd3_controlnet_to_diffusers.py`` maps them (q/k/v split from qkv)."""
    out: dict = {}
    rename = {
        "attn.proj.": "attn.to_out.0.",
        "mlp.fc1.": "ff.net.0.proj.",
        "mlp.fc2.": "ff.net.2.",
        "adaLN_modulation.1.": "norm1.linear.",
        "attn.ln_q.": "attn.norm_q.",
        "attn.ln_k.": "attn.norm_k.",
    }
    for key, value in state.items():
        if ".attn.qkv." in key:
            q, k, v = value.chunk(3, dim=0)
            head, tail = key.split(".attn.qkv.")
            for name, part in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"{head}.attn.{name}.{tail}"] = part
            continue
        for old, new in rename.items():
            if "." + old in key:
                key = key.replace("." + old, "." + new)
                break
        out[key] = value
    return out


def sd3_controlnet_config(shapes: Mapping[str, tuple[int, ...]], family: Any) -> dict:
    inner, _ = need(shapes, "controlnet_blocks.0.weight")
    head_dim = int(family.reference.get("head_dim", 64)) if family is not None else 64
    _, cin_total, patch, _ = need(shapes, "pos_embed_input.proj.weight")
    use_pos = "pos_embed.proj.weight" in shapes
    in_ch = need(shapes, "pos_embed.proj.weight")[1] if use_pos else (family.latent_channels if family else 16)
    context = shapes.get("context_embedder.weight")
    pos = shapes.get("pos_embed.pos_embed")
    max_size = math.isqrt(pos[1]) if pos else None
    dual_rx = re.compile(r"transformer_blocks\.(\d+)\.attn2\.to_q\.weight$")
    return {
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_ch,
        "out_channels": in_ch,
        "num_layers": count(shapes, "transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": context[1] if context else None,
        "caption_projection_dim": context[0] if context else inner,
        "pooled_projection_dim": need(shapes, "time_text_embed.text_embedder.linear_1.weight")[1],
        "pos_embed_max_size": max_size,
        "extra_conditioning_channels": cin_total - in_ch,
        "dual_attention_layers": tuple(sorted(int(m.group(1)) for k in shapes if (m := dual_rx.match(k)))),
        "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in shapes else None,
        "pos_embed_type": "sincos" if use_pos else None,
        "use_pos_embed": use_pos,
        "force_zeros_for_pooled_projection": context is not None,
    }


# --- T2I-Adapter -------------------------------------------------------------------------------------------


def t2i_from_original(state: Mapping[str, Any]) -> dict:
    """TencentARC's T2I-Adapter keys (``conv_in``, ``body.N.*``) under diffusers names (``adapter.body.L.resnets.J``)."""
    n_body = count(state, "body.")
    starts = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.") and ".in_conv." in k})
    per_level = next((n for n in range(n_body, 0, -1) if n_body % n == 0 and all(s % n == 0 for s in starts)), 1)
    out: dict = {}
    for key, value in state.items():
        if key.startswith("conv_in."):
            out["adapter." + key] = value
            continue
        parts = key.split(".")
        if parts[0] != "body":
            raise ConfigInferenceError(f"unexpected T2I-Adapter key {key!r}")
        level, j = divmod(int(parts[1]), per_level)
        rest = ".".join(parts[2:])
        if parts[2] == "in_conv":
            out[f"adapter.body.{level}.{rest}"] = value
        else:
            out[f"adapter.body.{level}.resnets.{j}.{rest}"] = value
    return out


def t2i_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    levels = count(shapes, "adapter.body.")
    cin = need(shapes, "adapter.conv_in.weight")[1]
    downscale = _unshuffle(cin)
    if downscale is None:
        raise ConfigInferenceError(f"a first layer reading {cin} channels is not a 1- or 3-channel image")
    return {
        "in_channels": cin // (downscale * downscale),
        "channels": [need(shapes, f"adapter.body.{i}.resnets.0.block1.weight")[0] for i in range(levels)],
        "num_res_blocks": count(shapes, "adapter.body.0.resnets."),
        "downscale_factor": downscale,
        "adapter_type": _T2I_TYPES[downscale],
    }


def _build_t2i(record: ModelRecord, state: dict, config: dict | None) -> Any:
    import diffusers

    if record.info.get("layout") == "original":
        state = t2i_from_original(state)
    if config is None:
        if record.variant == "light":
            raise ConfigInferenceError("a light T2I-Adapter single file (use its diffusers folder with config.json)")
        config = t2i_config(_shapes(state))
    return _instantiate(diffusers.T2IAdapter, config, state)


# --- CLIP vision --------------------------------------------------------------------------------------------


def clip_vision_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A ``CLIPVisionConfig`` dict from the tensor shapes (heads and activation of the known towers from a table)."""
    p = "vision_model."
    hidden, channels, patch, _ = need(shapes, p + "embeddings.patch_embedding.weight")
    positions = need(shapes, p + "embeddings.position_embedding.weight")[0]
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise ConfigInferenceError(f"{positions} position embeddings are not a square grid plus the class token")
    _, heads, act = _CLIP_VISION.get(hidden, ("", max(1, hidden // 64), "gelu"))
    return {
        "hidden_size": hidden,
        "intermediate_size": need(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": count(shapes, p + "encoder.layers."),
        "num_attention_heads": heads,
        "num_channels": channels,
        "image_size": side * patch,
        "patch_size": patch,
        "projection_dim": need(shapes, "visual_projection.weight")[0],
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }


def _load_clip_vision(record: ModelRecord, weights: Path, device: Any, dtype: Any) -> LoadedControl:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = {  # the vision tower only (a whole CLIPModel file also has the text tower)
        k: v
        for k, v in _read_tensors(weights).items()
        if k.startswith(("vision_model.", "visual_projection.")) and not k.endswith("position_ids")
    }
    values = clip_vision_config(_shapes(state))
    if record.format == "diffusers":
        given = _folder_config(record.path)
        values.update({k: given[k] for k in ("num_attention_heads", "hidden_act", "layer_norm_eps") if k in given})
    config = CLIPVisionConfig(**values)
    model = CLIPVisionModelWithProjection(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelFileError(
            record.path,
            f"its tensors do not match a CLIP vision model (missing {missing[:3]}, unexpected {unexpected[:3]})",
        )
    model = _move(model, device, dtype)
    model.eval()
    _refuse_nonfinite(record, model)
    return LoadedControl("clip_vision", None, record.variant, model, record.path, dict(record.info))


def stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a control file, or of a model folder's weights (``identify.stamp_of``)."""
    return stamp_of(path)


__all__ = [
    "CATALOG_KINDS",
    "CONTROL_KINDS",
    "PICKLE_SUFFIXES",
    "ControlCache",
    "LoadedControl",
    "catalog_kind",
    "detect",
    "encoder_fits",
    "family_mismatch",
    "find_image_encoder",
    "identify_control_file",
    "identify_control_folder",
    "load_control",
    "load_image_encoder",
    "shape_mismatch",
]
