"""SD 1.x: one CLIP ViT-L/14, an 8-head UNet at 512 px, eps-prediction, 4 latent channels."""

from __future__ import annotations

from typing import Any

from webui.families.base import (
    DM,
    LAYOUT,
    NO_MATCH,
    VAE_PREFIX,
    ClipSlot,
    DownloadDefault,
    FilePart,
    TextRecipe,
)
from webui.families.unet import SCHEDULER_SD, UnetFamily

SD_PIPELINES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}
# Diffusers folders of SD 1.x / 2.x pipelines (a ControlNet pipeline's controlnet is left out when loading).
SD_FOLDER_CLASSES = (
    *SD_PIPELINES.values(),
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline",
)
SD_INDEX_FLAGS = {"requires_safety_checker": False}
SD_NULL_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
SD_SCHEDULER = {"_class_name": "PNDMScheduler", **SCHEDULER_SD}

# One CLIP, clip skip n = hidden_states[-n] through the final LayerNorm (n = 1 is last_hidden_state).
SD_CONDITIONING = TextRecipe(
    (ClipSlot("tokenizer", "text_encoder", "last", False),), pooled=False, t5=False, zeros_for_empty_negative=False
)
# The SD 1.x VAE's latent-to-RGB factors (fitted against VAE decodes; the numbers ComfyUI also uses).
SD_PREVIEW = (
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
    [0.0, 0.0, 0.0],
)
UNET = FilePart("unet", DM, "unet")
VAE = FilePart("vae", VAE_PREFIX, "vae")

# Its 512 base and the common portrait/landscape sizes that stay near 512x512 pixels.
_SIZES = ((512, 512), (512, 768), (768, 512), (448, 640), (640, 448), (576, 768), (768, 576))


class Sd15Family(UnetFamily):
    def unet_evidence(self, header: Any) -> int:
        return LAYOUT  # any UNet the other families do not claim

    def lora_structure(self, layers: list[Any]) -> int:
        return LAYOUT if {layer.component for layer in layers} & {"unet", "text_encoder"} else NO_MATCH

    def tiny_parts(self, inpaint: bool) -> dict:
        from webui.models import demo as D
        from webui.models.tokenizers import clip_tokenizer

        return {
            "unet": _tiny_unet(inpaint, D.CLIP_L_HIDDEN),
            "vae": D.tiny_vae(self),
            "text_encoder": D.tiny_clip_l(),
            "tokenizer": clip_tokenizer(D.PAD_EOT),
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }


def _tiny_unet(inpaint: bool, context: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=context,
        attention_head_dim=8,  # SD1.x convention: 8 heads
    )


FAMILY = Sd15Family(
    id="sd15",
    label="SD 1.5",
    denoiser="unet",
    pipelines=SD_PIPELINES,
    default_size=(512, 512),
    prediction="eps",
    latent_channels=4,
    vae_scaling_factor=0.18215,
    vae_shift_factor=None,
    text_encoders=("clip_l",),
    lora_group="sd15",
    resolution_presets=_SIZES,
    reference={"cross_attention_dim": 768, "heads": 8},
    file_parts={"unet": UNET, "vae": VAE, "clip_l": FilePart("text_encoder", "cond_stage_model.transformer.", "hf")},
    folder_classes=SD_FOLDER_CLASSES,
    index_flags=SD_INDEX_FLAGS,
    null_components=SD_NULL_COMPONENTS,
    scheduler=SD_SCHEDULER,
    conditioning=SD_CONDITIONING,
    textual_inversion=True,
    preview_factors=SD_PREVIEW,
    ays_table="StableDiffusionSigmas",
    memory_modes=("attention_slicing",),
    lora_label="SD 1.5",
    tiny=True,
    tiny_inpaint=True,
    demo=True,
    demo_lora_components=("unet", "text_encoder"),
    exportable=True,
    control_kinds=("controlnet", "t2i_adapter", "ip_adapter"),
    t2i_downscale=8,
    # Hash and size as published by the Hugging Face LFS pointer (A1111's short hash [6ce0161689]).
    download=DownloadDefault(
        label="Stable Diffusion 1.5 (pruned, EMA only) - 4.3 GB",
        url=(
            "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
            "/resolve/main/v1-5-pruned-emaonly.safetensors"
        ),
        file_name="v1-5-pruned-emaonly.safetensors",
        size=4_265_146_304,
        sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        license="CreativeML OpenRAIL-M",
        page="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
    ),
)
