"""The SDXL refiner: OpenCLIP-bigG only (1280 wide), a UNet whose added embedding reads an aesthetic score.

Its task is img2img (the last steps of an SDXL base image); txt2img runs as img2img from noise.
"""

from __future__ import annotations

from typing import Any

from webui.families.base import NO_MATCH, STRUCTURE, FilePart
from webui.families.sd15 import UNET, VAE
from webui.families.sdxl import (
    MEGAPIXEL_BUCKETS,
    REFINER_ADM,
    SDXL_CONDITIONING,
    SDXL_FOLDER_CLASSES,
    SDXL_NULL_COMPONENTS,
    SDXL_PREVIEW,
    SDXL_SCHEDULER,
    added_time_ids,
    tiny_unet,
)
from webui.families.unet import UnetFamily, label_embedding_width

_CONTEXT = 1280  # bigG's width, which the refiner's cross-attention reads
_TIME_IDS = 5  # original size, crop, aesthetic score


class SdxlRefinerFamily(UnetFamily):
    def unet_evidence(self, header: Any) -> int:
        return STRUCTURE if label_embedding_width(header) == REFINER_ADM else NO_MATCH

    def folder_evidence(self, folder: Any) -> int:
        numbers = added_time_ids(folder)
        if numbers is None:  # configs that do not tell: the released refiner's context width
            return STRUCTURE if folder.config("unet").get("cross_attention_dim") == _CONTEXT else NO_MATCH
        return STRUCTURE if numbers == _TIME_IDS else NO_MATCH

    def tiny_parts(self, inpaint: bool) -> dict:
        from webui.models import demo as D
        from webui.models.tokenizers import clip_tokenizer

        return {
            "unet": tiny_unet(inpaint, refiner=True),
            "vae": D.tiny_vae(self),
            "text_encoder": None,
            "tokenizer": None,
            "text_encoder_2": D.tiny_clip_g(),
            "tokenizer_2": clip_tokenizer(D.PAD_BANG),
            "requires_aesthetics_score": True,
            "add_watermarker": False,
        }


FAMILY = SdxlRefinerFamily(
    id="sdxl_refiner",
    label="SDXL refiner",
    denoiser="unet",
    pipelines={
        "txt2img": "StableDiffusionXLImg2ImgPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    },
    default_size=(1024, 1024),
    prediction="eps",
    latent_channels=4,
    vae_scaling_factor=0.13025,
    vae_shift_factor=None,
    text_encoders=("clip_g",),
    lora_group="sdxl_refiner",
    default_steps=25,
    default_cfg=6.0,
    resolution_presets=MEGAPIXEL_BUCKETS,
    reference={"cross_attention_dim": _CONTEXT, "head_dim": 64},
    file_parts={
        "unet": UNET,
        "vae": VAE,
        "clip_g": FilePart("text_encoder_2", "conditioner.embedders.0.model.", "openclip"),
    },
    folder_classes=SDXL_FOLDER_CLASSES,
    index_flags={"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False},
    # its pipeline class has a CLIP-L slot the refiner leaves empty
    null_components=(*SDXL_NULL_COMPONENTS, "text_encoder", "tokenizer"),
    scheduler=SDXL_SCHEDULER,
    conditioning=SDXL_CONDITIONING,
    preview_factors=SDXL_PREVIEW,
    ays_table="StableDiffusionXLSigmas",
    memory_modes=("attention_slicing",),
    lora_label="SDXL refiner",
    added_time_ids=_TIME_IDS,
    tiny=True,
    exportable=True,
)
