"""Diffusers configs rebuilt from a single-file checkpoint's tensor shapes.

A single-file checkpoint (original LDM/SGM/SD3 key layout) carries tensors, not a
config. ``infer_configs`` reads the dimensions of every part from the shapes and
fills what shapes cannot show with the family's conventions
(docs/MODEL_CONVENTIONS.md). ``webui.models.config_folder`` writes the result as the
folder ``from_single_file`` needs.

Nothing here imports torch or diffusers at import time.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Mapping

from webui.models.detect import (
    DM,
    REFINER_CLIP_G,
    SD1_CLIP_L,
    SD2_OPENCLIP,
    SD3_TE,
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    VAE_PREFIX,
    Detection,
)
from webui.models.families import TEXT_ENCODERS, FamilySpec

Shapes = Mapping[str, tuple[int, ...]]



class ConfigInferenceError(ValueError):
    """The tensor shapes do not describe an architecture these rules can rebuild."""


# --- reference values (the released models) ----------------------------------------------------

_CLIP_COMMON = {
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    # The released configs use these ids; eos_token_id == 2 selects argmax pooling, which finds
    # <|endoftext|> (the highest id) with the real tokenizer.
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_CLIP_REFERENCE = {
    "clip_l": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "projection_dim": 768},
    "clip_g": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "projection_dim": 1280},
    "openclip_h": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "projection_dim": 1024},
}
_CLIP_ACT = {"clip_l": "quick_gelu", "clip_g": "gelu", "openclip_h": "gelu"}
_HEAD_DIM = 64

_T5_REFERENCE = {
    "architectures": ["T5EncoderModel"],
    "model_type": "t5",
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "vocab_size": 32128,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "tie_word_embeddings": False,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

_SCHEDULER_SD = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "trained_betas": None,
}
_SCHEDULER_SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    **_SCHEDULER_SD,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
_SCHEDULERS = {  # per (txt2img) pipeline class
    "StableDiffusionPipeline": {"_class_name": "PNDMScheduler", **_SCHEDULER_SD},
    "StableDiffusionXLPipeline": _SCHEDULER_SDXL,
    "StableDiffusionXLImg2ImgPipeline": _SCHEDULER_SDXL,
    "StableDiffusion3Pipeline": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000},
}

# Pipeline component name of each text encoder slot, per (txt2img) pipeline class.
TEXT_SLOTS: Mapping[str, Mapping[str, str]] = {
    "StableDiffusionPipeline": {"clip_l": "text_encoder", "openclip_h": "text_encoder"},
    "StableDiffusionXLPipeline": {"clip_l": "text_encoder", "clip_g": "text_encoder_2"},
    "StableDiffusionXLImg2ImgPipeline": {"clip_l": "text_encoder", "clip_g": "text_encoder_2"},
    "StableDiffusion3Pipeline": {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"},
}


# --- where each text encoder sits in the original layout ---------------------------------------


def text_encoder_layout(family: FamilySpec, slot: str) -> tuple[str, str]:
    """(key prefix, layout) of a text encoder slot in the family's single-file layout.

    layout is "hf" (transformers keys, ``text_model.`` inside the prefix), "openclip"
    (``transformer.resblocks``...) or "t5".
    """
    if family.denoiser == "mmdit":
        return SD3_TE[slot] + "transformer.", "t5" if slot == "t5xxl" else "hf"
    table = {
        ("sd15", "clip_l"): (SD1_CLIP_L, "hf"),
        ("sd2", "openclip_h"): (SD2_OPENCLIP, "openclip"),
        ("sdxl", "clip_l"): (SDXL_CLIP_L, "hf"),
        ("sdxl", "clip_g"): (SDXL_CLIP_G, "openclip"),
        ("sdxl_refiner", "clip_g"): (REFINER_CLIP_G, "openclip"),
    }
    try:
        return table[(family.id, slot)]
    except KeyError:
        raise ConfigInferenceError(f"no single-file layout known for text encoder {slot!r} of {family.id!r}") from None


def text_slots(family: FamilySpec) -> dict[str, str]:
    """Text encoder slot id -> pipeline component name (``text_encoder``, ``text_encoder_2``...)."""
    names = TEXT_SLOTS.get(family.pipelines["txt2img"])
    if names is None:
        raise ConfigInferenceError(f"unknown pipeline class {family.pipelines['txt2img']!r} for {family.id!r}")
    return {slot: names[slot] for slot in family.text_encoders}


def text_encoder_class(family: FamilySpec, slot: str) -> str:
    kind = TEXT_ENCODERS[slot].kind
    if kind == "t5":
        return "T5EncoderModel"
    # SD3 reads the pooled output of both CLIPs (CLIP-L with an identity projection).
    if kind == "clip_with_projection" or family.denoiser == "mmdit":
        return "CLIPTextModelWithProjection"
    return "CLIPTextModel"


# --- shape helpers -----------------------------------------------------------------------------


def _count(shapes: Shapes, prefix: str) -> int:
    """How many numbered children ``prefix<N>.`` exist (max index + 1)."""
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in shapes if (m := rx.match(k))]
    return max(found) + 1 if found else 0


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _need(shapes: Shapes, key: str) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None:
        raise ConfigInferenceError(f"tensor {key!r} is missing")
    return tuple(shape)


# --- UNet --------------------------------------------------------------------------------------


def _unet_config(shapes: Shapes, family: FamilySpec) -> dict:
    p = DM
    layers, channels, depth_down, depth_up = _unet_levels(shapes)
    attn = [any(d) for d in depth_down]
    config: dict = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": _need(shapes, p + "input_blocks.0.0.weight")[1],
        "out_channels": _need(shapes, p + "out.2.weight")[0],
        "sample_size": family.default_size[0] // 8,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if _has_prefix(shapes, p + "middle_block.") else None,
        "norm_num_groups": 32,
        **_transformer_depths(shapes, depth_down, depth_up),
    }
    ctx = next(
        (s[1] for k, s in shapes.items() if k.startswith(p) and k.endswith("attn2.to_k.weight") and len(s) == 2), None
    )
    config["cross_attention_dim"] = ctx or family.reference.get("cross_attention_dim", 768)
    proj_in = next((s for k, s in shapes.items() if k.startswith(p) and k.endswith(".1.proj_in.weight")), None)
    config["use_linear_projection"] = bool(proj_in and len(proj_in) == 2)
    if "heads" in family.reference:  # SD1.x: a fixed number of heads (diffusers calls it attention_head_dim)
        config["attention_head_dim"] = int(family.reference["heads"])
    else:
        head_dim = int(family.reference.get("head_dim", _HEAD_DIM))
        config["attention_head_dim"] = [max(1, c // head_dim) for c in channels]
    if family.id in _UPCAST_ATTENTION:
        config["upcast_attention"] = True
    time_dim = _need(shapes, p + "time_embed.0.weight")[0]
    if time_dim != 4 * channels[0]:
        config["time_embedding_dim"] = time_dim
    label = shapes.get(p + "label_emb.0.0.weight")
    if label:
        config.update(_text_time(shapes, family, label[1]))
    return config


# SD2.x computes attention in fp32 (its released config says so; shapes cannot).
_UPCAST_ATTENTION = frozenset({"sd2"})


def _unet_levels(shapes: Shapes) -> tuple[int, list[int], list[list[int]], list[list[int]]]:
    """(layers per level, channels per level, transformer depth per down layer, per up layer)."""
    p = DM
    n_input = _count(shapes, p + "input_blocks.")
    rx = re.compile(re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight$")
    downs = sorted(int(m.group(1)) for k in shapes if (m := rx.match(k)))
    layers = downs[0] - 1 if downs else n_input - 1  # each level: L resnet blocks, then a downsampler
    levels = len(downs) + 1
    if layers < 1 or n_input != levels * (layers + 1):
        raise ConfigInferenceError(f"unexpected UNet layout: {n_input} input blocks, downsamplers at {downs}")

    def down(level: int, j: int) -> str:
        return f"{p}input_blocks.{level * (layers + 1) + j + 1}."

    channels = [_need(shapes, down(b, 0) + "0.out_layers.3.weight")[0] for b in range(levels)]
    depth_down = [[_count(shapes, down(b, j) + "1.transformer_blocks.") for j in range(layers)] for b in range(levels)]
    n_up = layers + 1
    depth_up = [
        [_count(shapes, f"{p}output_blocks.{b * n_up + j}.1.transformer_blocks.") for j in range(n_up)]
        for b in range(levels)
    ]
    return layers, channels, depth_down, depth_up


def _transformer_depths(shapes: Shapes, depth_down: list[list[int]], depth_up: list[list[int]]) -> dict:
    """``transformer_layers_per_block`` (one depth per level; the last is also the mid block's) and,
    for distilled UNets (SSD-1B, Vega) whose up path differs, ``reverse_transformer_layers_per_block``."""
    attn = [any(d) for d in depth_down]
    uniform = [d[0] if len(set(d)) == 1 else None for d in depth_down]
    if any(a and u is None for a, u in zip(attn, uniform)):
        raise ConfigInferenceError("UNet levels with different transformer depths per layer are not supported")
    mid_depth = _count(shapes, DM + "middle_block.1.transformer_blocks.")
    if _has_prefix(shapes, DM + "middle_block.") and not mid_depth:
        raise ConfigInferenceError("a UNet mid block without attention is not supported")
    attn_depths = {u for a, u in zip(attn, uniform) if a}
    filler = attn_depths.pop() if len(attn_depths) == 1 else 1  # for levels without attention
    depths = [u if a else filler for a, u in zip(attn, uniform)]
    if not attn[-1]:
        depths[-1] = mid_depth or filler
    elif mid_depth and mid_depth != depths[-1]:
        raise ConfigInferenceError("the mid block's transformer depth differs from the last level's")
    out: dict = {"transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths}
    levels = len(depths)
    default_up = [[depths[levels - 1 - b] if attn[levels - 1 - b] else 0] * len(depth_up[0]) for b in range(levels)]
    if depth_up != default_up:
        out["reverse_transformer_layers_per_block"] = [[max(n, 1) for n in row] for row in depth_up]
    return out


def _text_time(shapes: Shapes, family: FamilySpec, adm_in: int) -> dict:
    """SDXL's added conditioning: pooled text embedding + 6 (base) or 5 (refiner) size numbers."""
    n_numbers = 5 if family.id == "sdxl_refiner" else 6
    pooled = _pooled_dim(shapes, family)
    if pooled is None or (adm_in - pooled) <= 0 or (adm_in - pooled) % n_numbers:
        pooled = adm_in - 256 * n_numbers  # the released models' 256 channels per number
    return {
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": (adm_in - pooled) // n_numbers,
        "projection_class_embeddings_input_dim": adm_in,
    }


def _pooled_dim(shapes: Shapes, family: FamilySpec) -> int | None:
    if "clip_g" not in family.text_encoders:
        return None
    prefix, layout = text_encoder_layout(family, "clip_g")
    if layout == "openclip":
        proj = shapes.get(prefix + "text_projection")
        return proj[1] if proj else None
    proj = shapes.get(prefix + "text_projection.weight")
    return proj[0] if proj else None


# --- SD3 MMDiT ---------------------------------------------------------------------------------


def _mmdit_config(shapes: Shapes, detection: Detection, family: FamilySpec) -> dict:
    p = detection.denoiser_prefix
    hidden, in_ch, patch, _ = _need(shapes, p + "x_embedder.proj.weight")
    head_dim = int(family.reference.get("head_dim", _HEAD_DIM))
    n_pos = _need(shapes, p + "pos_embed")[1]
    max_size = math.isqrt(n_pos)
    if max_size * max_size != n_pos:
        raise ConfigInferenceError(f"pos_embed has {n_pos} positions, not a square")
    caption, joint = _need(shapes, p + "context_embedder.weight")
    layers = _count(shapes, p + "joint_blocks.")
    dual = sorted(
        int(m.group(1)) for k in shapes if (m := re.match(re.escape(p) + r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$", k))
    )
    qk = any(k.startswith(p + "joint_blocks.0.x_block.attn.ln_q") for k in shapes)
    out = _need(shapes, p + "final_layer.linear.weight")[0] // (patch * patch)
    return {
        "_class_name": "SD3Transformer2DModel",
        "sample_size": min(family.default_size[0] // 8, max_size * patch),
        "patch_size": patch,
        "in_channels": in_ch,
        "out_channels": out,
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": joint,
        "caption_projection_dim": caption,
        "pooled_projection_dim": _need(shapes, p + "y_embedder.mlp.0.weight")[1],
        "pos_embed_max_size": max_size,
        "qk_norm": "rms_norm" if qk else None,
        "dual_attention_layers": dual,
    }


# --- VAE ---------------------------------------------------------------------------------------


def _vae_config(shapes: Shapes, family: FamilySpec) -> dict:
    p = VAE_PREFIX
    if not _has_prefix(shapes, p + "encoder."):
        return _reference_vae(family)
    levels = _count(shapes, p + "encoder.down.")
    channels = [_need(shapes, f"{p}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)]
    config = {
        "_class_name": "AutoencoderKL",
        "in_channels": _need(shapes, p + "encoder.conv_in.weight")[1],
        "out_channels": _need(shapes, p + "decoder.conv_out.weight")[0],
        "latent_channels": _need(shapes, p + "decoder.conv_in.weight")[1],
        "block_out_channels": channels,
        "layers_per_block": _count(shapes, p + "encoder.down.0.block."),
        "use_quant_conv": p + "quant_conv.weight" in shapes,
        "use_post_quant_conv": p + "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": _has_prefix(shapes, p + "encoder.mid.attn_1."),
    }
    return _vae_common(config, family)


def _reference_vae(family: FamilySpec) -> dict:
    sd3 = family.latent_channels == 16
    config = {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": family.latent_channels,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "use_quant_conv": not sd3,
        "use_post_quant_conv": not sd3,
        "mid_block_add_attention": True,
    }
    return _vae_common(config, family)


def _vae_common(config: dict, family: FamilySpec) -> dict:
    n = len(config["block_out_channels"])
    config.update(
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        act_fn="silu",
        norm_num_groups=32,
        sample_size=family.default_size[0],
        scaling_factor=family.vae_scaling_factor,
        shift_factor=family.vae_shift_factor,
        force_upcast=True,
    )
    return config


# --- text encoders -----------------------------------------------------------------------------


def clip_config_from_hf(shapes: Shapes, slot: str, cls: str, prefix: str = "") -> dict | None:
    """CLIP text config from transformers-layout keys (``[prefix][text_model.]embeddings...``)."""
    inner = prefix + "text_model." if _has_prefix(shapes, prefix + "text_model.") else prefix
    tok = shapes.get(inner + "embeddings.token_embedding.weight")
    if tok is None:
        return None
    hidden = tok[1]
    proj = shapes.get(prefix + "text_projection.weight")
    return _clip(
        slot,
        cls,
        vocab_size=tok[0],
        hidden_size=hidden,
        max_position_embeddings=_need(shapes, inner + "embeddings.position_embedding.weight")[0],
        num_hidden_layers=_count(shapes, inner + "encoder.layers."),
        intermediate_size=_need(shapes, inner + "encoder.layers.0.mlp.fc1.weight")[0],
        projection_dim=proj[0] if proj else hidden,
    )


def _clip_from_openclip(shapes: Shapes, slot: str, cls: str, prefix: str) -> dict | None:
    tok = shapes.get(prefix + "token_embedding.weight")
    if tok is None:
        return None
    proj = shapes.get(prefix + "text_projection")
    return _clip(
        slot,
        cls,
        vocab_size=tok[0],
        hidden_size=tok[1],
        max_position_embeddings=_need(shapes, prefix + "positional_embedding")[0],
        # SD2 reads OpenCLIP-H's penultimate layer: diffusers drops the last block (resblocks.23)
        num_hidden_layers=_count(shapes, prefix + "transformer.resblocks.") - (slot == "openclip_h"),
        intermediate_size=_need(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        projection_dim=proj[1] if proj else tok[1],
    )


def _clip(slot: str, cls: str, **dims: int) -> dict:
    config = {"architectures": [cls], **_CLIP_COMMON, **dims}
    config["num_attention_heads"] = max(1, dims["hidden_size"] // _HEAD_DIM)
    config["hidden_act"] = _CLIP_ACT[slot]
    return config


def _reference_clip(slot: str, cls: str) -> dict:
    return _clip(slot, cls, **{**_CLIP_REFERENCE[slot], "vocab_size": 49408, "max_position_embeddings": 77})


def t5_config_from_shapes(shapes: Shapes, prefix: str = "") -> dict | None:
    """T5 encoder config from transformers-layout keys (``[prefix]encoder.block.N...``)."""
    emb = shapes.get(prefix + "shared.weight") or shapes.get(prefix + "encoder.embed_tokens.weight")
    rel = shapes.get(prefix + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if emb is None or rel is None:
        return None
    heads = rel[1]
    q = _need(shapes, prefix + "encoder.block.0.layer.0.SelfAttention.q.weight")
    layers = _count(shapes, prefix + "encoder.block.")
    return {
        **copy.deepcopy(_T5_REFERENCE),
        "vocab_size": emb[0],
        "d_model": emb[1],
        "d_ff": _need(shapes, prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
        "num_heads": heads,
        "d_kv": q[0] // heads,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "relative_attention_num_buckets": rel[0],
    }


def text_encoder_config(shapes: Shapes, family: FamilySpec, slot: str, *, layout: str, prefix: str = "") -> dict | None:
    """The transformers config dict of a text encoder read from ``shapes``; None if not there."""
    cls = text_encoder_class(family, slot)
    if layout == "t5":
        return t5_config_from_shapes(shapes, prefix)
    if layout == "openclip":
        return _clip_from_openclip(shapes, slot, cls, prefix)
    config = clip_config_from_hf(shapes, slot, cls, prefix)
    if config and family.denoiser == "mmdit" and slot == "clip_l":
        config["projection_dim"] = config["hidden_size"]  # SD3 uses CLIP-L's pooled output unprojected
    return config


def _text_encoder_configs(
    shapes: Shapes, family: FamilySpec, separate: Mapping[str, Shapes]
) -> dict[str, dict]:
    configs = {}
    for slot, name in text_slots(family).items():
        config = None
        if slot in separate:
            layout = "t5" if slot == "t5xxl" else "hf"
            config = text_encoder_config(separate[slot], family, slot, layout=layout)
        if config is None:
            prefix, layout = text_encoder_layout(family, slot)
            config = text_encoder_config(shapes, family, slot, layout=layout, prefix=prefix)
        if config is None:
            cls = text_encoder_class(family, slot)
            config = copy.deepcopy(_T5_REFERENCE) if slot == "t5xxl" else _reference_clip(slot, cls)
            if slot == "clip_l" and family.denoiser == "mmdit":
                config["projection_dim"] = config["hidden_size"]
        configs[name] = config
    return configs


# --- all components ----------------------------------------------------------------------------


def pipeline_class_name(detection: Detection, family: FamilySpec) -> str:
    return family.pipelines["inpaint" if detection.inpaint and family.denoiser == "unet" else "txt2img"]


def scheduler_config(family: FamilySpec, variant: str = "") -> dict:
    """The family's original scheduler config (what its diffusers repository ships)."""
    config = dict(_SCHEDULERS[family.pipelines["txt2img"]])
    if family.is_flow:
        config["shift"] = float(family.reference.get("shift", 3.0))
    else:
        v = family.prediction == "v" or variant == "v_pred"
        config["prediction_type"] = "v_prediction" if v else "epsilon"
    return config


def infer_configs(
    shapes: Shapes,
    detection: Detection,
    family: FamilySpec,
    *,
    text_encoder_shapes: Mapping[str, Shapes] | None = None,
) -> dict[str, dict]:
    """Diffusers/transformers config dict of every component ``family`` needs, from tensor shapes.

    ``shapes`` uses the original single-file key layout. ``text_encoder_shapes`` maps a text
    encoder slot ("clip_l", "clip_g", "t5xxl") to the transformers-layout shapes of a separate
    file that supplies it. Parts absent from both get the family's reference config. Keys of
    the result are component names (``unet``/``transformer``, ``vae``, ``text_encoder``...,
    ``scheduler``). Raises ``ConfigInferenceError`` when the shapes make no sense.
    """
    if family.denoiser == "mmdit":
        configs = {"transformer": _mmdit_config(shapes, detection, family)}
    else:
        configs = {"unet": _unet_config(shapes, family)}
    configs["vae"] = _vae_config(shapes, family)
    configs.update(_text_encoder_configs(shapes, family, text_encoder_shapes or {}))
    configs["scheduler"] = scheduler_config(family, detection.variant)
    return configs
