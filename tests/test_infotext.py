"""Infotext: A1111's format written and parsed, and the request <-> infotext mapping."""

from __future__ import annotations

import pytest

from webui.generation.infotext_map import (
    infotext_for,
    infotext_params,
    request_fields_from_infotext,
    split_schedule_suffix,
    written_schedule,
)
from webui.generation.requests import REQUEST_FIELDS, GenerationRequest, RequestError, request_from_mapping
from webui.outputs.infotext import format_infotext, parse_hashes, parse_infotext, quote, split_infotext

# The docstring example of A1111's parse_generation_parameters (modules/infotext_utils.py).
A1111_DOCSTRING = """girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""

MODERN_LINE = (
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1535177732, Size: 512x512, "
    "Model hash: ec6a1ba636, Model: epicrealism_v10-inpainting, Denoising strength: 0.7, Hires upscale: 2, "
    'Hires steps: 25, Hires upscaler: R-ESRGAN 4x+, Lora hashes: "x: 0123456789ab", Version: v1.10.1'
)

# Hand-written A1111 1.10 infotexts: (name, text, expected subset of parse_infotext's result).
A1111_EXAMPLES = [
    (
        "hires fix with its own sampler and prompt",
        (
            "1girl, masterpiece\nNegative prompt: lowres\nSteps: 28, Sampler: Euler a, Schedule type: Automatic, "
            "CFG scale: 6.5, Seed: 42, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
            'Denoising strength: 0.45, Hires sampler: DPM++ 2M, Hires prompt: "1girl, detailed face", '
            "Hires schedule type: Karras, Hires upscale: 1.5, Hires steps: 12, Hires upscaler: Latent, Version: v1.10.1"
        ),
        {
            "Prompt": "1girl, masterpiece",
            "Negative prompt": "lowres",
            "Size-1": "512",
            "Size-2": "768",
            "Hires sampler": "DPM++ 2M",
            "Hires prompt": "1girl, detailed face",
            "Hires schedule type": "Karras",
            "Hires upscale": "1.5",
            "Hires upscaler": "Latent",
        },
    ),
    (
        "inpaint only masked",
        (
            "a red hat\nSteps: 30, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 512x512, "
            "Denoising strength: 0.75, Mask blur: 8, Inpaint area: Only masked, Masked area padding: 48, "
            "Masked content: latent noise, Version: v1.10.1"
        ),
        {
            "Prompt": "a red hat",
            "Negative prompt": "",
            "Mask blur": "8",
            "Inpaint area": "Only masked",
            "Masked area padding": "48",
            "Masked content": "latent noise",
            "Mask mode": "Inpaint masked",
        },
    ),
    (
        "lora hashes with quotes and a hires resize",
        (
            "<lora:add_detail:0.6> castle\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
            "Seed: 1, Size: 512x512, Denoising strength: 0.5, Hires resize: 1024x1536, Hires upscaler: Lanczos, "
            'Lora hashes: "add_detail: 7c6bad76eb54, more_art: 0a1b2c3d4e5f", TI hashes: "easynegative: c74b4e810b03"'
        ),
        {
            "Hires resize": "1024x1536",
            "Hires resize-1": "1024",
            "Hires resize-2": "1536",
            "Lora hashes": "add_detail: 7c6bad76eb54, more_art: 0a1b2c3d4e5f",
            "TI hashes": "easynegative: c74b4e810b03",
        },
    ),
    (
        "multi-line prompt and negative prompt",
        (
            "line one,\nline two\nNegative prompt: bad,\nworse\nSteps: 10, Sampler: Euler, CFG scale: 5, Seed: 3, "
            "Size: 64x64"
        ),
        {"Prompt": "line one,\nline two", "Negative prompt": "bad,\nworse", "Steps": "10"},
    ),
    (
        "a prompt that itself contains parameter text",
        (
            "poster text: Steps: 5, Sampler: fake, CFG scale: 1\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 9, "
            "Size: 512x512"
        ),
        {"Prompt": "poster text: Steps: 5, Sampler: fake, CFG scale: 1", "Steps": "20", "Sampler": "Euler"},
    ),
    (
        "a last line with fewer than three pairs stays in the prompt",
        "a cat\nNegative prompt: dog\nStyle: noir, Mood: calm",
        {"Prompt": "a cat", "Negative prompt": "dog\nStyle: noir, Mood: calm"},
    ),
    (
        "a single line with two pairs is all prompt",
        "photo: a cat, lens: 50mm",
        {"Prompt": "photo: a cat, lens: 50mm", "Negative prompt": ""},
    ),
]


def test_a1111_docstring_example_parses():
    parsed = parse_infotext(A1111_DOCSTRING)
    assert parsed["Prompt"].startswith("girl with an artist's beret")
    assert parsed["Prompt"].endswith("detailed, intricate")
    assert parsed["Negative prompt"].endswith("messy drawing")
    assert {k: parsed[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Model hash")} == {
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Model hash": "45dee52b",
    }
    assert (parsed["Size"], parsed["Size-1"], parsed["Size-2"]) == ("512x512", "512", "512")


def test_a1111_docstring_example_gives_request_fields():
    fields = request_fields_from_infotext(parse_infotext(A1111_DOCSTRING))
    assert fields["sampler_name"] == "Euler a"
    assert fields["scheduler"] == "Automatic"
    assert (fields["steps"], fields["cfg_scale"], fields["seed"]) == (20, 7.0, 965400086)
    assert (fields["width"], fields["height"]) == (512, 512)
    assert fields["sd_model_checkpoint"] == "45dee52b"  # no Model key: the hash names the checkpoint
    assert fields["enable_hr"] is False


def test_modern_line_parses_with_quoted_lora_hashes():
    parsed = parse_infotext("a photo\n" + MODERN_LINE)
    assert parsed["Lora hashes"] == "x: 0123456789ab"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+"
    assert parsed["Version"] == "v1.10.1"
    fields = request_fields_from_infotext(parsed)
    assert fields["enable_hr"] is True
    assert (fields["hr_scale"], fields["hr_second_pass_steps"], fields["denoising_strength"]) == (2.0, 25, 0.7)
    assert fields["sd_model_checkpoint"] == "epicrealism_v10-inpainting"


def test_we_write_the_modern_line_exactly():
    request = GenerationRequest(
        prompt="a photo",
        enable_hr=True,
        hr_scale=2.0,
        hr_second_pass_steps=25,
        hr_upscaler="R-ESRGAN 4x+",
        denoising_strength=0.7,
    )
    params = infotext_params(
        request,
        seed=1535177732,
        subseed=1,
        width=512,
        height=512,
        sampler_name="DPM++ 2M",
        schedule="Karras",
        steps=25,
        cfg_scale=7.0,
        model_name="epicrealism_v10-inpainting",
        model_hash="ec6a1ba636",
        lora_hashes={"x": "0123456789ab"},
        version="v1.10.1",
    )
    assert format_infotext("a photo", "", params) == "a photo\n" + MODERN_LINE


@pytest.mark.parametrize("name, text, expected", A1111_EXAMPLES, ids=[e[0] for e in A1111_EXAMPLES])
def test_hand_written_a1111_lines_parse(name, text, expected):
    parsed = parse_infotext(text)
    assert {key: parsed.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    "key, default",
    [
        ("Clip skip", "1"),
        ("Schedule type", "Automatic"),
        ("RNG", "GPU"),
        ("Masked content", "original"),
        ("Inpaint area", "Whole picture"),
        ("Masked area padding", 32),
        ("Mask mode", "Inpaint masked"),
        ("Hires sampler", "Use same sampler"),
        ("Hires schedule type", "Use same scheduler"),
        ("Hires checkpoint", "Use same checkpoint"),
        ("Hires prompt", ""),
        ("Hires resize-1", 0),
        ("VAE Decoder", "Full"),
        ("FP8 weight", "Disable"),
    ],
)
def test_missing_keys_get_a1111_defaults(key, default):
    assert parse_infotext(A1111_DOCSTRING)[key] == default


def test_written_keys_are_not_replaced_by_defaults():
    parsed = parse_infotext("x\nSteps: 1, Sampler: Euler, Clip skip: 2, RNG: CPU, Masked content: fill")
    assert (parsed["Clip skip"], parsed["RNG"], parsed["Masked content"]) == ("2", "CPU", "fill")


def test_old_first_pass_size_becomes_size_and_hires_resize():
    parsed = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Size: 1024x1024, First pass size: 0x0")
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 512)
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (1024, 1024)


@pytest.mark.parametrize(
    "value, written",
    [
        ("Euler a", "Euler a"),
        (20, "20"),
        (7.5, "7.5"),
        ("a, b", '"a, b"'),
        ("name: hash", '"name: hash"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("猫, 犬", '"猫, 犬"'),
    ],
)
def test_quote(value, written):
    assert quote(value) == written


@pytest.mark.parametrize(
    "prompt, negative, params",
    [
        ("a cat", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1}),
        ("a cat,\nin a hat", "dog,\nugly", {"Steps": 20, "Sampler": "DPM++ 2M", "Seed": 2, "Size": "512x768"}),
        ("猫と帽子", "醜い", {"Steps": 5, "Sampler": "Euler", "Seed": 3, "Hires prompt": "猫, 詳細"}),
        ("x", "y", {"Steps": 1, "Lora hashes": "a: 1, b: 2", "Odd": 'say "hi"', "Multi": "one\ntwo", "Seed": 4}),
        ("Steps: 9, Sampler: no, Seed: 0", "", {"Steps": 20, "Sampler": "Euler", "Seed": 5}),
    ],
)
def test_format_split_format_is_identity(prompt, negative, params):
    text = format_infotext(prompt, negative, params)
    assert split_infotext(text) == (prompt, negative, {k: str(v) for k, v in params.items()})
    assert format_infotext(*split_infotext(text)) == text


def test_format_omits_empty_negative_and_none_values():
    text = format_infotext("p", "", {"Steps": 20, "Model": None, "Sampler": "Euler", "Seed": 1})
    assert text == "p\nSteps: 20, Sampler: Euler, Seed: 1"


def test_format_writes_a_key_equal_to_its_value_alone():
    assert format_infotext("p", "", {"Steps": 1, "Tiling": "Tiling"}) == "p\nSteps: 1, Tiling"


@pytest.mark.parametrize(
    "infotext_sampler, schedule_key, sampler, scheduler",
    [
        ("DPM++ 2M Karras", None, "DPM++ 2M", "Karras"),
        ("DPM++ 2M", "Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Exponential", None, "DPM++ 2M SDE", "Exponential"),
        ("DPM++ 2M SDE Heun Karras", None, "DPM++ 2M SDE Heun", "Karras"),
        ("Euler SGM Uniform", None, "Euler", "SGM Uniform"),
        ("Euler Uniform", None, "Euler", "Uniform"),
        ("Euler a", None, "Euler a", "Automatic"),
        ("DDIM", None, "DDIM", "Automatic"),
        ("Euler a", "Beta", "Euler a", "Beta"),
    ],
)
def test_both_sampler_spellings(infotext_sampler, schedule_key, sampler, scheduler):
    schedule = f", Schedule type: {schedule_key}" if schedule_key else ""
    text = f"x\nSteps: 20, Sampler: {infotext_sampler}{schedule}, CFG scale: 7, Seed: 1"
    fields = request_fields_from_infotext(parse_infotext(text))
    assert (fields["sampler_name"], fields["scheduler"]) == (sampler, scheduler)


def test_old_hires_sampler_spelling_splits_too():
    text = "x\nSteps: 20, Sampler: Euler, Seed: 1, Hires upscale: 2, Hires sampler: DPM++ 2M Karras"
    fields = request_fields_from_infotext(parse_infotext(text))
    assert (fields["hr_sampler_name"], fields["hr_scheduler"]) == ("DPM++ 2M", "Karras")


def test_split_sampler_is_injected():
    def split(name: str) -> tuple[str, str]:
        return ("Mine", "Ours") if name == "custom" else (name, "")

    text = "x\nSteps: 20, Sampler: custom, CFG scale: 7, Seed: 1"
    fields = request_fields_from_infotext(parse_infotext(text), split_sampler=split)
    assert (fields["sampler_name"], fields["scheduler"]) == ("Mine", "Ours")


@pytest.mark.parametrize(
    "sampler, schedule, written",
    [
        ("DPM++ 2M", "Automatic", "Karras"),
        ("DPM++ 2M SDE", "Automatic", "Exponential"),
        ("DPM++ 2M", "", "Karras"),
        ("Euler a", "Automatic", "Automatic"),
        ("DDIM", "Automatic", "Automatic"),
        ("DPM++ 2M", "Uniform", "Uniform"),
    ],
)
def test_schedule_type_is_written_as_a1111_110(sampler, schedule, written):
    assert written_schedule(sampler, schedule) == written


@pytest.mark.parametrize(
    "name, split",
    [("DPM++ 2M Karras", ("DPM++ 2M", "Karras")), ("Euler a", ("Euler a", "")), ("Karras", ("Karras", ""))],
)
def test_split_schedule_suffix(name, split):
    assert split_schedule_suffix(name) == split


# --- request -> infotext -> request ----------------------------------------------------------------

BASE = {"prompt": "a cat,\nin a hat: red", "negative_prompt": "ugly, blurry", "seed": 123, "width": 512, "height": 768}
ROUND_TRIP_REQUESTS = {
    "txt2img": GenerationRequest(**BASE),
    "variation, clip skip, CPU RNG": GenerationRequest(
        **BASE, subseed=77, subseed_strength=0.3, clip_skip=2, rng="CPU"
    ),
    "hires": GenerationRequest(
        **BASE,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=12,
        hr_upscaler="Latent (bicubic)",
        denoising_strength=0.55,
        hr_sampler_name="Euler a",
        hr_prompt="a cat, detailed",
        hr_negative_prompt="lowres",
    ),
    "hires resize": GenerationRequest(**BASE, enable_hr=True, hr_resize_x=1024, hr_resize_y=1536),
    "img2img": GenerationRequest(**BASE, task="img2img", denoising_strength=0.6),
    "inpaint": GenerationRequest(
        **BASE,
        task="inpaint",
        denoising_strength=0.8,
        mask_blur=6,
        inpainting_fill=2,
        inpaint_full_res=True,
        inpaint_full_res_padding=40,
        inpainting_mask_invert=1,
    ),
    "inpaint defaults": GenerationRequest(**BASE, task="inpaint"),
    "refiner": GenerationRequest(**BASE, refiner_checkpoint="sdxl_refiner [7440042bbd]", refiner_switch_at=0.7),
    "sd3 without T5": GenerationRequest(**BASE, use_t5=False, shift=3.0),
}
COMPARED = [
    "prompt",
    "negative_prompt",
    "seed",
    "subseed",
    "subseed_strength",
    "clip_skip",
    "rng",
    "denoising_strength",
    "enable_hr",
    "hr_scale",
    "hr_second_pass_steps",
    "hr_upscaler",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "hr_resize_x",
    "hr_resize_y",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "refiner_checkpoint",
    "refiner_switch_at",
    "use_t5",
    "shift",
]


def _infotext(request: GenerationRequest) -> str:
    return infotext_for(
        request,
        request.prompt,
        request.negative_prompt,
        seed=request.seed,
        subseed=request.subseed,
        width=request.width,
        height=request.height,
        sampler_name="DPM++ SDE",
        schedule="Exponential",
        steps=24,
        cfg_scale=6.5,
        model_name="dreamshaper_8",
        model_hash="879db523c3",
        vae_name="vae-ft-mse-840000",
        vae_hash="735e4c3a44",
        version="v1.10.1",
    )


@pytest.mark.parametrize("name", list(ROUND_TRIP_REQUESTS))
def test_request_infotext_request_round_trip(name):
    request = ROUND_TRIP_REQUESTS[name]
    fields = request_fields_from_infotext(parse_infotext(_infotext(request)))
    rebuilt = request_from_mapping(fields, task=request.task)
    assert {f: getattr(rebuilt, f) for f in COMPARED} == {f: getattr(request, f) for f in COMPARED}
    assert (rebuilt.sampler_name, rebuilt.scheduler, rebuilt.steps, rebuilt.cfg_scale) == (
        "DPM++ SDE",
        "Exponential",
        24,
        6.5,
    )
    assert (rebuilt.width, rebuilt.height) == (512, 768)
    assert (rebuilt.sd_model_checkpoint, rebuilt.sd_vae) == ("dreamshaper_8", "vae-ft-mse-840000")


def test_request_fields_are_request_field_names():
    fields = request_fields_from_infotext(parse_infotext(_infotext(ROUND_TRIP_REQUESTS["hires"])))
    assert set(fields) <= set(REQUEST_FIELDS)


def test_key_order_is_a1111_110():
    request = GenerationRequest(
        prompt="p",
        enable_hr=True,
        hr_sampler_name="Euler",
        hr_prompt="other",
        hr_second_pass_steps=5,
        subseed_strength=0.2,
        clip_skip=2,
        rng="CPU",
        refiner_checkpoint="ref",
        extra_generation_params={"ADetailer model": "face_yolov8n.pt"},
    )
    params = infotext_params(
        request,
        seed=1,
        subseed=2,
        width=512,
        height=512,
        sampler_name="DPM++ 2M",
        schedule="Automatic",
        steps=20,
        cfg_scale=7,
        model_name="m",
        model_hash="h",
        vae_name="v",
        vae_hash="vh",
        lora_hashes={"l": "1"},
        ti_hashes={"t": "2"},
        version="v1",
    )
    assert list(params) == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE",
        "Variation seed", "Variation seed strength", "Denoising strength", "Clip skip", "RNG",
        "Hires sampler", "Hires prompt", "Hires upscale", "Hires steps", "Hires upscaler",
        "Lora hashes", "TI hashes", "Refiner", "Refiner switch at", "ADetailer model", "Version",
    ]  # fmt: skip


def test_inpaint_key_order_is_a1111_110():
    request = GenerationRequest(task="inpaint", inpainting_mask_invert=1, inpaint_full_res=True, inpainting_fill=0)
    params = infotext_params(
        request, seed=1, subseed=1, width=64, height=64, sampler_name="Euler", schedule="", steps=1, cfg_scale=1
    )
    assert list(params)[-6:] == [
        "Denoising strength", "Mask mode", "Mask blur", "Inpaint area", "Masked area padding", "Masked content",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "request_changes, absent",
    [
        ({}, ["Clip skip", "RNG", "Denoising strength", "Variation seed", "Hires upscale", "Refiner", "T5"]),
        ({"task": "img2img"}, ["Mask blur", "Masked content", "Inpaint area"]),
        ({"task": "inpaint"}, ["Masked content", "Inpaint area", "Masked area padding", "Mask mode"]),
        ({"task": "img2img", "enable_hr": True}, ["Hires upscale", "Hires upscaler"]),
    ],
)
def test_default_values_are_not_written(request_changes, absent):
    params = infotext_params(
        GenerationRequest(**request_changes),
        seed=1,
        subseed=1,
        width=64,
        height=64,
        sampler_name="Euler",
        schedule="Automatic",
        steps=1,
        cfg_scale=7,
    )
    assert [key for key in absent if key in params] == []


@pytest.mark.parametrize(
    "sampler, hr_sampler, hr_scheduler, written",
    [
        ("DPM++ 2M", "", "", None),  # same sampler, same schedule
        ("DPM++ 2M", "DPM++ 2M SDE", "", "Exponential"),  # its own default differs
        ("DPM++ 2M", "Euler a", "", None),  # no default of its own: nothing written
        ("Euler a", "Euler", "Uniform", "Uniform"),
    ],
)
def test_hires_schedule_type_written_only_when_it_differs(sampler, hr_sampler, hr_scheduler, written):
    request = GenerationRequest(enable_hr=True, hr_sampler_name=hr_sampler, hr_scheduler=hr_scheduler)
    params = infotext_params(
        request, seed=1, subseed=1, width=64, height=64, sampler_name=sampler, schedule="", steps=1, cfg_scale=7
    )
    assert params.get("Hires schedule type") == written


def test_extension_params_keep_the_place_of_an_existing_key_and_version_stays_last():
    request = GenerationRequest(extra_generation_params={"Seed": 99, "Version": "x", "Extra": "e"})
    params = infotext_params(
        request, seed=1, subseed=1, width=64, height=64, sampler_name="Euler", schedule="", steps=1, cfg_scale=7,
        version="v2",
    )  # fmt: skip
    assert list(params)[4] == "Seed" and params["Seed"] == 99
    assert list(params)[-2:] == ["Extra", "Version"] and params["Version"] == "v2"


def test_lora_names_lose_colons_and_commas_and_parse_back():
    request = GenerationRequest()
    params = infotext_params(
        request, seed=1, subseed=1, width=64, height=64, sampler_name="Euler", schedule="", steps=1, cfg_scale=7,
        lora_hashes={"detail:v2, final": "7c6bad76eb54", "style": "0a1b2c3d4e5f"},
    )  # fmt: skip
    assert params["Lora hashes"] == "detailv2 final: 7c6bad76eb54, style: 0a1b2c3d4e5f"
    text = format_infotext("p", "", params)
    assert parse_hashes(parse_infotext(text)["Lora hashes"]) == {
        "detailv2 final": "7c6bad76eb54",
        "style": "0a1b2c3d4e5f",
    }


def test_bad_values_are_skipped_unless_strict():
    parsed = parse_infotext("x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1, RNG: NV")
    fields = request_fields_from_infotext(parsed)
    assert "steps" not in fields and "rng" not in fields
    assert fields["cfg_scale"] == 7.0
    with pytest.raises(RequestError) as excinfo:
        request_fields_from_infotext(parsed, strict=True)
    assert excinfo.value.field == "steps"
    assert "many" in str(excinfo.value)


def test_unknown_keys_are_ignored_but_kept_in_parsed():
    parsed = parse_infotext('x\nSteps: 20, Sampler: Euler, Seed: 1, ControlNet 0: "Module: canny, Weight: 1"')
    assert parsed["ControlNet 0"] == "Module: canny, Weight: 1"
    assert set(request_fields_from_infotext(parsed)) <= set(REQUEST_FIELDS)
