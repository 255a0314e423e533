"""Tiny random-weight models of each family, built fully offline.

They run the real diffusers pipelines at toy sizes (a 2-step 64x64 image takes a few
hundredths of a second on a CPU) and make noise. Tests use them, and the app can offer
them as demo checkpoints (``write_demo_models``) so the whole UI works before the user has
downloaded anything.

Every dimension follows docs/MODEL_CONVENTIONS.md (GroupNorm 32 groups, 8 heads for SD1.x,
64 channels per head elsewhere, CLIP vocab 49408 / 77 positions, T5 d_kv 64 / vocab 32128 /
gated-gelu), so a loader that rebuilds configs from tensor shapes rebuilds these exactly.
Everything not visible in the shapes (sample sizes, schedulers, VAE factors) has the value of
the real family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

# family -> (pipeline class, inpaint pipeline class or None)
PIPELINE_CLASSES: dict[str, tuple[str, str | None]] = {
    "sd15": ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"),
    "sdxl_refiner": ("StableDiffusionXLImg2ImgPipeline", None),
    "sd3": ("StableDiffusion3Pipeline", None),
    "sd35_medium": ("StableDiffusion3Pipeline", None),
    "sd35_large": ("StableDiffusion3Pipeline", None),
}
FAMILIES = tuple(PIPELINE_CLASSES)
DEMO_FAMILIES = ("sd15", "sdxl", "sd3")

# Tiny text encoders. CLIP-L and OpenCLIP-G MUST differ in width: diffusers picks the weights
# of each by position-embedding width.
CLIP_L_HIDDEN = 64
CLIP_G_HIDDEN = 128
T5_D_MODEL = 256  # == MMDiT joint_attention_dim, >= CLIP_L_HIDDEN + CLIP_G_HIDDEN
PAD_EOT = "<|endoftext|>"
PAD_BANG = "!"

# Scale of the deterministic noise added to every weight after construction, so that no
# tensor is left at an init constant (zeros, ones): a wrong key mapping then changes outputs.
_JITTER = 0.02


def _clip_config(hidden: int, act: str, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=2,
        num_attention_heads=hidden // 64,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim or hidden,
        # the values of the released configs (legacy argmax pooling: EOS has the highest id)
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _clip_l(with_projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = _clip_config(CLIP_L_HIDDEN, "quick_gelu", CLIP_L_HIDDEN)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _clip_g():
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_clip_config(CLIP_G_HIDDEN, "gelu", CLIP_G_HIDDEN))


def _t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=32128,
        d_model=T5_D_MODEL,
        d_kv=64,
        d_ff=512,
        num_layers=2,
        num_heads=T5_D_MODEL // 64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
    )
    return T5EncoderModel(config)


def _vae(family: str):
    from diffusers import AutoencoderKL

    common = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=32,
    )
    if family in ("sd3", "sd35_medium", "sd35_large"):
        return AutoencoderKL(
            **common,
            latent_channels=16,
            sample_size=1024,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    if family == "sd15":
        return AutoencoderKL(**common, latent_channels=4, sample_size=512, scaling_factor=0.18215)
    return AutoencoderKL(**common, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True)


def _unet_sd15(inpaint: bool):
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
        cross_attention_dim=CLIP_L_HIDDEN,
        attention_head_dim=8,  # SD1.x convention: 8 heads
    )


def _unet_sdxl(inpaint: bool, refiner: bool = False):
    from diffusers import UNet2DConditionModel

    channels = (64, 128)
    time_dim = 32
    # base: 6 time ids + pooled bigG; refiner: 5 (aesthetic score instead of target size)
    adm = (5 if refiner else 6) * time_dim + CLIP_G_HIDDEN
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
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=adm,
    )


def _mmdit(family: str):
    from diffusers import SD3Transformer2DModel

    hidden = 128
    extra = {}
    if family == "sd35_medium":
        extra = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)}
    elif family == "sd35_large":
        extra = {"qk_norm": "rms_norm"}
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
        **extra,
    )


def _scheduler(family: str):
    """The family's real scheduler, from the same table the loader writes config folders from."""
    import diffusers

    from webui.models.families import default_families
    from webui.models.ldm_config import scheduler_config

    config = scheduler_config(default_families().get(family))
    return getattr(diffusers, config.pop("_class_name")).from_config(config)


def _sd15_parts(inpaint: bool) -> dict:
    from webui.models.tokenizers import clip_tokenizer

    return {
        "unet": _unet_sd15(inpaint),
        "vae": _vae("sd15"),
        "text_encoder": _clip_l(),
        "tokenizer": clip_tokenizer(PAD_EOT),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _sdxl_parts(inpaint: bool) -> dict:
    from webui.models.tokenizers import clip_tokenizer

    return {
        "unet": _unet_sdxl(inpaint),
        "vae": _vae("sdxl"),
        "text_encoder": _clip_l(),
        "text_encoder_2": _clip_g(),
        "tokenizer": clip_tokenizer(PAD_EOT),
        "tokenizer_2": clip_tokenizer(PAD_BANG),
        "add_watermarker": False,
    }


def _refiner_parts(inpaint: bool) -> dict:
    from webui.models.tokenizers import clip_tokenizer

    return {
        "unet": _unet_sdxl(inpaint, refiner=True),
        "vae": _vae("sdxl"),
        "text_encoder": None,
        "tokenizer": None,
        "text_encoder_2": _clip_g(),
        "tokenizer_2": clip_tokenizer(PAD_BANG),
        "requires_aesthetics_score": True,
        "add_watermarker": False,
    }


def _sd3_parts(family: str) -> dict:
    import torch

    from webui.models.tokenizers import clip_tokenizer, tiny_t5_tokenizer

    clip_l = _clip_l(with_projection=True)
    with torch.no_grad():
        # diffusers replaces SD3's CLIP-L projection by the identity when loading a single file
        clip_l.text_projection.weight.copy_(torch.eye(CLIP_L_HIDDEN))
    return {
        "transformer": _mmdit(family),
        "vae": _vae(family),
        "text_encoder": clip_l,
        "text_encoder_2": _clip_g(),
        "text_encoder_3": _t5(),
        "tokenizer": clip_tokenizer(PAD_EOT),
        "tokenizer_2": clip_tokenizer(PAD_BANG),
        "tokenizer_3": tiny_t5_tokenizer(),
    }


_PARTS: dict[str, Callable[[bool], dict]] = {
    "sd15": _sd15_parts,
    "sdxl": _sdxl_parts,
    "sdxl_refiner": _refiner_parts,
    "sd3": lambda inpaint: _sd3_parts("sd3"),
    "sd35_medium": lambda inpaint: _sd3_parts("sd35_medium"),
    "sd35_large": lambda inpaint: _sd3_parts("sd35_large"),
}
# tensors that must keep their exact constructed value
_KEEP_EXACT = {("text_encoder", "text_projection.weight")}


def _jitter(parts: dict, family: str, seed: int) -> None:
    """Add small seeded noise to every floating weight and buffer, in place."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    keep = _KEEP_EXACT if family.startswith("sd3") else set()
    with torch.no_grad():
        for name in sorted(parts):
            module = parts[name]
            if not isinstance(module, torch.nn.Module):
                continue
            for key, tensor in module.state_dict(keep_vars=True).items():
                if (name, key) in keep or not tensor.is_floating_point():
                    continue
                tensor.add_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * _JITTER)


def build_tiny_pipeline(family: str, seed: int = 0, inpaint: bool = False):
    """A tiny random-weight diffusers pipeline of ``family``; the same seed gives the same weights.

    ``family``: sd15, sdxl, sdxl_refiner, sd3, sd35_medium or sd35_large. ``inpaint=True``
    (sd15/sdxl) gives a 9-input-channel UNet in the family's inpaint pipeline. The global
    torch RNG state is restored afterwards. All modules are in eval mode.
    """
    import diffusers
    import torch

    if family not in PIPELINE_CLASSES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    base_cls, inpaint_cls = PIPELINE_CLASSES[family]
    if inpaint and inpaint_cls is None:
        raise ValueError(f"there is no inpainting variant of {family!r}; inpaint=True works for sd15 and sdxl")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = _PARTS[family](inpaint)
    _jitter(parts, family, seed)
    parts["scheduler"] = _scheduler(family)
    pipe = getattr(diffusers, inpaint_cls if inpaint else base_cls)(**parts)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


DEMO_METADATA_KEY = "webui.demo"


def demo_checkpoint_name(family: str) -> str:
    return f"demo-{family}-noise.safetensors"


def write_demo_models(
    models_dir: Path, families: tuple[str, ...] = DEMO_FAMILIES, *, loras: bool = False
) -> list[Path]:
    """Write each family's tiny model as an original-layout single file; return their paths.

    Files go to ``models_dir/Stable-diffusion/demo-<family>-noise.safetensors``, with
    ``__metadata__`` ``{"webui.demo": "true", "modelspec.title": ...}``. SD3-type families also
    get the tiny T5 tokenizer in ``models_dir/text_encoder/t5_tokenizer/`` (demo use only).
    ``loras``: also a tiny LoRA per family in ``models_dir/Lora/demo-<family>-lora.safetensors``
    (``webui.models.demo_lora``). Existing files are kept; writes are atomic.
    """
    from webui.models import demo_lora
    from webui.models.ldm_export import save_original
    from webui.models.tokenizers import write_tiny_t5_tokenizer

    models_dir = Path(models_dir)
    out_dir = models_dir / "Stable-diffusion"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for family in families:
        if family not in PIPELINE_CLASSES:
            raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        path = out_dir / demo_checkpoint_name(family)
        lora = demo_lora.demo_lora_path(models_dir, family) if loras and family in demo_lora.COMPONENTS else None
        if not path.exists() or (lora is not None and not lora.exists()):
            pipe = build_tiny_pipeline(family)  # the same seed: the LoRA's shapes fit the checkpoint
            if not path.exists():
                meta = {DEMO_METADATA_KEY: "true", "modelspec.title": f"Demo {family} (random weights, makes noise)"}
                save_original(pipe, family, path, metadata=meta)
            if lora is not None and not lora.exists():
                demo_lora.write_demo_lora(pipe, family, lora)
            del pipe
        if family.startswith("sd3"):
            write_tiny_t5_tokenizer(models_dir / "text_encoder" / "t5_tokenizer")
        written.append(path)
    return written

