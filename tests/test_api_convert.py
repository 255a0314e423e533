"""A1111 API JSON -> GenerationRequest and back: defaults, legacy names, precedence, images. No torch."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from webui.api import convert
from webui.api.convert import ApiDefaults, request_from_api
from webui.api.schemas import Img2ImgRequest, Txt2ImgRequest
from webui.generation.requests import RequestError
from webui.generation.service import JobResult


def png_b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def txt(**fields):
    return request_from_api(Txt2ImgRequest(**fields), "txt2img")


def img(**fields):
    fields.setdefault("init_images", [png_b64(Image.new("RGB", (64, 48), "red"))])
    return request_from_api(Img2ImgRequest(**fields), "img2img")


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b: b,
        lambda b: "data:image/png;base64," + b,
        lambda b: "\n".join(b[i : i + 60] for i in range(0, len(b), 60)),  # MIME line breaks
    ],
    ids=["plain", "data-url", "line-breaks"],
)
def test_decode_image_accepts_a1111_encodings(wrap):
    source = Image.new("RGB", (16, 8), (10, 20, 30))
    image = convert.decode_image(wrap(png_b64(source)), "init_images[0]")
    assert image.size == (16, 8) and image.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(
    "value, words",
    [
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(b"hello, not an image").decode(), "not an image"),
        ("https://example.com/cat.png", "URLs are not fetched"),
        ("", "must be a base64-encoded image"),
    ],
)
def test_decode_image_rejects_bad_input_naming_the_field(value, words):
    with pytest.raises(RequestError) as info:
        convert.decode_image(value, "mask")
    assert info.value.field == "mask" and words in info.value.message


def test_transparent_init_image_is_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert convert.to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_rgba_mask_uses_alpha_and_is_resized_to_the_image():
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 4, 8))  # left half opaque (black!) -> repaint there
    out = convert.to_mask(mask, (16, 16))
    assert out.mode == "L" and out.size == (16, 16)
    assert out.getpixel((2, 8)) == 255 and out.getpixel((14, 8)) == 0


def test_opaque_mask_is_its_luminance():
    mask = Image.new("RGB", (8, 8), "white")
    assert convert.to_mask(mask, (8, 8)).getpixel((0, 0)) == 255


def test_image_to_base64_embeds_the_infotext():
    raw = base64.b64decode(convert.image_to_base64(Image.new("RGB", (8, 8)), "a cat\nSteps: 4, Seed: 1, Size: 8x8"))
    assert Image.open(io.BytesIO(raw)).info["parameters"] == "a cat\nSteps: 4, Seed: 1, Size: 8x8"


# --- txt2img fields ------------------------------------------------------------------------------


def test_api_defaults_follow_a1111_not_the_ui():
    req = txt(prompt="a cat").request
    assert req.task == "txt2img" and req.save_images is False
    assert (req.width, req.height, req.steps, req.cfg_scale) == (0, 0, None, None)
    # A1111's API samples with Euler (its sampler_index default) and Automatic, not its UI's DPM++ 2M
    assert (req.sampler_name, req.scheduler) == ("Euler", "Automatic")


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"sampler_index": "Euler a"}, "Euler a"),
        ({"sampler_name": "DPM++ 2M", "sampler_index": "Euler a"}, "DPM++ 2M"),
        ({"sampler_name": "", "sampler_index": "Heun"}, "Heun"),
    ],
)
def test_legacy_sampler_index(fields, expected):
    assert txt(**fields).request.sampler_name == expected


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"save_images": True}, True),
        ({"save_images": True, "do_not_save_samples": True}, False),
        ({}, False),
    ],
)
def test_save_images_mapping(fields, expected):
    assert txt(**fields).request.save_images is expected


def test_send_images_false_is_kept():
    assert txt(send_images=False).send_images is False and txt().send_images is True


@pytest.mark.parametrize(
    "key, value, field, expected",
    [
        ("sd_model_checkpoint", "x.safetensors", "sd_model_checkpoint", "x.safetensors"),
        ("sd_vae", "None", "sd_vae", "None"),
        ("CLIP_stop_at_last_layers", 2, "clip_skip", 2),
        ("randn_source", "CPU", "rng", "CPU"),
        ("sd3_enable_t5", False, "use_t5", False),
        ("samples_format", "webp", "output_format", "webp"),
    ],
)
def test_override_settings_table(key, value, field, expected):
    req = txt(override_settings={key: value}).request
    assert getattr(req, field) == expected


def test_override_settings_wrong_type_names_the_key():
    with pytest.raises(RequestError) as info:
        txt(override_settings={"CLIP_stop_at_last_layers": "two"})
    assert info.value.field == "override_settings.CLIP_stop_at_last_layers"


@pytest.mark.parametrize(
    "fields, warning",
    [
        ({"override_settings": {"eta_noise_seed_delta": 31337}}, "ENSD"),
        ({"override_settings": {"face_restoration_model": "x"}}, "override_settings.face_restoration_model"),
        ({"override_settings": {"randn_source": "NV"}}, "NV is not available"),
        ({"restore_faces": True}, "restore_faces is not supported"),
        ({"tiling": True}, "tiling is not supported"),
        ({"my_extension_field": 1}, "unknown field 'my_extension_field'"),
    ],
)
def test_unsupported_fields_are_accepted_with_a_warning(fields, warning):
    call = txt(**fields)
    assert any(warning in w for w in call.warnings), call.warnings


def test_harmless_a1111_defaults_give_no_warning():
    body = {"restore_faces": False, "tiling": False, "styles": [], "eta": None, "alwayson_scripts": {}}
    assert txt(**body, override_settings={"eta_noise_seed_delta": 0}).warnings == []


def test_always_on_scripts_reach_the_request_by_lower_case_name_with_their_args():
    call = txt(alwayson_scripts={"ControlNet": {"args": [{"module": "canny"}]}, "Other": []})
    assert call.request.alwayson_scripts == {"controlnet": [{"module": "canny"}], "other": []}
    with pytest.raises(RequestError, match="alwayson_scripts.x"):
        txt(alwayson_scripts={"x": {"args": "not a list"}})


def test_nv_rng_falls_back_to_gpu():
    assert txt(override_settings={"randn_source": "NV"}).request.rng == "GPU"


def test_script_name_is_refused():
    with pytest.raises(RequestError) as info:
        txt(script_name="prompt matrix")
    assert info.value.field == "script_name" and "not supported" in info.value.message
    with pytest.raises(RequestError) as info:  # the x/y/z plot runs, but not without its arguments
        txt(script_name="x/y/z plot")
    assert info.value.field == "script_args" and "18 arguments" in info.value.message


@pytest.mark.parametrize(
    "fields, field, expected",
    [
        ({"hr_sampler_name": "Use same sampler"}, "hr_sampler_name", ""),
        ({"hr_scheduler": "Use same scheduler"}, "hr_scheduler", ""),
        ({"refiner_checkpoint": "None"}, "refiner_checkpoint", ""),
        ({"hr_sampler_name": "Euler"}, "hr_sampler_name", "Euler"),
    ],
)
def test_a1111_placeholders_mean_same_as_first_pass(fields, field, expected):
    assert getattr(txt(**fields).request, field) == expected


def test_validation_errors_name_the_field():
    with pytest.raises(RequestError) as info:
        txt(width=100)
    assert info.value.field == "width"


def test_options_defaults_apply_when_the_request_says_nothing():
    call = request_from_api(Txt2ImgRequest(), "txt2img", ApiDefaults(clip_skip=2, rng="CPU", output_format="jpg"))
    assert (call.request.clip_skip, call.request.rng, call.request.output_format) == (2, "CPU", "jpg")


def test_explicit_rng_beats_the_options_default():
    call = request_from_api(Txt2ImgRequest(rng="GPU"), "txt2img", ApiDefaults(rng="CPU"))
    assert call.request.rng == "GPU"


# --- infotext precedence -----------------------------------------------------------------------

INFOTEXT_FIELDS = {
    "prompt": "from infotext",
    "steps": 33,
    "sampler_name": "Heun",
    "seed": 42,
    "clip_skip": 3,
    "width": 512,
    "mask_blur": 9,
    "task": "img2img",  # never taken from an infotext
}


def with_infotext(body, task="txt2img", defaults=None):
    return request_from_api(body, task, defaults, read_infotext=lambda text: INFOTEXT_FIELDS).request


def test_infotext_fills_fields_the_client_did_not_send():
    req = with_infotext(Txt2ImgRequest(infotext="..."))
    assert (req.prompt, req.steps, req.sampler_name, req.seed, req.width) == ("from infotext", 33, "Heun", 42, 512)
    assert req.task == "txt2img"


@pytest.mark.parametrize(
    "fields, attr, expected",
    [
        ({"steps": 5}, "steps", 5),
        ({"prompt": "explicit"}, "prompt", "explicit"),
        ({"sampler_index": "Euler"}, "sampler_name", "Euler"),  # the legacy name counts as sent
        ({"seed": -1}, "seed", -1),  # sent with its default value: still sent
        ({"override_settings": {"CLIP_stop_at_last_layers": 4}}, "clip_skip", 4),
    ],
)
def test_explicit_fields_win_over_the_infotext(fields, attr, expected):
    assert getattr(with_infotext(Txt2ImgRequest(infotext="...", **fields)), attr) == expected


def test_infotext_beats_the_options_default():
    assert with_infotext(Txt2ImgRequest(infotext="..."), defaults=ApiDefaults(clip_skip=2)).clip_skip == 3


def test_infotext_mask_blur_yields_to_mask_blur_x():
    body = Img2ImgRequest(infotext="...", init_images=[png_b64(Image.new("RGB", (64, 64)))], mask_blur_x=2)
    assert with_infotext(body, "img2img").mask_blur == 2


def test_unreadable_infotext_is_ignored_with_a_warning():
    def broken(text):
        raise ValueError("no parameters line")

    call = request_from_api(Txt2ImgRequest(infotext="junk", steps=7), "txt2img", read_infotext=broken)
    assert call.request.steps == 7 and any("infotext could not be read" in w for w in call.warnings)


# --- img2img -------------------------------------------------------------------------------------


def test_img2img_decodes_the_first_init_image():
    call = img(denoising_strength=0.5)
    req = call.request
    assert req.task == "img2img" and req.init_image.size == (64, 48) and req.init_image.mode == "RGB"
    assert req.denoising_strength == 0.5 and req.mask is None


def test_mask_makes_it_inpaint_with_a1111_api_defaults():
    mask = png_b64(Image.new("L", (64, 48), 255))
    req = img(mask=mask).request
    assert req.task == "inpaint" and req.mask.mode == "L" and req.mask.size == (64, 48)
    assert (req.inpainting_fill, req.inpaint_full_res, req.inpaint_full_res_padding, req.mask_blur) == (0, True, 0, 4)


def test_mask_blur_wins_over_mask_blur_x():
    mask = png_b64(Image.new("L", (64, 48), 255))
    assert img(mask=mask, mask_blur=7, mask_blur_x=3).request.mask_blur == 7


def test_img2img_without_init_images_is_refused():
    with pytest.raises(RequestError) as info:
        request_from_api(Img2ImgRequest(prompt="x"), "img2img")
    assert info.value.field == "init_images"


def test_extra_init_images_are_noted():
    image = png_b64(Image.new("RGB", (64, 64)))
    assert any("only the first" in w for w in img(init_images=[image, image]).warnings)


def test_bad_mask_names_the_mask_field():
    with pytest.raises(RequestError) as info:
        img(mask="@@@")
    assert info.value.field == "mask"


def test_parameters_echo_leaves_out_images_unless_asked():
    mask = png_b64(Image.new("L", (64, 48), 255))
    echoed = img(prompt="p", mask=mask).parameters
    assert echoed["prompt"] == "p" and "init_images" not in echoed and "mask" not in echoed
    assert img(mask=mask, include_init_images=True).parameters["mask"] == mask


# --- response ------------------------------------------------------------------------------------


def _result(n=2, **info):
    return JobResult(
        images=[Image.new("RGB", (64, 32), "blue") for _ in range(n)],
        infotexts=[f"p\nSteps: 3, Seed: {i}, Size: 64x32" for i in range(n)],
        seeds=[10 + i for i in range(n)],
        subseeds=[20 + i for i in range(n)],
        info=dict(info),
    )


def test_build_info_fills_gaps_from_the_request_and_keeps_the_engines_values():
    call = txt(prompt="p", negative_prompt="n", batch_size=2, steps=3)
    info = convert.build_info(call, _result(sampler_name="Euler a"), "1.0", {"sd_model_name": "m"})
    assert info["sampler_name"] == "Euler a" and info["sd_model_name"] == "m" and info["version"] == "1.0"
    assert info["all_seeds"] == [10, 11] and info["seed"] == 10 and info["all_subseeds"] == [20, 21]
    assert info["all_prompts"] == ["p", "p"] and info["all_negative_prompts"] == ["n", "n"]
    assert (info["width"], info["height"], info["steps"], info["batch_size"]) == (64, 32, 3, 2)
    assert len(info["infotexts"]) == 2 and info["index_of_first_image"] == 0 and len(info["job_timestamp"]) == 14


def test_build_response_is_a1111_shaped():
    call = txt(prompt="p")
    result = _result(1)
    body = convert.build_response(call, result, convert.build_info(call, result))
    assert set(body) == {"images", "parameters", "info"}
    png = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert png.format == "PNG" and png.info["parameters"] == result.infotexts[0]
    assert json.loads(body["info"])["prompt"] == "p"


def test_send_images_false_gives_no_images():
    call = txt(send_images=False)
    result = _result(1)
    assert convert.build_response(call, result, convert.build_info(call, result))["images"] == []


def test_real_infotext_is_parsed_and_applied_under_explicit_fields():
    text = (
        "a cat\nNegative prompt: ugly\n"
        "Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 7, Size: 64x128, Model: demo-sd15-noise"
    )
    req = request_from_api(Txt2ImgRequest(infotext=text, steps=4), "txt2img").request
    assert (req.prompt, req.negative_prompt, req.steps, req.cfg_scale, req.seed) == ("a cat", "ugly", 4, 5.0, 7)
    assert (req.sampler_name, req.scheduler, req.width, req.height) == ("DPM++ 2M", "Karras", 64, 128)
    assert req.sd_model_checkpoint == "demo-sd15-noise"
