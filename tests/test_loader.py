"""Loading checkpoints offline: single files, diffusers folders, .ckpt, separate text encoders.

Tiny models of each family (webui.models.demo) are written in the original single-file layout
(webui.models.ldm_export) and loaded back through webui.models.loader, which writes its own
config folders (webui.models.ldm_config). Real-size configs are checked on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tolerance import assert_close
from webui.families.registry import default_families
from webui.models.config_folder import write_config_folder
from webui.models.identify import identify_checkpoint
from webui.models.ldm_config import infer_configs
from webui.models.loader import ModelLoadError, header_from_state_dict, load_checkpoint

FAMILIES = ["sd15", "sdxl", "sdxl_refiner", "sd3"]
TEXT_ENCODER_NAMES = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}


def _load(path, cache_dir, **kwargs):
    return load_checkpoint(path, device="cpu", dtype=torch.float32, cache_dir=cache_dir, **kwargs)


def _generate(pipe, seed: int = 0) -> np.ndarray:
    kwargs = dict(prompt="a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(seed))
    if "Img2Img" in type(pipe).__name__:  # the refiner: strength 1 so that both steps run
        kwargs.update(image=torch.full((1, 3, 64, 64), 0.5), strength=1.0)
    image = pipe(**kwargs).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    return image


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _assert_same_modules(src_pipe, pipe, skip=()):
    for name, module in src_pipe.components.items():
        if isinstance(module, torch.nn.Module) and name not in skip:
            assert _same_weights(module, getattr(pipe, name)), name


# --- tiny models: single file and diffusers folder ---------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_exactly_and_generates(tiny_checkpoint, tmp_path, family):
    ckpt = tiny_checkpoint(family)
    loaded = _load(ckpt.path, tmp_path)
    assert loaded.family.id == family and loaded.source == ckpt.path
    assert type(loaded.pipeline).__name__ == type(ckpt.pipe).__name__
    _assert_same_modules(ckpt.pipe, loaded.pipeline, skip=("text_encoder_3",))
    _generate(loaded.pipeline)


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_folder_loads_and_generates(tiny_checkpoint, tmp_path, family, t5_tokenizer_dir):
    ckpt = tiny_checkpoint(family)
    folder = tmp_path / "model"
    ckpt.pipe.save_pretrained(folder)
    loaded = _load(folder, tmp_path / "cache", t5_tokenizer_dir=t5_tokenizer_dir)
    assert loaded.family.id == family and loaded.notes == []
    _assert_same_modules(ckpt.pipe, loaded.pipeline)
    _generate(loaded.pipeline)


def test_inpaint_unet_gets_the_inpaint_pipeline(tiny_checkpoint, tmp_path):
    loaded = _load(tiny_checkpoint("sd15", inpaint=True).path, tmp_path)
    assert type(loaded.pipeline).__name__ == "StableDiffusionInpaintPipeline"
    assert loaded.record.inpaint and loaded.pipeline.unet.config.in_channels == 9


# --- SD3 text encoders -------------------------------------------------------------------------


def test_sd3_without_t5_tokenizer_loads_without_t5_and_says_so(tiny_checkpoint, tmp_path):
    loaded = _load(tiny_checkpoint("sd3").path, tmp_path, t5_tokenizer_dir=tmp_path / "nothing-here")
    assert loaded.pipeline.text_encoder_3 is None and loaded.pipeline.tokenizer_3 is None
    assert len(loaded.notes) == 1 and loaded.notes[0].startswith("T5 not loaded: no T5 tokenizer found in")
    _generate(loaded.pipeline)


def test_sd3_with_t5_tokenizer_matches_the_original_pipeline(tiny_checkpoint, tmp_path, t5_tokenizer_dir):
    ckpt = tiny_checkpoint("sd3")
    loaded = _load(ckpt.path, tmp_path, t5_tokenizer_dir=t5_tokenizer_dir)
    assert loaded.notes == [] and not loaded.pipeline.text_encoder_3.training  # diffusers leaves it training
    _assert_same_modules(ckpt.pipe, loaded.pipeline)
    # the shared source modules with a scheduler of their own (the session pipe stays untouched)
    source = type(ckpt.pipe)(**{**ckpt.pipe.components, "scheduler": type(ckpt.pipe.scheduler).from_config(
        ckpt.pipe.scheduler.config)})
    # same weights (checked above) but another load: equal within rounding, not bit for bit (tests/tolerance.py)
    assert_close(_generate(loaded.pipeline, seed=3), _generate(source, seed=3))


def test_sd3_file_whose_t5_has_only_shared_embeddings(tiny_checkpoint, tmp_path, t5_tokenizer_dir):
    """Some files store T5's tied embedding once (``shared.weight``); diffusers leaves the other on meta."""
    from webui.models.ldm_export import pipeline_to_original, save_state_dict

    pipe = tiny_checkpoint("sd3").pipe
    state = pipeline_to_original(pipe, "sd3")
    del state["text_encoders.t5xxl.transformer.encoder.embed_tokens.weight"]
    path = save_state_dict(state, tmp_path / "sd3-t5-shared-only.safetensors")
    t5 = _load(path, tmp_path / "cache", t5_tokenizer_dir=t5_tokenizer_dir).pipeline.text_encoder_3
    assert torch.equal(t5.encoder.embed_tokens.weight, pipe.text_encoder_3.shared.weight)


@pytest.fixture
def separate_text_encoders(tiny_checkpoint, tmp_path):
    """ComfyUI-style clip_l / clip_g / t5xxl files (HF layout, ``text_model.`` prefix; T5 in fp16)."""
    from webui.models.ldm_export import hf_clip_to_original, save_state_dict, t5_to_original

    pipe = tiny_checkpoint("sd3").pipe
    folder = tmp_path / "text_encoder"
    t5 = {k: v for k, v in t5_to_original(pipe.text_encoder_3).items() if k != "encoder.embed_tokens.weight"}
    return {
        "clip_l": save_state_dict(hf_clip_to_original(pipe.text_encoder), folder / "clip_l.safetensors"),
        "clip_g": save_state_dict(hf_clip_to_original(pipe.text_encoder_2), folder / "clip_g.safetensors"),
        "t5xxl": save_state_dict(t5, folder / "t5xxl_fp16.safetensors", dtype=torch.float16),
    }


def test_sd3_without_text_encoders_takes_separate_files(
    tiny_checkpoint, tmp_path, separate_text_encoders, t5_tokenizer_dir
):
    ckpt = tiny_checkpoint("sd3", include=("transformer", "vae"))
    loaded = _load(ckpt.path, tmp_path / "cache", text_encoder_files=separate_text_encoders,
                   t5_tokenizer_dir=t5_tokenizer_dir)
    pipe = loaded.pipeline
    _assert_same_modules(ckpt.pipe, pipe, skip=("text_encoder_3",))
    src_t5 = ckpt.pipe.text_encoder_3.state_dict()
    for key, value in pipe.text_encoder_3.state_dict().items():  # went through fp16
        torch.testing.assert_close(value, src_t5[key].half().float(), rtol=0, atol=0)
    assert all(not getattr(pipe, n).training for n in TEXT_ENCODER_NAMES.values())
    assert sum("loaded from" in note for note in loaded.notes) == 3
    _generate(pipe)


def test_sd3_without_text_encoders_or_files_names_what_is_missing(tiny_checkpoint, tmp_path, separate_text_encoders):
    path = tiny_checkpoint("sd3", include=("transformer", "vae")).path
    with pytest.raises(ModelLoadError) as err:
        _load(path, tmp_path, text_encoder_files={"clip_l": separate_text_encoders["clip_l"]})
    message = str(err.value)
    assert "clip_g.safetensors" in message and "models/text_encoder" in message
    assert "clip_l.safetensors" not in message
    with pytest.raises(ModelLoadError, match="clip_l.safetensors and clip_g.safetensors"):
        _load(path, tmp_path)


# --- pickle files ------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object would create the canary file: a stand-in for malicious code."""

    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __reduce__(self):
        return (open, (self.canary, "w"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_with_code_is_refused_and_never_runs(tmp_path, zip_format):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.ckpt"
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1), "x": _Payload(str(canary))}
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelLoadError, match="code or objects that a safe loader refuses; convert it to safetensors"):
        _load(path, tmp_path / "cache")
    assert not canary.exists()


@pytest.mark.parametrize("old_clip_names", [False, True], ids=["current", "pre-text_model-clip-names"])
def test_weights_only_ckpt_loads(tiny_checkpoint, tmp_path, old_clip_names):
    from webui.models.ldm_export import pipeline_to_original

    pipe = tiny_checkpoint("sd15").pipe
    state = pipeline_to_original(pipe, "sd15")
    if old_clip_names:  # early SD1 files: CLIP saved by transformers < 4.19, without "text_model."
        clip = "cond_stage_model.transformer."
        state = {k.replace(clip + "text_model.", clip): v for k, v in state.items()}
    state["model_ema.decay"] = torch.tensor(0.9999)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 1000}, path)
    loaded = _load(path, tmp_path / "cache")
    assert loaded.family.id == "sd15" and loaded.source == path
    _assert_same_modules(pipe, loaded.pipeline)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []  # the safetensors copy is gone
    _generate(loaded.pipeline)


# --- errors ------------------------------------------------------------------------------------


def test_a_file_that_is_not_a_checkpoint_is_a_model_load_error(tiny_checkpoint, tmp_path):
    from webui.models.ldm_export import save_state_dict, vae_to_original

    vae_file = save_state_dict(vae_to_original(tiny_checkpoint("sd15").pipe.vae), tmp_path / "vae.safetensors")
    with pytest.raises(ModelLoadError, match="models/VAE"):
        _load(vae_file, tmp_path / "cache")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(tiny_checkpoint("sd15").path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated|download it again"):
        _load(truncated, tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="file not found"):
        _load(tmp_path / "missing.safetensors", tmp_path / "cache")


# --- config inference --------------------------------------------------------------------------

# Values that shapes cannot show, compared between the inferred config and the model's own.
BEHAVIOUR_KEYS = {
    "UNet2DConditionModel": ("attention_head_dim", "num_attention_heads", "addition_time_embed_dim", "upcast_attention",
                             "norm_num_groups", "cross_attention_dim", "use_linear_projection", "in_channels"),
    "SD3Transformer2DModel": ("attention_head_dim", "num_attention_heads", "qk_norm", "dual_attention_layers",
                              "caption_projection_dim", "patch_size", "pos_embed_max_size"),
    "AutoencoderKL": ("latent_channels", "norm_num_groups", "scaling_factor", "shift_factor", "use_quant_conv"),
    "CLIPTextModel": ("num_attention_heads", "hidden_act", "eos_token_id", "vocab_size", "layer_norm_eps"),
    "CLIPTextModelWithProjection": ("num_attention_heads", "hidden_act", "projection_dim", "eos_token_id"),
    "T5EncoderModel": ("num_heads", "d_kv", "feed_forward_proj", "is_gated_act", "dense_act_fn", "layer_norm_epsilon"),
}


def _build_on_meta(config: dict) -> torch.nn.Module:
    import diffusers
    import transformers

    with torch.device("meta"):
        if "_class_name" in config:
            return getattr(diffusers, config["_class_name"]).from_config(config)
        cls = getattr(transformers, config["architectures"][0])
        return cls(cls.config_class.from_dict(config))


def _norm(value, levels: int):
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * levels if isinstance(value, int) and levels else value


def _assert_same_architecture(reference: torch.nn.Module, config: dict) -> int:
    model = _build_on_meta(config)
    assert type(model) is type(reference)
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ref_shapes
    levels = len(getattr(reference.config, "block_out_channels", ())) if type(model).__name__.startswith("UNet") else 0
    for key in BEHAVIOUR_KEYS[type(model).__name__]:
        got, want = getattr(model.config, key), getattr(reference.config, key)
        assert _norm(got, levels) == _norm(want, levels), key
    return sum(p.numel() for p in model.parameters())


def _infer(family: str, modules: dict) -> dict:
    from webui.models.ldm_export import components_to_original

    state = components_to_original(family, modules)
    detection = identify_checkpoint(header_from_state_dict(Path("x.safetensors"), state))
    assert detection.family == family
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return infer_configs(shapes, detection, default_families().get(family))


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sdxl_refiner", "sd3", "sd35_medium", "sd35_large"])
def test_tiny_configs_match_the_models_own(tiny_checkpoint, family):
    pipe = tiny_checkpoint(family).pipe
    parts = {"unet": "unet", "transformer": "transformer", "vae": "vae", **TEXT_ENCODER_NAMES}
    modules = {p: getattr(pipe, n) for p, n in parts.items() if getattr(pipe, n, None) is not None}
    configs = _infer(family, modules)
    for part, module in modules.items():
        _assert_same_architecture(module, configs[parts[part]])
    assert configs["scheduler"]["_class_name"] == type(pipe.scheduler).__name__
    for key, value in configs["scheduler"].items():
        if key in pipe.scheduler.config and key != "_class_name":
            assert pipe.scheduler.config[key] == value, key


def _real_size_modules():
    """The released models' architectures (values from the notes, section 1), as factories."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    vae = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    vae_sd = lambda sf: AutoencoderKL(**vae, scaling_factor=sf)  # noqa: E731
    vae_sd3 = lambda: AutoencoderKL(**vae, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,  # noqa: E731
                                    use_quant_conv=False, use_post_quant_conv=False)
    clip_l = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  projection_dim=768, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
    big_g = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 projection_dim=1280, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
    xl = dict(block_out_channels=[320, 640, 1280], transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
              cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
              projection_class_embeddings_input_dim=2816, use_linear_projection=True,
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    refiner = dict(block_out_channels=[384, 768, 1536, 1536], transformer_layers_per_block=4,
                   attention_head_dim=[6, 12, 24, 24], cross_attention_dim=1280, addition_embed_type="text_time",
                   addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560, use_linear_projection=True,
                   down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    sd3 = dict(patch_size=2, in_channels=16, num_layers=24, num_attention_heads=24, attention_head_dim=64,
               caption_projection_dim=1536, joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=192)
    t5 = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu")
    return {
        "sd15": {"unet": lambda: UNet2DConditionModel(cross_attention_dim=768), "vae": lambda: vae_sd(0.18215),
                 "clip_l": lambda: CLIPTextModel(CLIPTextConfig(**clip_l))},
        "sdxl": {"unet": lambda: UNet2DConditionModel(**xl), "vae": lambda: vae_sd(0.13025),
                 "clip_l": lambda: CLIPTextModel(CLIPTextConfig(**clip_l)),
                 "clip_g": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**big_g))},
        "sdxl_refiner": {"unet": lambda: UNet2DConditionModel(**refiner), "vae": lambda: vae_sd(0.13025),
                         "clip_g": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**big_g))},
        "sd3": {"transformer": lambda: SD3Transformer2DModel(**sd3), "vae": vae_sd3,
                "clip_l": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip_l)),
                "clip_g": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**big_g)),
                "t5xxl": lambda: T5EncoderModel(T5Config(**t5))},
        "sd35_medium": {"transformer": lambda: SD3Transformer2DModel(
            **{**sd3, "pos_embed_max_size": 384, "qk_norm": "rms_norm", "dual_attention_layers": list(range(13))})},
        "sd35_large": {"transformer": lambda: SD3Transformer2DModel(
            **{**sd3, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432, "qk_norm": "rms_norm"})},
    }


# Parameter counts of the released models (notes, section 1) and of the refiner / SD3.5 transformers.
REAL_PARAMS = {
    ("sd15", "unet"): 859_520_964,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "clip_l"): 123_060_480,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "clip_l"): 123_060_480,
    ("sdxl", "clip_g"): 694_659_840,
    ("sdxl_refiner", "unet"): 2_259_526_660,
    ("sdxl_refiner", "clip_g"): 694_659_840,
    ("sd3", "transformer"): 2_028_328_000,
    ("sd3", "clip_g"): 694_659_840,
    ("sd3", "clip_l"): 123_060_480 + 768 * 768,  # + the (identity) projection SD3's pipeline reads
    ("sd35_medium", "transformer"): 2_243_171_520,
    ("sd35_large", "transformer"): 8_056_627_520,
}


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sdxl_refiner", "sd3", "sd35_medium", "sd35_large"])
def test_real_size_configs_rebuild_the_released_architectures(family):
    factories = _real_size_modules()[family]
    with torch.device("meta"):
        modules = {part: make() for part, make in factories.items()}
    configs = _infer(family, modules)
    names = {"unet": "unet", "transformer": "transformer", "vae": "vae", **TEXT_ENCODER_NAMES}
    for part, module in modules.items():
        count = _assert_same_architecture(module, configs[names[part]])
        if (family, part) in REAL_PARAMS:
            assert count == REAL_PARAMS[(family, part)], part


def test_distilled_unet_with_other_depths_on_the_way_up():
    """SSD-1B-style UNets: the up path's transformer depths differ from the down path's."""
    from diffusers import UNet2DConditionModel

    config = dict(block_out_channels=[320, 640, 1280], transformer_layers_per_block=[1, 2, 4],
                  reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], [1, 1, 1]], attention_head_dim=[5, 10, 20],
                  cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816, use_linear_projection=True,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    inferred = _infer("sdxl", {"unet": unet})["unet"]
    assert inferred["reverse_transformer_layers_per_block"] == config["reverse_transformer_layers_per_block"]
    _assert_same_architecture(unet, inferred)


def test_sd3_file_without_text_encoders_still_gets_the_standard_configs():
    from webui.models.ldm_export import components_to_original

    with torch.device("meta"):
        modules = {"transformer": _real_size_modules()["sd3"]["transformer"]()}
    state = components_to_original("sd3", modules)
    detection = identify_checkpoint(header_from_state_dict(Path("sd3_medium.safetensors"), state))
    configs = infer_configs({k: tuple(v.shape) for k, v in state.items()}, detection, default_families().get("sd3"))
    assert configs["text_encoder"]["hidden_size"] == 768 and configs["text_encoder"]["projection_dim"] == 768
    assert configs["text_encoder_2"]["hidden_size"] == 1280 and configs["text_encoder_2"]["num_hidden_layers"] == 32
    assert configs["text_encoder_3"]["d_model"] == 4096 and configs["text_encoder_3"]["num_layers"] == 24
    assert configs["vae"]["latent_channels"] == 16 and configs["vae"]["use_quant_conv"] is False


# --- the config folder -------------------------------------------------------------------------


def test_config_folder_is_cached_by_content_and_written_whole(tiny_checkpoint, tmp_path):
    from webui.models.safetensors_header import read_header

    header = read_header(tiny_checkpoint("sd15").path)
    detection = identify_checkpoint(header)
    family = default_families().get("sd15")
    shapes = {k: t.shape for k, t in header.tensors.items()}
    first = write_config_folder(tmp_path, detection, family, shapes, None)
    stamp = (first / "model_index.json").stat().st_mtime_ns
    again = write_config_folder(tmp_path, detection, family, shapes, None)
    assert again == first and (first / "model_index.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temp folders left
    names = sorted(p.name for p in first.iterdir())
    assert names == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    inpaint = identify_checkpoint(read_header(tiny_checkpoint("sd15", inpaint=True).path))
    other = write_config_folder(tmp_path, inpaint, family, {**shapes, **_inpaint_shapes(tiny_checkpoint)}, None)
    assert other != first


def _inpaint_shapes(tiny_checkpoint):
    from webui.models.safetensors_header import read_header

    header = read_header(tiny_checkpoint("sd15", inpaint=True).path)
    return {k: t.shape for k, t in header.tensors.items()}
