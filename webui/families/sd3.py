"""SD3 Medium, SD3.5 Medium and SD3.5 Large: an MMDiT, CLIP-L + CLIP-G + T5-XXL, rectified flow, 16 latent channels.

The three share one layout (``joint_blocks``) and are told apart by the transformer: SD3.5 Large adds
qk-norm, SD3.5 Medium adds qk-norm and a second attention in its first blocks (MMDiT-X).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from webui.families.base import (
    DM,
    LAYOUT,
    NAMES,
    NO_MATCH,
    SHAPE,
    STRUCTURE,
    VAE_PREFIX,
    ClipSlot,
    FamilyAdapter,
    FilePart,
    Recognised,
    TextRecipe,
)
from webui.families.sdxl import MEGAPIXEL_BUCKETS
from webui.families.shapes import ConfigInferenceError, Shapes, count, max_index, need

SD3_PIPELINES = {
    "txt2img": "StableDiffusion3Pipeline",
    "img2img": "StableDiffusion3Img2ImgPipeline",
    "inpaint": "StableDiffusion3InpaintPipeline",
}
_FOLDER_CLASSES = (
    *SD3_PIPELINES.values(),
    "StableDiffusion3ControlNetPipeline",
    "StableDiffusion3ControlNetInpaintingPipeline",
)
_TE_PREFIX = {"clip_l": "text_encoders.clip_l.", "clip_g": "text_encoders.clip_g.", "t5xxl": "text_encoders.t5xxl."}
_FILE_PARTS = {
    "transformer": FilePart("transformer", DM, "mmdit"),
    "vae": FilePart("vae", VAE_PREFIX, "vae"),
    "clip_l": FilePart("text_encoder", _TE_PREFIX["clip_l"] + "transformer.", "hf", marker=_TE_PREFIX["clip_l"]),
    "clip_g": FilePart("text_encoder_2", _TE_PREFIX["clip_g"] + "transformer.", "hf", marker=_TE_PREFIX["clip_g"]),
    "t5xxl": FilePart("text_encoder_3", _TE_PREFIX["t5xxl"] + "transformer.", "t5", marker=_TE_PREFIX["t5xxl"]),
}
_HEAD_DIM = 64
_FP8 = {"F8_E4M3", "F8_E5M2"}

# CLIP-L and CLIP-G as SDXL (768 + 1280), zero-padded to the transformer's joint_attention_dim, then the T5
# tokens; pooled = both CLIP pooled outputs. An empty negative prompt is encoded (no zeros), as the pipeline does.
SD3_CONDITIONING = TextRecipe(
    (
        ClipSlot("tokenizer", "text_encoder", "penultimate", True),
        ClipSlot("tokenizer_2", "text_encoder_2", "penultimate", True),
    ),
    pooled=True,
    t5=True,
    zeros_for_empty_negative=False,
)
SD3_PREVIEW = (
    [
        [-0.0922, -0.0175, 0.0749],
        [0.0311, 0.0633, 0.0954],
        [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902],
        [0.0587, 0.0272, -0.0496],
        [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427],
        [-0.0042, 0.1038, 0.1358],
        [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268],
        [0.0922, 0.0988, 0.0951],
        [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895],
        [-0.0069, -0.0030, -0.0810],
        [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189],
    ],
    [0.2394, 0.2135, 0.1925],
)


def _joint_prefix(header: Any) -> str | None:
    """The prefix of the MMDiT's keys: ``model.diffusion_model.`` or "" (bare transformer files)."""
    keys = header.keys()
    for prefix in (DM, ""):
        if any(k.startswith(prefix + "joint_blocks.") for k in keys):
            return prefix
    return None


def _qk_norm(header: Any, prefix: str) -> bool:
    return any(k.startswith(prefix + "joint_blocks.0.x_block.attn.ln_q") for k in header.keys())  # noqa: SIM118


def _dual_attention(header: Any) -> bool:
    return any(".x_block.attn2." in k for k in header.keys())  # noqa: SIM118


class Sd3Family(FamilyAdapter):
    """SD3 Medium; the SD3.5 subclasses below add what tells their transformer apart."""

    denoiser_component = "transformer"
    denoiser_label = "MMDiT"

    # --- recognition ---------------------------------------------------------------------------------
    def match_file(self, header: Any) -> int:
        prefix = _joint_prefix(header)
        return NO_MATCH if prefix is None else self.mmdit_evidence(header, prefix)

    def mmdit_evidence(self, header: Any, prefix: str) -> int:
        return LAYOUT

    def match_folder(self, folder: Any) -> int:
        if folder.class_name not in self.folder_classes:
            return NO_MATCH
        return self.folder_evidence(folder.config("transformer"))

    def folder_evidence(self, config: dict) -> int:
        return LAYOUT

    def read_file(self, header: Any) -> Recognised:
        prefix = _joint_prefix(header) or ""
        layers = max_index(header, re.escape(prefix) + r"joint_blocks\.([0-9]{1,6})\.")
        comps = {"transformer"}
        comps |= {slot for slot, part in self.text_parts().items() if header.has_prefix(part.present_prefix)}
        if header.has_prefix(VAE_PREFIX):
            comps.add("vae")
        xe = header.shape(prefix + "x_embedder.proj.weight")
        in_ch = xe[1] if xe and len(xe) == 4 else 16
        notes = [f"{layers} MMDiT blocks"]
        t5 = header.with_prefix(self.file_parts["t5xxl"].present_prefix)
        if t5 and {t.dtype for t in t5.values()} & _FP8:
            notes.append("T5 stored in fp8")
        return Recognised(frozenset(comps), in_ch, prefix, "", tuple(notes))

    def read_folder(self, folder: Any) -> Recognised:
        in_ch = folder.in_channels("transformer", self.latent_channels)
        comps = {"transformer"}
        comps |= {slot for slot, name in self.text_slots().items() if folder.present(name)}
        if folder.present("vae"):
            comps.add("vae")
        return Recognised(frozenset(comps), in_ch, "", "inpaint" if in_ch == 9 else "")

    # --- control models (webui.control.files) --------------------------------------------------------
    def match_control(self, facts: Any) -> int:
        """SD3 Medium ControlNets (InstantX) have joint blocks; SD3.5 Large's (Stability) have none."""
        if facts.kind not in self.control_kinds or facts.denoiser != "mmdit":
            return NO_MATCH
        return LAYOUT if facts.joint else NO_MATCH

    # --- configs --------------------------------------------------------------------------------------
    def scheduler_config(self, variant: str = "") -> dict:
        config = dict(self.scheduler)
        config["shift"] = float(self.reference.get("shift", 3.0))
        return config

    def denoiser_config(self, shapes: Shapes, record: Any) -> dict:
        p = record.denoiser_prefix
        hidden, in_ch, patch, _ = need(shapes, p + "x_embedder.proj.weight")
        head_dim = int(self.reference.get("head_dim", _HEAD_DIM))
        n_pos = need(shapes, p + "pos_embed")[1]
        max_size = math.isqrt(n_pos)
        if max_size * max_size != n_pos:
            raise ConfigInferenceError(f"pos_embed has {n_pos} positions, not a square")
        caption, joint = need(shapes, p + "context_embedder.weight")
        layers = count(shapes, p + "joint_blocks.")
        dual_rx = re.compile(re.escape(p) + r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")
        dual = sorted(int(m.group(1)) for k in shapes if (m := dual_rx.match(k)))
        qk = any(k.startswith(p + "joint_blocks.0.x_block.attn.ln_q") for k in shapes)
        out = need(shapes, p + "final_layer.linear.weight")[0] // (patch * patch)
        return {
            "_class_name": "SD3Transformer2DModel",
            "sample_size": min(self.default_size[0] // 8, max_size * patch),
            "patch_size": patch,
            "in_channels": in_ch,
            "out_channels": out,
            "num_layers": layers,
            "attention_head_dim": head_dim,
            "num_attention_heads": hidden // head_dim,
            "joint_attention_dim": joint,
            "caption_projection_dim": caption,
            "pooled_projection_dim": need(shapes, p + "y_embedder.mlp.0.weight")[1],
            "pos_embed_max_size": max_size,
            "qk_norm": "rms_norm" if qk else None,
            "dual_attention_layers": dual,
        }

    # --- LoRA -----------------------------------------------------------------------------------------
    def lora_evidence(self, layers: list[Any]) -> int:
        from webui.families.sd3_lora import KOHYA_BLOCK_PREFIX

        if any(layer.module.startswith(KOHYA_BLOCK_PREFIX) for layer in layers):
            return NAMES
        return NAMES if any(layer.component == "transformer" for layer in layers) else NO_MATCH

    def kohya_lora_targets(self, name: str, in_features: int, out_features: int):
        from webui.families import sd3_lora

        target = sd3_lora.targets(name, in_features, out_features)
        if target is None:
            return None
        paths, mode = target
        return paths, out_features // 3 if mode == sd3_lora.QKV else out_features

    def convert_kohya_lora(self, state_dict, te_aliases):
        from webui.families import sd3_lora
        from webui.models.lora_keys import KOHYA_PREFIXES

        return sd3_lora.convert_kohya(state_dict, te_aliases, KOHYA_PREFIXES)

    # --- tiny demo model --------------------------------------------------------------------------------
    def tiny_parts(self, inpaint: bool) -> dict:
        import torch

        from webui.models import demo as D
        from webui.models.tokenizers import clip_tokenizer, tiny_t5_tokenizer

        clip_l = D.tiny_clip_l(with_projection=True)
        with torch.no_grad():
            # diffusers replaces SD3's CLIP-L projection by the identity when loading a single file
            clip_l.text_projection.weight.copy_(torch.eye(D.CLIP_L_HIDDEN))
        return {
            "transformer": self._tiny_transformer(),
            "vae": D.tiny_vae(self),
            "text_encoder": clip_l,
            "text_encoder_2": D.tiny_clip_g(),
            "text_encoder_3": D.tiny_t5(),
            "tokenizer": clip_tokenizer(D.PAD_EOT),
            "tokenizer_2": clip_tokenizer(D.PAD_BANG),
            "tokenizer_3": tiny_t5_tokenizer(),
        }

    tiny_transformer_extra: ClassVar[Mapping[str, Any]] = {}  # what the SD3.5 transformers add

    def _tiny_transformer(self):
        from diffusers import SD3Transformer2DModel

        from webui.models.demo import CLIP_G_HIDDEN, CLIP_L_HIDDEN, T5_D_MODEL

        hidden = 128
        return SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=64,
            num_attention_heads=hidden // 64,
            joint_attention_dim=T5_D_MODEL,
            caption_projection_dim=hidden,
            pooled_projection_dim=CLIP_L_HIDDEN + CLIP_G_HIDDEN,
            pos_embed_max_size=32,
            **self.tiny_transformer_extra,
        )


class Sd35LargeFamily(Sd3Family):
    tiny_transformer_extra: ClassVar[Mapping[str, Any]] = {"qk_norm": "rms_norm"}

    def match_control(self, facts: Any) -> int:
        if facts.kind not in self.control_kinds or facts.denoiser != "mmdit":
            return NO_MATCH
        return NO_MATCH if facts.joint else SHAPE

    def mmdit_evidence(self, header: Any, prefix: str) -> int:
        return SHAPE if _qk_norm(header, prefix) else NO_MATCH

    def folder_evidence(self, config: dict) -> int:
        return SHAPE if config.get("qk_norm") else NO_MATCH

    def lora_evidence(self, layers: list[Any]) -> int:
        return NO_MATCH  # its LoRAs look like SD3's: the "sd3" group fits it and layer shapes decide


class Sd35MediumFamily(Sd3Family):
    tiny_transformer_extra: ClassVar[Mapping[str, Any]] = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)}

    def mmdit_evidence(self, header: Any, prefix: str) -> int:
        return STRUCTURE if _dual_attention(header) else NO_MATCH

    def folder_evidence(self, config: dict) -> int:
        return STRUCTURE if config.get("dual_attention_layers") else NO_MATCH

    def lora_evidence(self, layers: list[Any]) -> int:
        return NO_MATCH  # as SD3.5 Large


def _common(**fields: Any) -> dict:
    return dict(
        denoiser="mmdit",
        pipelines=SD3_PIPELINES,
        default_size=(1024, 1024),
        prediction="flow",
        latent_channels=16,
        vae_scaling_factor=1.5305,
        vae_shift_factor=0.0609,
        text_encoders=("clip_l", "clip_g", "t5xxl"),
        resolution_presets=MEGAPIXEL_BUCKETS,
        reference={"head_dim": _HEAD_DIM, "shift": 3.0},
        sampler_kind="flow",
        file_parts=_FILE_PARTS,
        folder_classes=_FOLDER_CLASSES,
        null_components=("image_encoder", "feature_extractor"),
        scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000},
        conditioning=SD3_CONDITIONING,
        preview_factors=SD3_PREVIEW,
        memory_modes=("drop_t5",),
        lora_label="SD3",
        lora_accepts=("sd3",),
        pooled_clip_l=True,
        vae_quant_conv=False,
        text_encoder_file_prefixes=tuple(part.prefix for slot, part in _FILE_PARTS.items() if slot in _TE_PREFIX),
        tiny=True,
        exportable=True,
        **fields,
    )


SD3 = Sd3Family(
    **_common(
        id="sd3",
        label="SD3 Medium",
        lora_group="sd3",
        default_steps=28,
        default_cfg=7.0,
        demo=True,
        demo_lora_components=("transformer",),
        control_kinds=("controlnet",),
    )
)
SD35_MEDIUM = Sd35MediumFamily(
    **_common(id="sd35_medium", label="SD3.5 Medium", lora_group="sd35_medium", default_steps=40, default_cfg=4.5)
)
SD35_LARGE = Sd35LargeFamily(
    **_common(
        id="sd35_large",
        label="SD3.5 Large",
        lora_group="sd35_large",
        default_steps=28,
        default_cfg=3.5,
        control_kinds=("controlnet",),
    )
)
