"""What the UNet families (SD 1.x, SD 2.x, SDXL, SDXL refiner) share: the LDM/SGM UNet layout.

``UnetFamily`` reads a single file's UNet (input channels, v-prediction / EDM markers), a diffusers
folder's ``unet/config.json``, rebuilds the UNet's diffusers config from tensor shapes
(docs/MODEL_CONVENTIONS.md), and scores LoRAs by their cross-attention width. Each family module
(``sd15.py`` ...) subclasses it with what tells that family apart.
"""

from __future__ import annotations

import re
from typing import Any

from webui.families.base import (
    DM,
    LAYOUT,
    NO_MATCH,
    SHAPE,
    TEXT_ENCODERS,
    TEXT_ENCODERS_MATCH,
    VAE_PREFIX,
    FamilyAdapter,
    Recognised,
    UnsupportedModelError,
)
from webui.families.shapes import ConfigInferenceError, Shapes, context_dim, count, has_prefix, need

_HEAD_DIM = 64

# The scheduler of the SD 1.x / 2.x repositories (PNDM) and the beta schedule every UNet family shares.
SCHEDULER_SD = {
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


class UnetFamily(FamilyAdapter):
    """A family whose denoiser is an LDM/SGM UNet (``model.diffusion_model.input_blocks...``)."""

    denoiser_component = "unet"
    denoiser_label = "UNet"

    # --- single files ------------------------------------------------------------------------------
    def match_file(self, header: Any) -> int:
        if not any(k.startswith(DM + "input_blocks.") for k in header.keys()):  # noqa: SIM118 - not a dict
            return NO_MATCH
        if any(header.has_prefix(part.present_prefix) for part in self.text_parts().values()):
            return TEXT_ENCODERS_MATCH
        return self.unet_evidence(header)

    def unet_evidence(self, header: Any) -> int:
        """What the UNet alone says, for a file without this family's text encoders (subclasses)."""
        return NO_MATCH

    def read_file(self, header: Any) -> Recognised:
        comps = {"unet"}
        comps |= {slot for slot, part in self.text_parts().items() if header.has_prefix(part.present_prefix)}
        if header.has_prefix(VAE_PREFIX):
            comps.add("vae")
        shape = header.shape(DM + "input_blocks.0.0.weight")
        in_ch = shape[1] if shape and len(shape) == 4 else 4
        variant = {9: "inpaint", 8: "instruct_pix2pix"}.get(in_ch, "")
        notes = []
        if "v_pred" in header.keys():  # noqa: SIM118 - a header, not a dict
            variant = variant or "v_pred"
            notes.append("v-prediction")
        if "edm_mean" in header.keys():  # noqa: SIM118 - a header, not a dict
            variant = variant or "edm"
            notes.append("EDM (Playground 2.5 style)")
        _refuse_variant(header.path, variant)
        return Recognised(frozenset(comps), in_ch, DM, variant, tuple(notes))

    # --- diffusers folders ------------------------------------------------------------------------------
    def match_folder(self, folder: Any) -> int:
        if folder.class_name not in self.folder_classes:
            return NO_MATCH
        return self.folder_evidence(folder)

    def folder_evidence(self, folder: Any) -> int:
        return LAYOUT

    def read_folder(self, folder: Any) -> Recognised:
        in_ch = folder.in_channels(self.denoiser_component, self.latent_channels)
        comps = {self.denoiser_component}
        comps |= {slot for slot, name in self.text_slots().items() if folder.present(name)}
        if folder.present("vae"):
            comps.add("vae")
        variant = {9: "inpaint", 8: "instruct_pix2pix"}.get(in_ch, "")
        _refuse_variant(folder.path, variant)
        return Recognised(frozenset(comps), in_ch, "", variant)

    def pipeline_for(self, record: Any) -> str:
        return self.pipelines["inpaint" if record.inpaint else "txt2img"]

    # --- config from shapes -----------------------------------------------------------------------------
    def denoiser_config(self, shapes: Shapes, record: Any) -> dict:
        p = DM
        layers, channels, depth_down, depth_up = _unet_levels(shapes)
        attn = [any(d) for d in depth_down]
        config: dict = {
            "_class_name": "UNet2DConditionModel",
            "in_channels": need(shapes, p + "input_blocks.0.0.weight")[1],
            "out_channels": need(shapes, p + "out.2.weight")[0],
            "sample_size": self.default_size[0] // 8,
            "block_out_channels": channels,
            "layers_per_block": layers,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
            "mid_block_type": "UNetMidBlock2DCrossAttn" if has_prefix(shapes, p + "middle_block.") else None,
            "norm_num_groups": 32,
            **_transformer_depths(shapes, depth_down, depth_up),
        }
        ctx = next(
            (s[1] for k, s in shapes.items() if k.startswith(p) and k.endswith("attn2.to_k.weight") and len(s) == 2),
            None,
        )
        config["cross_attention_dim"] = ctx or self.reference.get("cross_attention_dim", 768)
        proj_in = next((s for k, s in shapes.items() if k.startswith(p) and k.endswith(".1.proj_in.weight")), None)
        config["use_linear_projection"] = bool(proj_in and len(proj_in) == 2)
        if "heads" in self.reference:  # SD1.x: a fixed number of heads (diffusers calls it attention_head_dim)
            config["attention_head_dim"] = int(self.reference["heads"])
        else:
            head_dim = int(self.reference.get("head_dim", _HEAD_DIM))
            config["attention_head_dim"] = [max(1, c // head_dim) for c in channels]
        if self.upcast_attention:
            config["upcast_attention"] = True
        time_dim = need(shapes, p + "time_embed.0.weight")[0]
        if time_dim != 4 * channels[0]:
            config["time_embedding_dim"] = time_dim
        label = shapes.get(p + "label_emb.0.0.weight")
        if label:
            config.update(self._text_time(shapes, label[1]))
        return config

    def _text_time(self, shapes: Shapes, adm_in: int) -> dict:
        """SDXL's added conditioning: pooled text embedding + ``added_time_ids`` size numbers."""
        n_numbers = self.added_time_ids or 6
        pooled = self._pooled_dim(shapes)
        if pooled is None or (adm_in - pooled) <= 0 or (adm_in - pooled) % n_numbers:
            pooled = adm_in - 256 * n_numbers  # the released models' 256 channels per number
        return {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": (adm_in - pooled) // n_numbers,
            "projection_class_embeddings_input_dim": adm_in,
        }

    def _pooled_dim(self, shapes: Shapes) -> int | None:
        if "clip_g" not in self.text_encoders:
            return None
        part = self.file_parts["clip_g"]
        if part.layout == "openclip":
            proj = shapes.get(part.prefix + "text_projection")
            return proj[1] if proj else None
        proj = shapes.get(part.prefix + "text_projection.weight")
        return proj[0] if proj else None

    # --- control models (webui.control.files) ------------------------------------------------------------
    def match_control(self, facts: Any) -> int:
        """A ControlNet / IP-Adapter fits when its cross-attention width is this family's (released or tiny demo
        model) and it has SDXL's added embedding exactly when the family does; a T2I-Adapter by its unshuffle factor."""
        if facts.kind not in self.control_kinds or facts.denoiser != "unet":
            return NO_MATCH
        if facts.kind == "t2i_adapter":
            return LAYOUT if facts.downscale == self.t2i_downscale else NO_MATCH
        if facts.kind == "controlnet" and (facts.added_embedding is not None) != self.takes_size_conditioning:
            return NO_MATCH
        return SHAPE if facts.context_dim in self.context_widths() else NO_MATCH

    def context_widths(self) -> tuple[int, ...]:
        """The UNet's cross-attention width: the released models' (its text encoders side by side) and, for a
        family with a tiny demo model, the tiny one's (``webui.models.demo``)."""
        released = sum(TEXT_ENCODERS[slot].hidden_size for slot in self.text_encoders)
        if not self.tiny:
            return (released,)
        tiny = _tiny_text_widths()
        return released, sum(tiny[slot] for slot in self.text_encoders)

    def added_embedding_config(self, adm_in: int) -> dict:
        """The added-embedding config of a ControlNet made for this family, from its input width alone: the pooled
        bigG width (released or tiny) plus ``added_time_ids`` numbers of equal width."""
        n_numbers = self.added_time_ids or 6
        widths = (TEXT_ENCODERS["clip_g"].hidden_size, _tiny_text_widths()["clip_g"])
        for pooled in widths:
            rest = adm_in - pooled
            if rest > 0 and rest % n_numbers == 0:
                return {
                    "addition_embed_type": "text_time",
                    "addition_time_embed_dim": rest // n_numbers,
                    "projection_class_embeddings_input_dim": adm_in,
                }
        raise ConfigInferenceError(f"an added embedding {adm_in} wide fits no {self.label} model")

    # --- LoRA ---------------------------------------------------------------------------------------------
    def lora_evidence(self, layers: list[Any]) -> int:
        from webui.models.lora_keys import context_dim as lora_context_dim

        score = NO_MATCH
        if lora_context_dim(layers) == self.reference.get("cross_attention_dim"):
            score = TEXT_ENCODERS_MATCH
        slots = self.text_slots()
        if len(slots) == 1 and list(slots.values()) == ["text_encoder"]:
            te_q = [
                layer.in_features
                for layer in layers
                if layer.component == "text_encoder" and _TE_Q.search(layer.module)
            ]
            if te_q and te_q[0] == TEXT_ENCODERS[self.text_encoders[0]].hidden_size:
                score = max(score, SHAPE)
        return max(score, self.lora_structure(layers))

    def lora_structure(self, layers: list[Any]) -> int:
        """Evidence from which components and blocks a LoRA patches (subclasses)."""
        return NO_MATCH


def _tiny_text_widths() -> dict[str, int]:
    from webui.models import demo

    return {"clip_l": demo.CLIP_L_HIDDEN, "clip_g": demo.CLIP_G_HIDDEN, "openclip_h": 0, "t5xxl": demo.T5_D_MODEL}


_TE_Q = re.compile(r"(self_attn[._]q_proj|to_q)$")


def _refuse_variant(path: Any, variant: str) -> None:
    if variant == "instruct_pix2pix":
        raise UnsupportedModelError(
            path, "this is an InstructPix2Pix checkpoint (8 input channels), which is not supported yet"
        )
    if variant == "edm":
        raise UnsupportedModelError(path, "this is an EDM checkpoint (Playground 2.5 style), which is not supported yet")


def unet_context_dim(header: Any) -> int | None:
    return context_dim(header, DM)


def label_embedding_width(header: Any) -> int | None:
    """The input width of SDXL's added embedding (``label_emb``) in a single file, or None."""
    label = header.shape(DM + "label_emb.0.0.weight")
    return label[1] if label and len(label) == 2 else None


# --- UNet layout from shapes ------------------------------------------------------------------------


def _unet_levels(shapes: Shapes) -> tuple[int, list[int], list[list[int]], list[list[int]]]:
    """(layers per level, channels per level, transformer depth per down layer, per up layer)."""
    p = DM
    n_input = count(shapes, p + "input_blocks.")
    rx = re.compile(re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight$")
    downs = sorted(int(m.group(1)) for k in shapes if (m := rx.match(k)))
    layers = downs[0] - 1 if downs else n_input - 1  # each level: L resnet blocks, then a downsampler
    levels = len(downs) + 1
    if layers < 1 or n_input != levels * (layers + 1):
        raise ConfigInferenceError(f"unexpected UNet layout: {n_input} input blocks, downsamplers at {downs}")

    def down(level: int, j: int) -> str:
        return f"{p}input_blocks.{level * (layers + 1) + j + 1}."

    channels = [need(shapes, down(b, 0) + "0.out_layers.3.weight")[0] for b in range(levels)]
    depth_down = [[count(shapes, down(b, j) + "1.transformer_blocks.") for j in range(layers)] for b in range(levels)]
    n_up = layers + 1
    depth_up = [
        [count(shapes, f"{p}output_blocks.{b * n_up + j}.1.transformer_blocks.") for j in range(n_up)]
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
    mid_depth = count(shapes, DM + "middle_block.1.transformer_blocks.")
    if has_prefix(shapes, DM + "middle_block.") and not mid_depth:
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
