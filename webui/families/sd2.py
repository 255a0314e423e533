"""SD 2.x: OpenCLIP ViT-H/14 (read at its penultimate layer), a 64-channels-per-head UNet at 768 px, v-prediction."""

from __future__ import annotations

from typing import Any

from webui.families.base import NO_MATCH, SHAPE, FilePart
from webui.families.sd15 import (
    SD_CONDITIONING,
    SD_FOLDER_CLASSES,
    SD_INDEX_FLAGS,
    SD_NULL_COMPONENTS,
    SD_PIPELINES,
    SD_PREVIEW,
    SD_SCHEDULER,
    UNET,
    VAE,
)
from webui.families.unet import UnetFamily, unet_context_dim

_SIZES = ((768, 768), (640, 896), (896, 640), (512, 512))
_CONTEXT = 1024  # OpenCLIP-H's width, which the UNet's cross-attention reads


class Sd2Family(UnetFamily):
    def unet_evidence(self, header: Any) -> int:
        return SHAPE if unet_context_dim(header) == _CONTEXT else NO_MATCH

    def folder_evidence(self, folder: Any) -> int:
        return SHAPE if folder.config("unet").get("cross_attention_dim") == _CONTEXT else NO_MATCH


FAMILY = Sd2Family(
    id="sd2",
    label="SD 2.x",
    denoiser="unet",
    pipelines=SD_PIPELINES,
    default_size=(768, 768),
    prediction="v",
    latent_channels=4,
    vae_scaling_factor=0.18215,
    vae_shift_factor=None,
    text_encoders=("openclip_h",),
    lora_group="sd2",
    resolution_presets=_SIZES,
    reference={"cross_attention_dim": _CONTEXT, "head_dim": 64},
    file_parts={"unet": UNET, "vae": VAE, "openclip_h": FilePart("text_encoder", "cond_stage_model.model.", "openclip")},
    folder_classes=SD_FOLDER_CLASSES,
    index_flags=SD_INDEX_FLAGS,
    null_components=SD_NULL_COMPONENTS,
    scheduler=SD_SCHEDULER,
    conditioning=SD_CONDITIONING,
    textual_inversion=True,
    preview_factors=SD_PREVIEW,  # SD 2.x kept SD 1.x's VAE
    ays_table="StableDiffusionSigmas",  # A1111 uses the SD 1.5 list for every noise model but SDXL
    memory_modes=("attention_slicing",),
    lora_label="SD 2.x",
    upcast_attention=True,
    control_kinds=("controlnet",),
)
