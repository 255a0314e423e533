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
from collections.abc import Mapping
from typing import Any

from webui.families.base import TEXT_ENCODERS, VAE_PREFIX, FamilyAdapter
from webui.families.shapes import ConfigInferenceError, Shapes
from webui.families.shapes import count as _count
from webui.families.shapes import has_prefix as _has_prefix
from webui.families.shapes import need as _need

__all__ = ["ConfigInferenceError", "Shapes", "infer_configs", "scheduler_config", "text_encoder_config", "text_slots"]


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

# --- where each text encoder sits in the original layout ---------------------------------------


def text_encoder_layout(family: FamilyAdapter, slot: str) -> tuple[str, str]:
    """(key prefix, layout) of a text encoder slot in the family's single-file layout.

    layout is "hf" (transformers keys, ``text_model.`` inside the prefix), "openclip"
    (``transformer.resblocks``...) or "t5".
    """
    part = family.file_parts.get(slot)
    if part is None:
        raise ConfigInferenceError(f"no single-file layout known for text encoder {slot!r} of {family.id!r}")
    return part.prefix, part.layout


def text_slots(family: FamilyAdapter) -> dict[str, str]:
    """Text encoder slot id -> pipeline component name (``text_encoder``, ``text_encoder_2``...)."""
    return family.text_slots()


def text_encoder_class(family: FamilyAdapter, slot: str) -> str:
    kind = TEXT_ENCODERS[slot].kind
    if kind == "t5":
        return "T5EncoderModel"
    # SD3 reads the pooled output of both CLIPs (CLIP-L with an identity projection).
    if kind == "clip_with_projection" or family.pooled_clip_l:
        return "CLIPTextModelWithProjection"
    return "CLIPTextModel"


# --- VAE ---------------------------------------------------------------------------------------


def _vae_config(shapes: Shapes, family: FamilyAdapter) -> dict:
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


def _reference_vae(family: FamilyAdapter) -> dict:
    config = {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": family.latent_channels,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "use_quant_conv": family.vae_quant_conv,
        "use_post_quant_conv": family.vae_quant_conv,
        "mid_block_add_attention": True,
    }
    return _vae_common(config, family)


def _vae_common(config: dict, family: FamilyAdapter) -> dict:
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


def text_encoder_config(shapes: Shapes, family: FamilyAdapter, slot: str, *, layout: str, prefix: str = "") -> dict | None:
    """The transformers config dict of a text encoder read from ``shapes``; None if not there."""
    cls = text_encoder_class(family, slot)
    if layout == "t5":
        return t5_config_from_shapes(shapes, prefix)
    if layout == "openclip":
        return _clip_from_openclip(shapes, slot, cls, prefix)
    config = clip_config_from_hf(shapes, slot, cls, prefix)
    if config and family.pooled_clip_l and slot == "clip_l":
        config["projection_dim"] = config["hidden_size"]  # SD3 uses CLIP-L's pooled output unprojected
    return config


def _text_encoder_configs(
    shapes: Shapes, family: FamilyAdapter, separate: Mapping[str, Shapes]
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
            if slot == "clip_l" and family.pooled_clip_l:
                config["projection_dim"] = config["hidden_size"]
        configs[name] = config
    return configs


# --- all components ----------------------------------------------------------------------------


def pipeline_class_name(record: Any, family: FamilyAdapter) -> str:
    return family.pipeline_for(record)


def scheduler_config(family: FamilyAdapter, variant: str = "") -> dict:
    """The family's original scheduler config (what its diffusers repository ships)."""
    return family.scheduler_config(variant)


def infer_configs(
    shapes: Shapes,
    record: Any,
    family: FamilyAdapter,
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
    configs = {family.denoiser_component: family.denoiser_config(shapes, record)}
    configs["vae"] = _vae_config(shapes, family)
    configs.update(_text_encoder_configs(shapes, family, text_encoder_shapes or {}))
    configs["scheduler"] = family.scheduler_config(record.variant)
    return configs
