"""LoRA identification (header only), compatibility checks and applying LoRAs to tiny pipelines."""

from __future__ import annotations

import copy
import dataclasses
import os
import re

import pytest
import torch

from tests.lora_files import (
    write_diffusers_lora,
    write_kohya_sd3,
    write_kohya_unet_family,
    write_loha,
    write_shapes,
)
from webui.families.registry import default_families
from webui.models.lora import LoraError, check_compatible, inspect_lora
from webui.models.lora_manager import LoraManager, LoraWeight
from webui.models.safetensors_header import ModelFileError, read_header

FAMILIES = default_families()


def info_of(path):
    return inspect_lora(read_header(path))


def render(pipe, family: str):
    kw = dict(
        prompt="a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    if family == "sd3":
        kw["max_sequence_length"] = 32
    return pipe(**kw).images


def same(a, b) -> bool:
    return bool((a == b).all())


def differs(a, b, at_least: float = 1e-3) -> bool:
    return float(abs(a - b).max()) > at_least


# --- identification from the header (real model sizes, zero tensors) ---------------------------------

K_SD1_TOK = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
K_SGM_TOK = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
D_UNET_TOK = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"


def kohya(name, fin, fout, rank=8, alpha=True):
    out = {f"{name}.lora_down.weight": (rank, fin), f"{name}.lora_up.weight": (fout, rank)}
    if alpha:
        out[f"{name}.alpha"] = ()
    return out


def diffusers(name, fin, fout, rank=8, a="lora_A.weight", b="lora_B.weight"):
    return {f"{name}.{a}": (rank, fin), f"{name}.{b}": (fout, rank)}


IDENTIFY_CASES = {
    "kohya-sd15": (
        {**kohya(K_SD1_TOK, 768, 640), **kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768)},
        ("kohya", "sd15", {"unet", "text_encoder"}, 8, 768),
    ),
    "kohya-sd2": (kohya(K_SD1_TOK, 1024, 640, rank=16), ("kohya", "sd2", {"unet"}, 16, 1024)),
    "kohya-sd2-te-only": (
        kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 1024, 1024),
        ("kohya", "sd2", {"text_encoder"}, 8, None),
    ),
    "kohya-sdxl": (
        {
            **kohya(K_SGM_TOK, 2048, 640),
            **kohya("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
            **kohya("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280, rank=4),
        },
        ("kohya", "sdxl", {"unet", "text_encoder", "text_encoder_2"}, 8, 2048),
    ),
    # odd width: SGM block names alone say SDXL
    "kohya-sdxl-sgm-names": (kohya(K_SGM_TOK, 96, 64), ("kohya", "sdxl", {"unet"}, 8, 96)),
    "kohya-sd3": (
        {
            **kohya("lora_unet_joint_blocks_0_x_block_attn_qkv", 1536, 3 * 1536),
            **kohya("lora_unet_joint_blocks_0_context_block_attn_qkv", 1536, 3 * 1536),
        },
        ("kohya", "sd3", {"transformer"}, 8, 1536),
    ),
    "kohya-flux": (
        kohya("lora_unet_double_blocks_0_img_attn_qkv", 3072, 9216),
        ("kohya", "flux", {"transformer"}, 8, None),
    ),
    "diffusers-sdxl": (
        {
            **diffusers(D_UNET_TOK, 2048, 640),
            **diffusers("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj", 1280, 1280),
        },
        ("diffusers", "sdxl", {"unet", "text_encoder_2"}, 8, 2048),
    ),
    "diffusers-old-names": (
        diffusers(D_UNET_TOK, 768, 640, a="lora.down.weight", b="lora.up.weight"),
        ("diffusers", "sd15", {"unet"}, 8, 768),
    ),
    "diffusers-attn-processor": (
        diffusers(
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora",
            768,
            640,
            a="down.weight",
            b="up.weight",
        ),
        ("diffusers", "sd15", {"unet"}, 8, 768),
    ),
    "diffusers-sd3": (
        {
            **diffusers("transformer.transformer_blocks.0.attn.to_q", 1536, 1536),
            **diffusers("transformer.transformer_blocks.0.attn.add_k_proj", 1536, 1536),
        },
        ("diffusers", "sd3", {"transformer"}, 8, 1536),
    ),
    "diffusers-flux": (
        diffusers("transformer.single_transformer_blocks.0.attn.to_q", 3072, 3072),
        ("diffusers", "flux", {"transformer"}, 8, None),
    ),
    "peft-unet": (
        diffusers("base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 768, 640),
        ("peft", "sd15", {"unet"}, 8, 768),
    ),
}


@pytest.mark.parametrize("case", list(IDENTIFY_CASES))
def test_identify(case, tmp_path):
    shapes, (fmt, group, targets, rank, ctx) = IDENTIFY_CASES[case]
    info = info_of(write_shapes(tmp_path / f"{case}.safetensors", shapes))
    assert (info.format, info.family_group, set(info.targets), info.rank, info.context_dim) == (
        fmt,
        group,
        targets,
        rank,
        ctx,
    )
    assert info.name == case


REFUSE_CASES = {
    "loha": ({f"{K_SD1_TOK}.hada_w1_a": (8, 4), f"{K_SD1_TOK}.hada_w1_b": (4, 8)}, "LyCORIS LoHa"),
    "lokr": ({f"{K_SD1_TOK}.lokr_w1": (8, 8), f"{K_SD1_TOK}.lokr_w2": (8, 8)}, "LyCORIS LoKr"),
    "dora": ({**kohya(K_SD1_TOK, 768, 640), f"{K_SD1_TOK}.dora_scale": (1, 640)}, "DoRA"),
    "tucker": ({**kohya(K_SD1_TOK, 768, 640), f"{K_SD1_TOK}.lora_mid.weight": (8, 8, 3, 3)}, "lora_mid"),
    "not-a-lora": ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4)}, "not a LoRA"),
    "half-pair": ({f"{K_SD1_TOK}.lora_down.weight": (8, 768)}, "not down/up pairs"),
}


@pytest.mark.parametrize("case", list(REFUSE_CASES))
def test_identify_refuses(case, tmp_path):
    shapes, words = REFUSE_CASES[case]
    with pytest.raises(LoraError, match=re.escape(words)) as err:
        info_of(write_shapes(tmp_path / f"{case}.safetensors", shapes))
    assert isinstance(err.value, ModelFileError)


def test_loha_file_refused_with_clear_message(tmp_path):
    with pytest.raises(LoraError, match="LyCORIS LoHa file, which this app cannot apply; use a standard LoRA"):
        info_of(write_loha(tmp_path / "style_loha.safetensors"))


# --- compatibility ---------------------------------------------------------------------------------


def test_wrong_family_refused_with_message(fresh_tiny_pipe, tmp_path):
    sdxl = fresh_tiny_pipe("sdxl")
    info = info_of(write_kohya_unet_family(sdxl, tmp_path / "xl_style.safetensors", sgm_names=True))
    sd15 = fresh_tiny_pipe("sd15")
    with pytest.raises(LoraError) as err:
        check_compatible(info, sd15, FAMILIES.get("sd15"))
    assert "LoRA 'xl_style' is for SDXL but the loaded model is SD 1.5; pick an SD 1.5 LoRA or switch model" in str(
        err.value
    )
    with pytest.raises(LoraError, match="is for SDXL"):
        LoraManager().apply(sd15, FAMILIES.get("sd15"), [(info, 1.0)])
    assert sd15.get_list_adapters() == {}


def test_same_family_other_size_refused(fresh_tiny_pipe, tmp_path):
    # A LoRA for the real SD 1.5 (768-wide text context) against the tiny SD 1.5 (64-wide).
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    info = info_of(write_shapes(tmp_path / "real_sd15.safetensors", kohya(name, 768, 32)))
    assert info.family_group == "sd15"
    with pytest.raises(LoraError, match=r"does not fit the loaded SD 1\.5 model: 1 layer\(s\) have other sizes"):
        check_compatible(info, fresh_tiny_pipe("sd15"), FAMILIES.get("sd15"))


def test_sd3_lora_for_bigger_model_refused(fresh_tiny_pipe, tmp_path):
    info = info_of(
        write_shapes(tmp_path / "sd35l.safetensors", kohya("lora_unet_joint_blocks_0_x_block_attn_qkv", 2432, 7296))
    )
    with pytest.raises(LoraError, match="have other sizes"):
        check_compatible(info, fresh_tiny_pipe("sd3"), FAMILIES.get("sd3"))


def test_lora_with_no_matching_layer_refused(fresh_tiny_pipe, tmp_path):
    name = "lora_unet_down_blocks_7_attentions_0_transformer_blocks_0_attn2_to_k"
    info = info_of(write_shapes(tmp_path / "other.safetensors", kohya(name, 64, 32)))
    with pytest.raises(LoraError, match="none of its 1 layers exist"):
        check_compatible(info, fresh_tiny_pipe("sd15"), FAMILIES.get("sd15"))


def test_flux_lora_refused(fresh_tiny_pipe, tmp_path):
    info = info_of(
        write_shapes(tmp_path / "flux.safetensors", kohya("lora_unet_double_blocks_0_img_attn_qkv", 3072, 9216))
    )
    with pytest.raises(LoraError, match="is for Flux"):
        check_compatible(info, fresh_tiny_pipe("sd3"), FAMILIES.get("sd3"))


# --- applying -------------------------------------------------------------------------------------------

FORMAT_CASES = {
    "sd15-kohya": ("sd15", lambda p, path: write_kohya_unet_family(p, path), "kohya"),
    "sd15-diffusers": ("sd15", lambda p, path: write_diffusers_lora(p, path), "diffusers"),
    "sd15-peft": ("sd15", lambda p, path: write_diffusers_lora(p, path, ("unet",), prefix=False), "peft"),
    "sdxl-kohya-sgm": ("sdxl", lambda p, path: write_kohya_unet_family(p, path, sgm_names=True), "kohya"),
    "sdxl-diffusers": (
        "sdxl",
        lambda p, path: write_diffusers_lora(p, path, ("unet", "text_encoder", "text_encoder_2")),
        "diffusers",
    ),
    "sd3-diffusers": (
        "sd3",
        lambda p, path: write_diffusers_lora(p, path, ("transformer", "text_encoder", "text_encoder_2")),
        "diffusers",
    ),
    "sd3-kohya": ("sd3", lambda p, path: write_kohya_sd3(p, path, text_encoders=True), "kohya"),
}


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_apply_changes_output_and_attaches_every_layer(case, fresh_tiny_pipe, tmp_path):
    family, write, fmt = FORMAT_CASES[case]
    pipe = fresh_tiny_pipe(family)
    base = render(pipe, family)
    path = tmp_path / f"{case}.safetensors"
    write(pipe, path)
    info = info_of(path)
    assert (info.format, info.family_group) == (fmt, family)
    result = LoraManager().apply(pipe, FAMILIES.get(family), [(info, 1.0)])
    (adapter,) = {name for names in pipe.get_list_adapters().values() for name in names}
    assert result.active == ((case, adapter, LoraWeight(1.0, 1.0)),)
    assert set(pipe.get_list_adapters()) == set(info.targets)
    attached = sum(
        1
        for comp in info.targets
        for m in getattr(pipe, comp).modules()
        if adapter in getattr(m, "lora_A", {})
    )
    expected = sum(3 if layer.module.endswith("_qkv") else 1 for layer in info.layers)
    assert attached == expected
    assert differs(render(pipe, family), base)


def _two_loras(pipe, tmp_path, family="sd15"):
    a = info_of(write_kohya_unet_family(pipe, tmp_path / "a.safetensors", seed=1))
    b = info_of(write_diffusers_lora(pipe, tmp_path / "b.safetensors", seed=2))
    return a, b


def test_weights_switch_without_reloading(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    unet, te = pipe.unet, pipe.text_encoder
    spec = FAMILIES.get("sd15")
    base = render(pipe, "sd15")
    a, b = _two_loras(pipe, tmp_path)
    mgr = LoraManager()

    first = mgr.apply(pipe, spec, [(a, 1.0)])
    assert first.loaded == ("a",)
    only_a = render(pipe, "sd15")
    assert differs(only_a, base)

    both = mgr.apply(pipe, spec, [(a, 0.5), (b, 0.7)])
    assert both.loaded == ("b",)
    mixed = render(pipe, "sd15")
    assert differs(mixed, only_a) and differs(mixed, base)
    assert same(render(pipe, "sd15"), mixed)

    swapped = mgr.apply(pipe, spec, [(b, 0.7), (a, 0.5)])
    assert swapped.loaded == ()
    assert same(render(pipe, "sd15"), mixed)

    again = mgr.apply(pipe, spec, [(a, 1.0)])
    assert again.loaded == ()
    assert same(render(pipe, "sd15"), only_a)
    assert pipe.unet is unet and pipe.text_encoder is te
    assert len(mgr.cached(pipe)) == 2


def test_weight_zero_is_no_lora(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    base = render(pipe, "sd15")
    a, b = _two_loras(pipe, tmp_path)
    mgr = LoraManager()
    mgr.apply(pipe, FAMILIES.get("sd15"), [(a, 0.0), (b, 0)])
    assert same(render(pipe, "sd15"), base)
    mgr.apply(pipe, FAMILIES.get("sd15"), [(a, LoraWeight(te=0.0, denoiser=0.0))])
    assert same(render(pipe, "sd15"), base)


def test_per_component_weights(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    a, _b = _two_loras(pipe, tmp_path)
    mgr = LoraManager()
    spec = FAMILIES.get("sd15")
    mgr.apply(pipe, spec, [(a, 1.0)])
    full = render(pipe, "sd15")
    mgr.apply(pipe, spec, [(a, LoraWeight(te=0.0, denoiser=1.0))])
    unet_only = render(pipe, "sd15")
    assert differs(unet_only, full)


def test_removing_all_restores_exact_base_output(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sdxl")
    spec = FAMILIES.get("sdxl")
    base = render(pipe, "sdxl")
    base_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    a = info_of(write_kohya_unet_family(pipe, tmp_path / "a.safetensors", sgm_names=True))
    b = info_of(write_diffusers_lora(pipe, tmp_path / "b.safetensors", ("unet", "text_encoder_2")))
    mgr = LoraManager()
    mgr.apply(pipe, spec, [(a, 0.8), (b, 1.2)])
    assert differs(render(pipe, "sdxl"), base)

    mgr.apply(pipe, spec, [])  # disabled, adapters kept for the next job
    assert same(render(pipe, "sdxl"), base)
    assert len(mgr.cached(pipe)) == 2

    mgr.clear(pipe)  # adapters and LoRA layers gone, base weights untouched
    assert pipe.get_list_adapters() == {}
    assert not any(hasattr(m, "lora_A") for m in pipe.unet.modules())
    assert same(render(pipe, "sdxl"), base)
    after = pipe.unet.state_dict()
    assert after.keys() == base_weights.keys()
    assert all(torch.equal(after[k], v) for k, v in base_weights.items())


def test_cache_is_bounded(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    base = render(pipe, "sd15")
    a, b = _two_loras(pipe, tmp_path)
    mgr = LoraManager(max_cached=1)
    spec = FAMILIES.get("sd15")
    mgr.apply(pipe, spec, [(a, 1.0)])
    result = mgr.apply(pipe, spec, [(b, 1.0)])
    assert result.evicted == ("a",)
    assert [n.split("_")[0] for n in mgr.cached(pipe)] == ["b"]
    assert {n for names in pipe.get_list_adapters().values() for n in names} == set(mgr.cached(pipe))

    none_kept = LoraManager(max_cached=0)
    pipe2 = fresh_tiny_pipe("sd15")
    none_kept.apply(pipe2, spec, [(a, 1.0)])
    none_kept.apply(pipe2, spec, [])
    assert pipe2.get_list_adapters() == {}
    assert same(render(pipe2, "sd15"), base)


def test_changed_file_is_reloaded(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    spec = FAMILIES.get("sd15")
    path = tmp_path / "style.safetensors"
    newer = write_kohya_unet_family(pipe, tmp_path / "newer.safetensors", seed=2)
    mgr = LoraManager()
    mgr.apply(pipe, spec, [(info_of(write_kohya_unet_family(pipe, path, seed=1)), 1.0)])
    first = render(pipe, "sd15")
    os.replace(newer, path)  # the user saved a new version under the same name
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    result = mgr.apply(pipe, spec, [(info_of(path), 1.0)])
    assert result.loaded == ("style",)
    assert differs(render(pipe, "sd15"), first)
    assert len(mgr.cached(pipe)) == 1


def test_adapters_shared_with_derived_pipelines(fresh_tiny_pipe, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = fresh_tiny_pipe("sd15")
    a, _b = _two_loras(pipe, tmp_path)
    mgr = LoraManager()
    mgr.apply(pipe, FAMILIES.get("sd15"), [(a, 1.0)])
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    assert mgr.cached(i2i) == mgr.cached(pipe)
    assert mgr.apply(i2i, FAMILIES.get("sd15"), [(a, 0.5)]).loaded == ()


# --- SD3 kohya conversion -------------------------------------------------------------------------------

_X = {
    "attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "attn_proj": ("attn.to_out.0",),
    "mlp_fc1": ("ff.net.0.proj",),
    "mlp_fc2": ("ff.net.2",),
    "adaLN_modulation_1": ("norm1.linear",),
}
_CTX = {
    "attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "attn_proj": ("attn.to_add_out",),
    "mlp_fc1": ("ff_context.net.0.proj",),
    "mlp_fc2": ("ff_context.net.2",),
    "adaLN_modulation_1": ("norm1_context.linear",),
}


def _merge_by_hand(transformer, sd: dict, weight: float) -> None:
    """Add weight * alpha/rank * up @ down to the diffusers module of each kohya layer (the MMDiT layout)."""
    from diffusers.loaders.single_file_utils import swap_scale_shift

    last = transformer.config.num_layers - 1
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    modules = dict(transformer.named_modules())
    for key in sd:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        down, up = sd[key], sd[f"{name}.lora_up.weight"]
        delta = weight * float(sd[f"{name}.alpha"]) / down.shape[0] * (up @ down)
        if name == "lora_unet_final_layer_adaLN_modulation_1":
            targets, delta = ("norm_out.linear",), swap_scale_shift(delta, hidden)
        else:
            block, stream, layer = re.match(r"lora_unet_joint_blocks_(\d+)_(x_block|context_block)_(.+)", name).groups()
            targets = tuple(f"transformer_blocks.{block}.{t}" for t in (_X if stream == "x_block" else _CTX)[layer])
            if stream == "context_block" and int(block) == last and layer == "adaLN_modulation_1":
                delta = swap_scale_shift(delta, hidden)
        for target, part in zip(targets, delta.chunk(len(targets), dim=0)):
            modules[target].weight.data += part


def test_sd3_kohya_equals_manually_merged_delta(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd3")
    reference = copy.deepcopy(pipe.transformer)
    sd = write_kohya_sd3(pipe, tmp_path / "sd3_style.safetensors", rank=4, alpha=2.0)
    info = info_of(tmp_path / "sd3_style.safetensors")
    LoraManager().apply(pipe, FAMILIES.get("sd3"), [(info, 0.8)])
    _merge_by_hand(reference, sd, 0.8)

    cfg = pipe.transformer.config
    g = torch.Generator().manual_seed(3)
    inputs = dict(
        hidden_states=torch.randn(1, cfg.in_channels, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(1, 5, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
        timestep=torch.tensor([500.0]),
        return_dict=False,
    )
    with torch.no_grad():
        got = pipe.transformer(**inputs)[0]
        want = reference(**inputs)[0]
        pipe.disable_lora()
        plain = pipe.transformer(**inputs)[0]
    assert differs(want, plain)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_sd3_kohya_raw_file_is_silently_ignored_by_diffusers_and_caught(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd3")
    write_kohya_sd3(pipe, tmp_path / "raw.safetensors")
    info = dataclasses.replace(info_of(tmp_path / "raw.safetensors"), needs_conversion=False)
    with pytest.raises(LoraError, match="was not applied: diffusers did not attach any of its layers"):
        LoraManager().apply(pipe, FAMILIES.get("sd3"), [(info, 1.0)])
    assert not any(pipe.get_list_adapters().values())


def test_sd3_kohya_t5_layers_are_noted_and_skipped(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd3")
    sd = write_kohya_sd3(pipe, tmp_path / "with_t5.safetensors")
    t5 = pipe.text_encoder_3.encoder.block[0].layer[0].SelfAttention.q
    sd["lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight"] = torch.randn(4, t5.in_features)
    sd["lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight"] = torch.randn(t5.out_features, 4)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "with_t5.safetensors"))
    info = info_of(tmp_path / "with_t5.safetensors")
    result = LoraManager().apply(pipe, FAMILIES.get("sd3"), [(info, 1.0)])
    assert any("T5" in note for note in result.notes)
    assert set(pipe.get_list_adapters()) == {"transformer"}


def test_failed_load_leaves_no_lora_active(fresh_tiny_pipe, tmp_path):
    pipe = fresh_tiny_pipe("sd3")
    spec = FAMILIES.get("sd3")
    base = render(pipe, "sd3")
    good = info_of(write_diffusers_lora(pipe, tmp_path / "good.safetensors", ("transformer",)))
    write_kohya_sd3(pipe, tmp_path / "raw.safetensors")
    raw = dataclasses.replace(info_of(tmp_path / "raw.safetensors"), needs_conversion=False)
    mgr = LoraManager()
    mgr.apply(pipe, spec, [(good, 1.0)])
    with pytest.raises(LoraError):
        mgr.apply(pipe, spec, [(good, 1.0), (raw, 1.0)])
    assert same(render(pipe, "sd3"), base)
    assert len(mgr.cached(pipe)) == 1
