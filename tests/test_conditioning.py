"""Weighted text conditioning against the tiny pipelines of each family."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from webui.families.registry import default_families
from webui.generation.conditioning import T5_MAX_LENGTH, encode_prompts

CPU = torch.device("cpu")
POOLED = ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
EMBEDS = ("prompt_embeds", "negative_prompt_embeds")


def _spec(family):
    return default_families().get(family)


def _close(actual, expected):
    # positive and negative rows are encoded in one batch, diffusers encodes them one by one
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def _encode(pipe, family, prompts, negatives=None, **kw):
    negatives = negatives if negatives is not None else [""] * len(prompts)
    return encode_prompts(pipe, _spec(family), prompts, negatives, **kw)


def _reference(pipe, family, prompt, negative, clip_skip=None):
    """The pipeline's own encode_prompt, as a kwargs dict."""
    if family == "sd15":
        pos, neg = pipe.encode_prompt(prompt, CPU, 1, True, negative, clip_skip=clip_skip)
        return dict(zip(EMBEDS, (pos, neg)))
    if family == "sd3":
        out = pipe.encode_prompt(prompt, None, None, device=CPU, negative_prompt=negative, clip_skip=clip_skip)
    else:
        out = pipe.encode_prompt(prompt, device=CPU, negative_prompt=negative, clip_skip=clip_skip)
    return dict(zip(EMBEDS + POOLED, out))


def _pipe(fresh_tiny_pipe, family):
    if family == "sd3_no_t5":
        pipe = fresh_tiny_pipe("sd3")
        pipe.text_encoder_3 = None
        pipe.tokenizer_3 = None
        return pipe, "sd3"
    return fresh_tiny_pipe(family), family


# --- equal to diffusers when nothing is weighted -------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sdxl_refiner", "sd3", "sd3_no_t5"])
def test_unweighted_prompt_matches_pipeline_encode_prompt(fresh_tiny_pipe, family):
    pipe, family = _pipe(fresh_tiny_pipe, family)
    ours = _encode(pipe, family, ["a photo of a cat, red"], ["blurry, dark"])
    with torch.no_grad():
        ref = _reference(pipe, family, "a photo of a cat, red", "blurry, dark")
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        _close(ours[name], tensor)


def test_use_t5_false_gives_the_zeros_of_a_pipeline_without_t5(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd3")
    ours = _encode(pipe, "sd3", ["a cat"], ["a dog"], use_t5=False)
    pipe.text_encoder_3 = None
    with torch.no_grad():
        ref = _reference(pipe, "sd3", "a cat", "a dog")
    for name, tensor in ref.items():
        _close(ours[name], tensor)
    assert not ours["prompt_embeds"][:, 77:].any()


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_clip_skip_2_is_diffusers_clip_skip_1(fresh_tiny_pipe, family):
    """Our clip_skip n is diffusers' n - 1 (SD1.5's diffusers clip_skip crashes: checked by hand below)."""
    pipe = fresh_tiny_pipe(family)
    ours = _encode(pipe, family, ["a photo of a cat"], clip_skip=2)
    with torch.no_grad():
        ref = _reference(pipe, family, "a photo of a cat", "", clip_skip=1)
    _close(ours["prompt_embeds"], ref["prompt_embeds"])
    _close(ours["pooled_prompt_embeds"], ref["pooled_prompt_embeds"])


def test_sd15_clip_skip_2_is_penultimate_layer_through_final_layer_norm(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd15")
    ids = pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = pipe.text_encoder.final_layer_norm(states[-2])
    skip2 = _encode(pipe, "sd15", ["a photo of a cat"], clip_skip=2)["prompt_embeds"]
    skip1 = _encode(pipe, "sd15", ["a photo of a cat"], clip_skip=1)["prompt_embeds"]
    _close(skip2, expected)
    assert not torch.allclose(skip1, skip2, atol=1e-3)


def test_clip_skip_deeper_than_the_encoder_is_refused(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd15")  # the tiny CLIP has 2 layers
    with pytest.raises(ValueError, match="clip skip 4 is too large"):
        _encode(pipe, "sd15", ["a cat"], clip_skip=4)


# --- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.5, 0.5])
def test_weight_scales_only_its_token_before_the_mean_rescale(fresh_tiny_pipe, weight):
    pipe = fresh_tiny_pipe("sd15")
    plain = _encode(pipe, "sd15", ["a cat sitting"])["prompt_embeds"][0]
    weighted = _encode(pipe, "sd15", [f"a (cat:{weight}) sitting"])["prompt_embeds"][0]
    multipliers = torch.ones(77, 1)
    multipliers[2] = weight  # position 0 is the start token: "a" 1, "cat" 2
    scaled = plain * multipliers
    _close(weighted, scaled * (plain.mean() / scaled.mean()))
    _close(weighted.mean(), plain.mean())
    ratio = weighted.norm(dim=-1) / plain.norm(dim=-1)
    others = torch.cat([ratio[:2], ratio[3:]])
    assert torch.allclose(others, others[0].expand_as(others), rtol=1e-4)
    assert (ratio[2] / others[0]).item() == pytest.approx(weight, rel=1e-4)


@pytest.mark.parametrize(("family", "sections"), [("sdxl", [slice(0, 77)]), ("sd3", [slice(0, 77), slice(77, None)])])
def test_weights_change_every_encoder_section(fresh_tiny_pipe, family, sections):
    """SDXL: the CLIP-L/bigG embeddings; SD3: the CLIP part and the T5 tokens after it."""
    pipe = fresh_tiny_pipe(family)
    plain = _encode(pipe, family, ["a cat sitting"])["prompt_embeds"]
    weighted = _encode(pipe, family, ["a (cat:1.8) sitting"])["prompt_embeds"]
    for section in sections:
        assert not torch.allclose(plain[:, section], weighted[:, section], atol=1e-4)


def test_each_prompt_of_a_batch_is_weighted_on_its_own(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd15")
    alone = _encode(pipe, "sd15", ["a (cat:1.5)"])["prompt_embeds"]
    batch = _encode(pipe, "sd15", ["a (cat:1.5)", "[a dog] in the (rain:0.7)"])["prompt_embeds"]
    assert batch.shape[0] == 2
    _close(batch[:1], alone)


# --- chunks and lengths --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_long_prompt_is_encoded_as_two_independent_chunks(fresh_tiny_pipe, family):
    pipe = fresh_tiny_pipe(family)
    long = _encode(pipe, family, ["cat " * 80])["prompt_embeds"]
    first = _encode(pipe, family, ["cat " * 75])["prompt_embeds"]
    second = _encode(pipe, family, ["cat " * 5])["prompt_embeds"]
    assert long.shape[1] == 154
    _close(long, torch.cat([first, second], dim=1))


def test_break_encodes_each_part_as_its_own_chunk(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd15")
    both = _encode(pipe, "sd15", ["a cat BREAK a dog"])["prompt_embeds"]
    cat = _encode(pipe, "sd15", ["a cat"])["prompt_embeds"]
    dog = _encode(pipe, "sd15", ["a dog"])["prompt_embeds"]
    _close(both, torch.cat([cat, dog], dim=1))


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_shorter_side_is_padded_with_empty_chunks(fresh_tiny_pipe, family):
    pipe = fresh_tiny_pipe(family)
    out = _encode(pipe, family, ["a cat"], ["ugly " * 100])
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape
    extra = T5_MAX_LENGTH if family == "sd3" else 0
    assert out["prompt_embeds"].shape[1] == 154 + extra
    empty = _encode(pipe, family, [""], ["x"])["prompt_embeds"][:, :77]
    _close(out["prompt_embeds"][:, 77:154], empty)


def test_pooled_output_comes_from_the_first_chunk(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sdxl")
    long = _encode(pipe, "sdxl", ["a red cat BREAK a dog"], ["x"])
    short = _encode(pipe, "sdxl", ["a red cat"], ["x"])
    _close(long["pooled_prompt_embeds"], short["pooled_prompt_embeds"])


# --- empty negative prompts ----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sdxl_refiner"])
def test_sdxl_empty_negative_is_zeros_when_the_pipeline_forces_zeros(fresh_tiny_pipe, family):
    pipe = fresh_tiny_pipe(family)
    assert pipe.config.force_zeros_for_empty_prompt
    out = _encode(pipe, family, ["a cat", "a dog"], ["", "blurry"])
    assert not out["negative_prompt_embeds"][0].any() and not out["negative_pooled_prompt_embeds"][0].any()
    assert out["negative_prompt_embeds"][1].any()


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_empty_negative_is_encoded_when_zeros_are_not_forced(fresh_tiny_pipe, family):
    pipe = fresh_tiny_pipe(family)
    if family == "sdxl":
        pipe.register_to_config(force_zeros_for_empty_prompt=False)
    ours = _encode(pipe, family, ["a cat"], [""])
    with torch.no_grad():
        ref = _reference(pipe, family, "a cat", "")
    _close(ours["negative_prompt_embeds"], ref["negative_prompt_embeds"])
    _close(ours["negative_pooled_prompt_embeds"], ref["negative_pooled_prompt_embeds"])


# --- arguments, dtype ----------------------------------------------------------------------------


def test_prompts_and_negatives_must_pair_up(fresh_tiny_pipe):
    with pytest.raises(ValueError, match="one negative prompt per prompt"):
        encode_prompts(fresh_tiny_pipe("sd15"), _spec("sd15"), ["a", "b"], ["x"])


def test_unknown_family_is_refused(fresh_tiny_pipe):
    # A family is its adapter: one whose adapter defines no text conditioning is refused, naming the known ones.
    other = dataclasses.replace(_spec("sd15"), id="flux", conditioning=None)
    with pytest.raises(ValueError, match="'flux'.*known: sd15"):
        encode_prompts(fresh_tiny_pipe("sd15"), other, ["a"], [""])


def test_embeddings_take_the_text_encoder_dtype(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sdxl").to(torch.bfloat16)
    out = _encode(pipe, "sdxl", ["a (cat:1.2)"])
    assert {t.dtype for t in out.values()} == {torch.bfloat16}


# --- the pipelines run with these kwargs ---------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sdxl_refiner", "sd3"])
def test_pipeline_runs_with_the_returned_kwargs(fresh_tiny_pipe, family):
    pipe = fresh_tiny_pipe(family)
    kwargs = _encode(pipe, family, ["a (cat:1.3) BREAK [dog]"] * 2, ["blurry"] * 2)
    extra = {"image": torch.rand(2, 3, 64, 64), "strength": 0.9} if family == "sdxl_refiner" else {}
    out = pipe(
        **kwargs,
        **extra,
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=5.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    latents = out.images
    assert latents.shape == (2, _spec(family).latent_channels, 8, 8)
    assert torch.isfinite(latents).all()
