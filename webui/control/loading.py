"""Loading control models offline: ControlNet, T2I-Adapter, IP-Adapter and CLIP vision files as diffusers models.

Every config is built from the header shapes (or a model folder's ``config.json``), so loading works with
``HF_HUB_OFFLINE=1`` and never touches the Hub; original-layout files (lllyasviel/A1111 ``control_model.*``,
TencentARC, Stability's SD3.5 ControlNets) have their keys renamed to diffusers' here. What a file is, and whether
it fits the loaded model, is ``webui.control.files``.

Loaded models are cached (``ControlCache``) by (path, mtime_ns of the weights, device, dtype), least recently used
first out, ``CACHE_ENTRIES`` entries at most (a few ControlNets of 1.4-5 GB each is what a GPU holds anyway). The
cached objects are shared: callers must not change them in place (move a copy, or build pipelines that do not).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.control.files import (
    CATALOG_KINDS,
    CLIP_VISION_TOWERS,
    CN_ORIGINAL_PREFIX,
    folder_config,
    folder_weights,
    label,
    record_of,
    unshuffle_factor,
)
from webui.families.registry import default_families
from webui.families.shapes import ConfigInferenceError, count, has_prefix, need
from webui.models.identify import ModelRecord
from webui.models.ldm_names import RESNET_LDM_NAMES
from webui.models.safetensors_header import ModelFileError

log = logging.getLogger(__name__)

CACHE_ENTRIES = 4
_T2I_TYPES = {8: "full_adapter", 16: "full_adapter_xl"}  # diffusers' adapter class per unshuffle factor



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



def _current_record(entry: Any, expect: str) -> ModelRecord:
    from webui.models.identify import identify, is_current

    if isinstance(entry, (str, Path)):
        return identify(Path(entry), expect=expect)
    record = record_of(entry)
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
    ``device`` in ``dtype`` (None: as stored, float32 for fp32 files). Offline; ``ModelLoadError`` says why not.
    ``cache``: where loaded models are kept and found again (the extension owns one); None loads every time."""
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
    weights = _weights_path(record)
    try:
        mtime = weights.stat().st_mtime_ns
    except OSError as exc:
        raise ModelLoadError(record.path, f"cannot be read ({exc.strerror or exc})") from None
    key = (str(record.path.resolve()), mtime, str(device), str(dtype))
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    loaded = guard(record.path, lambda: load(record, weights, device, dtype), f"loading the {label(record.kind)}")
    if cache is not None:
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
    config = folder_config(record.path) if record.format == "diffusers" else None
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


def controlnet_from_original(state: Mapping[str, Any], prefix: str = CN_ORIGINAL_PREFIX) -> dict:
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
    downscale = unshuffle_factor(cin)
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
    _, heads, act = CLIP_VISION_TOWERS.get(hidden, ("", max(1, hidden // 64), "gelu"))
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
        given = folder_config(record.path)
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


__all__ = [
    "CACHE_ENTRIES",
    "ControlCache",
    "LoadedControl",
    "clip_vision_config",
    "controlnet_config",
    "controlnet_from_original",
    "controlnet_key_from_original",
    "load_control",
    "load_image_encoder",
    "sd3_controlnet_config",
    "sd3_controlnet_from_original",
    "t2i_config",
    "t2i_from_original",
]
