"""Tiny models -> original-layout single file -> detect -> diffusers from_single_file: bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tolerance import assert_close
from webui.models.identify import identify_checkpoint
from webui.models.safetensors_header import read_header

# (family, inpaint, expected detected parts, denoiser in_channels)
CASES = [
    ("sd15", False, {"unet", "vae", "clip_l"}, 4),
    ("sd15", True, {"unet", "vae", "clip_l"}, 9),
    ("sdxl", False, {"unet", "vae", "clip_l", "clip_g"}, 4),
    ("sdxl", True, {"unet", "vae", "clip_l", "clip_g"}, 9),
    ("sdxl_refiner", False, {"unet", "vae", "clip_g"}, 4),
    ("sd3", False, {"transformer", "vae", "clip_l", "clip_g", "t5xxl"}, 16),
    ("sd35_medium", False, {"transformer", "vae", "clip_l", "clip_g", "t5xxl"}, 16),
    ("sd35_large", False, {"transformer", "vae", "clip_l", "clip_g", "t5xxl"}, 16),
]
IDS = [f"{f}{'-inpaint' if i else ''}" for f, i, *_ in CASES]


def _load(ckpt, **components):
    kwargs = dict(config=str(ckpt.config_dir), local_files_only=True, **components)
    if ckpt.family == "sd15":
        kwargs.update(safety_checker=None, feature_extractor=None)
    pipe = type(ckpt.pipe).from_single_file(str(ckpt.path), **kwargs)
    # diffusers 0.42 leaves a T5 loaded from a single file in train mode (dropout on)
    if getattr(pipe, "text_encoder_3", None) is not None:
        pipe.text_encoder_3.eval()
    return pipe


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def _generate(pipe, family: str, inpaint: bool) -> np.ndarray:
    from PIL import Image

    kwargs = dict(prompt="a photo of a cat", num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    if inpaint:
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        kwargs.update(image=image, mask_image=Image.fromarray(mask), height=64, width=64)
    elif family == "sdxl_refiner":
        kwargs.update(image=image, strength=1.0)
    else:
        kwargs.update(height=64, width=64)
    with torch.no_grad():
        return pipe(**kwargs).images


@pytest.mark.parametrize(("family", "inpaint", "parts", "in_channels"), CASES, ids=IDS)
def test_detect_tiny_checkpoint(tiny_checkpoint, family, inpaint, parts, in_channels):
    ckpt = tiny_checkpoint(family, inpaint)
    header = read_header(ckpt.path)
    detection = identify_checkpoint(header)
    assert (detection.family, set(detection.components), detection.in_channels) == (family, parts, in_channels)
    assert detection.inpaint is inpaint
    assert header.dtypes == {"F32"}


@pytest.mark.parametrize(("family", "inpaint", "parts", "in_channels"), CASES, ids=IDS)
def test_from_single_file_is_bit_exact(tiny_checkpoint, family, inpaint, parts, in_channels):
    ckpt = tiny_checkpoint(family, inpaint)
    loaded = _load(ckpt)
    original = _modules(ckpt.pipe)
    assert set(_modules(loaded)) == set(original)
    for name, module in original.items():
        want = module.state_dict()
        got = getattr(loaded, name).state_dict()
        assert set(got) == set(want), name
        different = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
        assert not different, f"{name}: {different[:5]}"
    image = _generate(loaded, family, inpaint)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and image.std() > 0
    # the weights are bit-exact (checked above); the images agree within rounding (tests/tolerance.py)
    assert_close(image, _generate(ckpt.pipe, family, inpaint))


def test_build_is_deterministic_and_leaves_global_rng_alone():
    from webui.models.demo import build_tiny_pipeline

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_tiny_pipeline("sd15", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_tiny_pipeline("sd15", seed=7)
    c = build_tiny_pipeline("sd15", seed=8)
    key = "conv_in.weight"
    assert torch.equal(a.unet.state_dict()[key], b.unet.state_dict()[key])
    assert not torch.equal(a.unet.state_dict()[key], c.unet.state_dict()[key])
    assert all(not m.training for m in _modules(a).values())


def test_sd3_file_without_text_encoders(tiny_checkpoint):
    """Like the official sd3_medium.safetensors: the user supplies the text encoders."""
    ckpt = tiny_checkpoint("sd3", include=("transformer", "vae"))
    detection = identify_checkpoint(read_header(ckpt.path))
    assert (detection.family, set(detection.components)) == ("sd3", {"transformer", "vae"})
    src = ckpt.pipe
    loaded = _load(ckpt, text_encoder=src.text_encoder, text_encoder_2=src.text_encoder_2,
                   text_encoder_3=None, tokenizer_3=None)
    for name in ("transformer", "vae"):
        want, got = getattr(src, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want)


def test_unet_only_file_keys(tiny_checkpoint):
    ckpt = tiny_checkpoint("sdxl", include=("unet",))
    header = read_header(ckpt.path)
    assert all(k.startswith("model.diffusion_model.") for k in header.keys())
    assert header.shape("model.diffusion_model.label_emb.0.0.weight") == (4 * 64, 6 * 32 + 128)
    assert set(identify_checkpoint(header).components) == {"unet"}


def test_original_key_layout(tiny_checkpoint):
    """Spot checks of names and shapes that real checkpoints have."""
    sd15 = read_header(tiny_checkpoint("sd15").path)
    assert sd15.shape("first_stage_model.encoder.mid.attn_1.q.weight") == (64, 64, 1, 1)
    assert sd15.shape("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight") == (49408, 64)
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in sd15.keys()  # upsampler after no attention
    sdxl = read_header(tiny_checkpoint("sdxl").path)
    g = "conditioner.embedders.1.model."
    assert sdxl.shape(g + "transformer.resblocks.1.attn.in_proj_weight") == (3 * 128, 128)
    assert sdxl.shape(g + "positional_embedding") == (77, 128)
    assert sdxl.shape(g + "text_projection") == (128, 128)
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in sdxl.keys()  # upsampler after attention
    sd3 = read_header(tiny_checkpoint("sd3").path)
    dm = "model.diffusion_model."
    assert sd3.shape(dm + "joint_blocks.1.x_block.attn.qkv.weight") == (3 * 128, 128)
    assert sd3.shape(dm + "pos_embed") == (1, 32 * 32, 128)
    assert dm + "joint_blocks.1.context_block.attn.proj.weight" not in sd3.keys()  # last block is pre-only
    assert {"text_encoders.t5xxl.transformer.shared.weight",
            "text_encoders.t5xxl.transformer.encoder.embed_tokens.weight"} <= set(sd3.keys())


def test_mmdit_export_swaps_last_adaln_halves(tiny_checkpoint):
    from webui.models.ldm_export import mmdit_to_original

    transformer = tiny_checkpoint("sd3").pipe.transformer
    sd = mmdit_to_original(transformer)
    ours = transformer.state_dict()["norm_out.linear.weight"]
    theirs = sd["final_layer.adaLN_modulation.1.weight"]
    half = ours.shape[0] // 2
    assert torch.equal(theirs[:half], ours[half:]) and torch.equal(theirs[half:], ours[:half])


def test_clip_tokenizer_gives_the_known_ids():
    from webui.models.tokenizers import clip_tokenizer

    tok = clip_tokenizer("<|endoftext|>")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (len(tok), tok.model_max_length, tok.pad_token_id) == (49408, 77, 49407)
    assert clip_tokenizer("!").pad_token_id == 0


def test_write_clip_tokenizer_files_reload(tmp_path):
    from transformers import CLIPTokenizer

    from webui.models.tokenizers import CLIP_FILES, write_clip_tokenizer

    dest = write_clip_tokenizer(tmp_path / "tokenizer_2", "!")
    assert sorted(p.name for p in dest.iterdir()) == sorted(CLIP_FILES)
    stamp = (dest / "vocab.json").stat().st_mtime_ns
    write_clip_tokenizer(dest, "!")  # complete: left alone
    assert (dest / "vocab.json").stat().st_mtime_ns == stamp
    tok = CLIPTokenizer.from_pretrained(str(dest))
    assert tok("a cat", padding="max_length", max_length=8).input_ids == [49406, 320, 2368, 49407, 0, 0, 0, 0]


def test_tiny_t5_tokenizer_reloads(tmp_path):
    from transformers import AutoTokenizer

    from webui.models.tokenizers import write_tiny_t5_tokenizer

    dest = write_tiny_t5_tokenizer(tmp_path / "t5")
    tok = AutoTokenizer.from_pretrained(str(dest))
    ids = tok("a photo of a cat").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.unk_token_id not in ids and max(ids) < 32128


def test_write_demo_models(tmp_path):
    from webui.models.demo import write_demo_models

    paths = write_demo_models(tmp_path, families=("sd15",))
    assert paths == [tmp_path / "Stable-diffusion" / "demo-sd15-noise.safetensors"]
    header = read_header(paths[0])
    assert header.metadata == {"webui.demo": "true", "modelspec.title": "Demo sd15 (random weights, makes noise)"}
    assert identify_checkpoint(header).family == "sd15"
    stamp = paths[0].stat().st_mtime_ns
    assert write_demo_models(tmp_path, families=("sd15",)) == paths
    assert paths[0].stat().st_mtime_ns == stamp
    assert [p.name for p in paths[0].parent.iterdir()] == [paths[0].name]  # no temp files left
