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

from webui.families.base import FamilyAdapter
from webui.families.registry import BUILTIN, default_families

# Families with a tiny model, those offered as demo models, and the task pipelines each tiny model is built as.
FAMILIES = tuple(f.id for f in BUILTIN if f.tiny)
DEMO_FAMILIES = tuple(f.id for f in BUILTIN if f.demo)
INPAINT_FAMILIES = tuple(f.id for f in BUILTIN if f.tiny and f.tiny_inpaint)

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


def tiny_clip_l(with_projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = _clip_config(CLIP_L_HIDDEN, "quick_gelu", CLIP_L_HIDDEN)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def tiny_clip_g():
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_clip_config(CLIP_G_HIDDEN, "gelu", CLIP_G_HIDDEN))


def tiny_t5():
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


def tiny_vae(family: FamilyAdapter):
    """The tiny VAE of a family: its latent channels, scaling/shift factors and quant convs."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=32,
        latent_channels=family.latent_channels,
        sample_size=family.default_size[0],
        scaling_factor=family.vae_scaling_factor,
        shift_factor=family.vae_shift_factor,
        use_quant_conv=family.vae_quant_conv,
        use_post_quant_conv=family.vae_quant_conv,
        force_upcast=True,
    )


def _scheduler(family: FamilyAdapter):
    """The family's real scheduler, from the same table the loader writes config folders from."""
    import diffusers

    config = family.scheduler_config()
    return getattr(diffusers, config.pop("_class_name")).from_config(config)


# tensors that must keep their exact constructed value (SD3's identity CLIP-L projection)
_KEEP_EXACT = {("text_encoder", "text_projection.weight")}


def _jitter(parts: dict, family: FamilyAdapter, seed: int) -> None:
    """Add small seeded noise to every floating weight and buffer, in place."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    keep = _KEEP_EXACT if family.pooled_clip_l else set()
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

    ``family``: a family id in ``FAMILIES``. ``inpaint=True`` (the ``INPAINT_FAMILIES``) gives a
    9-input-channel UNet in the family's inpaint pipeline. The global torch RNG state is restored
    afterwards. All modules are in eval mode.
    """
    import diffusers
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    adapter = default_families().get(family)
    if inpaint and not adapter.tiny_inpaint:
        raise ValueError(
            f"there is no inpainting variant of {family!r}; inpaint=True works for {' and '.join(INPAINT_FAMILIES)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = adapter.tiny_parts(inpaint)
    _jitter(parts, adapter, seed)
    parts["scheduler"] = _scheduler(adapter)
    pipe = getattr(diffusers, adapter.pipelines["inpaint" if inpaint else "txt2img"])(**parts)
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
    ``__metadata__`` ``{"webui.demo": "true", "modelspec.title": ...}``. Families with T5 also
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
        if family not in FAMILIES:
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
        if "t5xxl" in default_families().get(family).text_encoders:
            write_tiny_t5_tokenizer(models_dir / "text_encoder" / "t5_tokenizer")
        written.append(path)
    return written

