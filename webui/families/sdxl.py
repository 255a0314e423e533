"""SDXL base: CLIP-L + OpenCLIP-bigG (concatenated, 2048 wide), a UNet with an added size embedding, 1024 px."""

from __future__ import annotations

import re
from typing import Any

from webui.families.base import (
    LAYOUT,
    NO_MATCH,
    STRUCTURE,
    ClipSlot,
    DownloadDefault,
    FilePart,
    TextRecipe,
)
from webui.families.sd15 import UNET, VAE
from webui.families.unet import SCHEDULER_SD, UnetFamily, label_embedding_width

SDXL_PIPELINES = {
    "txt2img": "StableDiffusionXLPipeline",
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
}
SDXL_FOLDER_CLASSES = (
    *SDXL_PIPELINES.values(),
    "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLControlNetInpaintPipeline",
)
SDXL_NULL_COMPONENTS = ("image_encoder", "feature_extractor")
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    **SCHEDULER_SD,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
# Penultimate layers of both CLIPs (no LayerNorm, as diffusers and SGM), pooled = bigG's projected output
# of the first chunk (A1111); an empty negative prompt becomes zeros (force_zeros_for_empty_prompt).
SDXL_CONDITIONING = TextRecipe(
    (
        ClipSlot("tokenizer", "text_encoder", "penultimate", False, required=False),
        ClipSlot("tokenizer_2", "text_encoder_2", "penultimate", True),
    ),
    pooled=True,
    t5=False,
    zeros_for_empty_negative=True,
)
SDXL_PREVIEW = (
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
    [0.1084, -0.0175, -0.0011],
)
# SDXL's trained aspect buckets (about one megapixel each, SDXL report appendix); SD3 was trained on the same set.
MEGAPIXEL_BUCKETS = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)
# The released base and refiner's added-embedding input widths: pooled bigG (1280) + 6 or 5 numbers x 256.
RELEASED_ADM = {2816: 6, 2560: 5}
REFINER_ADM = 2560
# SGM block names (kohya writes them for SDXL only), >1 transformer layer per block, the SDXL added embedding.
_SDXL_UNET_LORA = re.compile(
    r"(input_blocks|output_blocks|middle_block|transformer_blocks[._][1-9]|add_embedding|label_emb)"
)
TINY_TIME_DIM = 32


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def added_time_ids(folder: Any) -> int | None:
    """How many size numbers a folder's UNet reads: (added-embedding width - pooled width) / width per number.

    6 for a base model (original size, crop, target size), 5 for the refiner (aesthetic score instead of the
    target size); None when the configs do not tell.
    """
    unet = folder.config("unet")
    adm, per_number = unet.get("projection_class_embeddings_input_dim"), unet.get("addition_time_embed_dim")
    pooled = folder.config("text_encoder_2").get("projection_dim")
    if _int(adm) and _int(per_number) and _int(pooled) and per_number > 0 and adm > pooled:  # noqa: SIM102
        if (adm - pooled) % per_number == 0:
            return (adm - pooled) // per_number
    return RELEASED_ADM.get(adm) if _int(adm) else None


class SdxlFamily(UnetFamily):
    def unet_evidence(self, header: Any) -> int:
        width = label_embedding_width(header)
        return STRUCTURE if width is not None and width != REFINER_ADM else NO_MATCH

    def folder_evidence(self, folder: Any) -> int:
        return LAYOUT  # the refiner claims the folders whose UNet reads 5 numbers

    def lora_structure(self, layers: list[Any]) -> int:
        if any(layer.component == "text_encoder_2" for layer in layers) or any(
            layer.component == "unet" and _SDXL_UNET_LORA.search(layer.module) for layer in layers
        ):
            return STRUCTURE
        return NO_MATCH

    def tiny_parts(self, inpaint: bool) -> dict:
        from webui.models import demo as D
        from webui.models.tokenizers import clip_tokenizer

        return {
            "unet": tiny_unet(inpaint, refiner=False),
            "vae": D.tiny_vae(self),
            "text_encoder": D.tiny_clip_l(),
            "text_encoder_2": D.tiny_clip_g(),
            "tokenizer": clip_tokenizer(D.PAD_EOT),
            "tokenizer_2": clip_tokenizer(D.PAD_BANG),
            "add_watermarker": False,
        }


def tiny_unet(inpaint: bool, refiner: bool):
    """The tiny SDXL UNet (base: 6 time ids + pooled bigG; refiner: 5, aesthetic score instead of target size)."""
    from diffusers import UNet2DConditionModel

    from webui.models.demo import CLIP_G_HIDDEN, CLIP_L_HIDDEN

    channels = (64, 128)
    adm = (5 if refiner else 6) * TINY_TIME_DIM + CLIP_G_HIDDEN
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=channels,
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),  # the mid block gets the last value
        norm_num_groups=32,
        attention_head_dim=tuple(c // 64 for c in channels),  # 64 channels per head
        cross_attention_dim=CLIP_G_HIDDEN if refiner else CLIP_L_HIDDEN + CLIP_G_HIDDEN,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_DIM,
        projection_class_embeddings_input_dim=adm,
    )


FAMILY = SdxlFamily(
    id="sdxl",
    label="SDXL",
    denoiser="unet",
    pipelines=SDXL_PIPELINES,
    default_size=(1024, 1024),
    prediction="eps",
    latent_channels=4,
    vae_scaling_factor=0.13025,
    vae_shift_factor=None,
    text_encoders=("clip_l", "clip_g"),
    lora_group="sdxl",
    default_steps=25,
    default_cfg=6.0,
    resolution_presets=MEGAPIXEL_BUCKETS,
    reference={"cross_attention_dim": 2048, "head_dim": 64},
    file_parts={
        "unet": UNET,
        "vae": VAE,
        "clip_l": FilePart("text_encoder", "conditioner.embedders.0.transformer.", "hf"),
        # OpenCLIP's trained logit scale (clamped at 100): SDXL base files carry it, loaders ignore it.
        "clip_g": FilePart("text_encoder_2", "conditioner.embedders.1.model.", "openclip", logit_scale=True),
    },
    folder_classes=SDXL_FOLDER_CLASSES,
    index_flags={"force_zeros_for_empty_prompt": True},
    null_components=SDXL_NULL_COMPONENTS,
    scheduler=SDXL_SCHEDULER,
    conditioning=SDXL_CONDITIONING,
    textual_inversion=True,
    preview_factors=SDXL_PREVIEW,
    ays_table="StableDiffusionXLSigmas",
    memory_modes=("attention_slicing",),
    lora_label="SDXL",
    added_time_ids=6,
    refiners=("sdxl", "sdxl_refiner"),
    tiny=True,
    tiny_inpaint=True,
    demo=True,
    demo_lora_components=("unet", "text_encoder", "text_encoder_2"),
    exportable=True,
    control_kinds=("controlnet", "t2i_adapter", "ip_adapter"),
    t2i_downscale=16,
    # Hash and size as published by the Hugging Face LFS pointer (A1111's short hash [31e35c80fc]).
    download=DownloadDefault(
        label="Stable Diffusion XL base 1.0 - 6.9 GB",
        url=(
            "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0"
            "/resolve/main/sd_xl_base_1.0.safetensors"
        ),
        file_name="sd_xl_base_1.0.safetensors",
        size=6_938_078_334,
        sha256="31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        license="CreativeML OpenRAIL++-M",
        page="https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0",
    ),
)
