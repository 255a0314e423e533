"""Model families as data: one FamilySpec per kind of checkpoint the app runs.

Nothing here imports torch or diffusers; the pipeline classes are named, and
the loader resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from webui.registry import Registry

TASKS = ("txt2img", "img2img", "inpaint")


@dataclass(frozen=True)
class FamilySpec:
    id: str
    label: str
    # "unet" or "mmdit": which denoiser the checkpoint carries.
    denoiser: str
    # diffusers pipeline class per task.
    pipelines: Mapping[str, str]
    default_size: tuple[int, int]
    # "eps", "v" or "flow".
    prediction: str
    latent_channels: int
    vae_scaling_factor: float
    vae_shift_factor: float | None
    # Text encoder slots in pipeline order; each is a TEXT_ENCODERS key.
    text_encoders: tuple[str, ...]
    # LoRAs made for this group fit (SDXL base and refiner differ; SD3 and SD3.5 share a group
    # only when their transformers have the same shapes, which the LoRA loader checks).
    lora_group: str
    default_steps: int = 20
    default_cfg: float = 7.0
    # (width, height) sizes the model was trained on; the UI offers them as presets.
    resolution_presets: tuple[tuple[int, int], ...] = ()
    # Configuration values of the reference model; the loader overrides any that
    # the checkpoint's tensor shapes say are different.
    reference: Mapping[str, object] = field(default_factory=dict)

    @property
    def is_flow(self) -> bool:
        return self.prediction == "flow"


@dataclass(frozen=True)
class TextEncoderSpec:
    id: str
    label: str
    # "clip", "clip_with_projection" or "t5"
    kind: str
    hidden_size: int
    # token used for padding by the tokenizer of this slot
    pad_token: str


TEXT_ENCODERS: Mapping[str, TextEncoderSpec] = {
    "clip_l": TextEncoderSpec("clip_l", "CLIP ViT-L/14", "clip", 768, "<|endoftext|>"),
    "clip_g": TextEncoderSpec("clip_g", "OpenCLIP ViT-bigG/14", "clip_with_projection", 1280, "!"),
    "openclip_h": TextEncoderSpec("openclip_h", "OpenCLIP ViT-H/14", "clip", 1024, "!"),
    "t5xxl": TextEncoderSpec("t5xxl", "T5-XXL encoder", "t5", 4096, "<pad>"),
}

_SD_PIPES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}
_SDXL_PIPES = {
    "txt2img": "StableDiffusionXLPipeline",
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
}
_SD3_PIPES = {
    "txt2img": "StableDiffusion3Pipeline",
    "img2img": "StableDiffusion3Img2ImgPipeline",
    "inpaint": "StableDiffusion3InpaintPipeline",
}


def default_families() -> Registry[FamilySpec]:
    """The built-in families (a fresh registry each call: no shared mutable state)."""
    reg: Registry[FamilySpec] = Registry("model family")
    for spec in _BUILTIN:
        reg.register(spec.id, spec)
    return reg


# SD1.5: its 512 base and the common portrait/landscape sizes that stay near 512x512 pixels.
_SD15_SIZES = ((512, 512), (512, 768), (768, 512), (448, 640), (640, 448), (576, 768), (768, 576))
_SD2_SIZES = ((768, 768), (640, 896), (896, 640), (512, 512))
# SDXL's trained aspect buckets (about one megapixel each, SDXL report appendix); SD3 was trained on the same set.
_MEGAPIXEL_BUCKETS = (
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

_BUILTIN = (
    FamilySpec(
        id="sd15",
        label="SD 1.5",
        denoiser="unet",
        pipelines=_SD_PIPES,
        default_size=(512, 512),
        prediction="eps",
        latent_channels=4,
        vae_scaling_factor=0.18215,
        vae_shift_factor=None,
        text_encoders=("clip_l",),
        lora_group="sd15",
        resolution_presets=_SD15_SIZES,
        reference={"cross_attention_dim": 768, "heads": 8},
    ),
    FamilySpec(
        id="sd2",
        label="SD 2.x",
        denoiser="unet",
        pipelines=_SD_PIPES,
        default_size=(768, 768),
        prediction="v",
        latent_channels=4,
        vae_scaling_factor=0.18215,
        vae_shift_factor=None,
        text_encoders=("openclip_h",),
        lora_group="sd2",
        resolution_presets=_SD2_SIZES,
        reference={"cross_attention_dim": 1024, "head_dim": 64},
    ),
    FamilySpec(
        id="sdxl",
        label="SDXL",
        denoiser="unet",
        pipelines=_SDXL_PIPES,
        default_size=(1024, 1024),
        prediction="eps",
        latent_channels=4,
        vae_scaling_factor=0.13025,
        vae_shift_factor=None,
        text_encoders=("clip_l", "clip_g"),
        lora_group="sdxl",
        default_steps=25,
        default_cfg=6.0,
        resolution_presets=_MEGAPIXEL_BUCKETS,
        reference={"cross_attention_dim": 2048, "head_dim": 64},
    ),
    FamilySpec(
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
        resolution_presets=_MEGAPIXEL_BUCKETS,
        reference={"cross_attention_dim": 1280, "head_dim": 64},
    ),
    FamilySpec(
        id="sd3",
        label="SD3 Medium",
        denoiser="mmdit",
        pipelines=_SD3_PIPES,
        default_size=(1024, 1024),
        prediction="flow",
        latent_channels=16,
        vae_scaling_factor=1.5305,
        vae_shift_factor=0.0609,
        text_encoders=("clip_l", "clip_g", "t5xxl"),
        lora_group="sd3",
        default_steps=28,
        default_cfg=7.0,
        resolution_presets=_MEGAPIXEL_BUCKETS,
        reference={"head_dim": 64, "shift": 3.0},
    ),
    FamilySpec(
        id="sd35_medium",
        label="SD3.5 Medium",
        denoiser="mmdit",
        pipelines=_SD3_PIPES,
        default_size=(1024, 1024),
        prediction="flow",
        latent_channels=16,
        vae_scaling_factor=1.5305,
        vae_shift_factor=0.0609,
        text_encoders=("clip_l", "clip_g", "t5xxl"),
        lora_group="sd35_medium",
        default_steps=40,
        default_cfg=4.5,
        resolution_presets=_MEGAPIXEL_BUCKETS,
        reference={"head_dim": 64, "shift": 3.0},
    ),
    FamilySpec(
        id="sd35_large",
        label="SD3.5 Large",
        denoiser="mmdit",
        pipelines=_SD3_PIPES,
        default_size=(1024, 1024),
        prediction="flow",
        latent_channels=16,
        vae_scaling_factor=1.5305,
        vae_shift_factor=0.0609,
        text_encoders=("clip_l", "clip_g", "t5xxl"),
        lora_group="sd35_large",
        default_steps=28,
        default_cfg=3.5,
        resolution_presets=_MEGAPIXEL_BUCKETS,
        reference={"head_dim": 64, "shift": 3.0},
    ),
)
