"""ControlNet / T2I-Adapter / IP-Adapter units applied through the real engine on the tiny models.

The built-in extension "controlnet" gets its units from ``alwayson_scripts["controlnet"]``, as the API
and the page send them. Weights are random, so the tests compare images with each other (within
``tests.tolerance``), never with stored pixels.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.app_services import tmp_services
from tests.control_models import (
    tiny_controlnet,
    write_tiny_clip_vision,
    write_tiny_controlnet,
    write_tiny_ip_adapter,
    write_tiny_t2i_adapter,
)
from tests.tolerance import PIXEL_MAX, PIXEL_MEAN, assert_close, assert_close_pixels, assert_far
from webui.generation.requests import GenerationRequest
from webui.generation.service import DONE, FAILED
from webui.models.demo import demo_checkpoint_name, write_demo_models

SD15, SDXL, SD3 = demo_checkpoint_name("sd15"), demo_checkpoint_name("sdxl"), demo_checkpoint_name("sd3")
SD35L = demo_checkpoint_name("sd35_large")


def control_image(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (10, 10, 10))
    w, h = size
    ImageDraw.Draw(image).rectangle((0, 0, w // 5, h), fill=(40, 40, 40))  # a faint edge: canny's thresholds matter
    ImageDraw.Draw(image).rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4), outline=(240, 240, 240), width=3)
    ImageDraw.Draw(image).ellipse((w // 3, h // 3, w // 2, h // 2), fill=(200, 120, 40))
    return image


def amplify(path: Path, prefixes: tuple[str, ...], factor: float) -> None:
    """Scale some tensors of a written model file: the tiny random models react weakly to their control image,
    and tests of small changes (a threshold, a resize mode, the last steps) need a model that visibly reacts."""
    from safetensors.torch import load_file, save_file

    if path.is_dir():
        path = path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    save_file({k: v * factor if k.startswith(prefixes) else v for k, v in state.items()}, str(path))


def write_control_models(models: Path) -> None:
    """The tiny control models in their real layouts, as users put them in models/ControlNet and models/clip_vision."""
    folder = models / "ControlNet"
    cn = write_tiny_controlnet(folder, "sd15", "original", name="cn_sd15")
    # the hint embedding's last convolution starts at zero too: without this the map's content barely matters
    amplify(cn, ("control_model.input_hint_block.14.",), 75.0)
    amplify(cn, ("control_model.zero_convs.", "control_model.middle_block_out."), 3.0)
    write_tiny_controlnet(folder, "sdxl", "diffusers", name="cn_sdxl")
    write_tiny_controlnet(folder, "sdxl", "single", union=True, name="union_sdxl")
    write_tiny_controlnet(folder, "sd3", "diffusers", name="cn_sd3")
    write_tiny_controlnet(folder, "sd35_large", "original", name="cn_sd35_large")  # Stability's layout
    amplify(write_tiny_t2i_adapter(folder, "sd15", "original", name="t2i_sd15"), ("conv_in.",), 4.0)
    amplify(write_tiny_t2i_adapter(folder, "sdxl", "diffusers", name="t2i_sdxl"), ("adapter.conv_in.",), 4.0)
    for family in ("sd15", "sdxl"):
        write_tiny_ip_adapter(folder, family, name=f"ip_{family}")
        write_tiny_ip_adapter(folder, family, plus=True, name=f"ip_plus_{family}")
    write_tiny_clip_vision(models / "clip_vision", name="tiny-CLIP-ViT-H-14")
    # an IP-Adapter whose image projection reads 48-wide image embeds: no encoder in clip_vision gives those
    from safetensors.torch import load_file, save_file

    odd = write_tiny_ip_adapter(folder, "sd15", name="ip_needs_other_encoder")
    state = load_file(str(odd))
    state["image_proj.proj.weight"] = state["image_proj.proj.weight"][:, :1].repeat(1, 48).contiguous()
    save_file(state, str(odd))


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-apply")
    write_demo_models(root / "models", ("sd15", "sdxl", "sd3", "sd35_large"))
    write_control_models(root / "models")
    services = tmp_services(root, preview_every=0)
    for name in ("cn_sd15", "cn_sdxl", "union_sdxl", "cn_sd3", "t2i_sd15", "t2i_sdxl", "ip_sd15", "ip_plus_sdxl"):
        entry = services.manager.catalog.find(name, kind="control")
        assert entry.usable, entry.error
    services.generation.start()
    yield services
    services.generation.stop()


def unit(model="cn_sd15", **fields):
    return {"module": "none", "model": model, "image": control_image(), **fields}


def run(services, units=None, **fields):
    values = {"prompt": "a cube", "seed": 7, "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler"}
    values.update({"save_images": False, "sd_model_checkpoint": SD15, **fields})
    if units is not None:
        values["alwayson_scripts"] = {"controlnet": units}
    job = services.generation.submit(GenerationRequest(**values))
    assert job.wait(600), "the job did not finish"
    return job


def image(job):
    assert job.state == DONE, job.error
    return np.asarray(job.result.images[0])


@pytest.fixture(scope="module")
def plain(services):
    return image(run(services))


# --- ControlNet SD 1.5: weight, window, modes, several units -------------------------------------------


def test_a_controlnet_changes_the_image_and_weight_0_gives_the_image_without_it(services, plain):
    assert_far(image(run(services, [unit()])), plain, PIXEL_MAX, PIXEL_MEAN)
    assert_close_pixels(image(run(services, [unit(weight=0)])), plain)
    assert_close_pixels(image(run(services, [unit(enabled=False)])), plain)


def test_guidance_end_half_differs_from_the_whole_pass(services):
    whole = image(run(services, [unit()], steps=6))
    half = image(run(services, [unit(guidance_end=0.5)], steps=6))  # A1111: steps 0-3 of 6 (3/6 <= 0.5)
    assert_far(half, whole, PIXEL_MAX, PIXEL_MEAN)
    late = image(run(services, [unit(guidance_start=0.5)], steps=6))
    assert_far(late, whole, PIXEL_MAX, PIXEL_MEAN)
    assert_far(late, half, PIXEL_MAX, PIXEL_MEAN)


def test_the_control_modes_differ(services):
    images = [image(run(services, [unit(control_mode=mode)])) for mode in range(3)]
    assert_far(images[1], images[0], PIXEL_MAX, PIXEL_MEAN)
    assert_far(images[2], images[1], PIXEL_MAX, PIXEL_MEAN)
    # without CFG there is no unconditional half to keep free of control: modes 1 and 2 are the same
    no_cfg = [image(run(services, [unit(control_mode=mode)], cfg_scale=1.0)) for mode in (1, 2)]
    assert np.array_equal(no_cfg[0], no_cfg[1])


def test_several_units_at_once(services):
    one = image(run(services, [unit()]))
    second = unit(image=control_image((80, 48)), resize_mode="Resize and Fill", weight=0.7)
    two = image(run(services, [unit(), second]))
    assert_far(two, one, PIXEL_MAX, PIXEL_MEAN)
    assert_close_pixels(image(run(services, [unit(), {**second, "weight": 0.0}])), one)


def test_the_resize_mode_reaches_the_control_image(services):
    wide = control_image((128, 48))
    crop = image(run(services, [unit(image=wide, resize_mode="Crop and Resize")]))
    stretch = image(run(services, [unit(image=wide, resize_mode="Just Resize")]))
    fill = image(run(services, [unit(image=wide, resize_mode="Resize and Fill")]))
    assert_far(crop, stretch, PIXEL_MAX, PIXEL_MEAN)
    assert_far(fill, crop, PIXEL_MAX, PIXEL_MEAN)


def test_a_preprocessor_runs_with_its_thresholds(services):
    grid = Image.new("RGB", (64, 64), (10, 10, 10))
    for x in range(4, 64, 8):  # faint stripes: edges canny finds at low thresholds only
        ImageDraw.Draw(grid).rectangle((x, 0, x + 3, 63), fill=(45, 45, 45))
    low = image(
        run(services, [unit(image=grid, module="canny", threshold_a=20, threshold_b=60, weight=2, processor_res=64)])
    )
    high = image(
        run(services, [unit(image=grid, module="canny", threshold_a=200, threshold_b=250, weight=2, processor_res=64)])
    )
    assert_far(low, high, PIXEL_MAX, PIXEL_MEAN)
    big = control_image((256, 256))
    perfect = image(run(services, [unit(module="canny", pixel_perfect=True, image=big)]))  # canny at 64 px
    assert_far(perfect, image(run(services, [unit(module="canny", image=big)])), PIXEL_MAX, PIXEL_MEAN)  # at 512
    assert_close_pixels(perfect, image(run(services, [unit(module="canny", processor_res=64, image=big)])))


def test_the_hook_is_removed_when_the_job_ends(services, plain):
    run(services, [unit()])
    unet = services.manager.loaded.pipeline.unet
    assert not unet._forward_pre_hooks
    assert np.array_equal(image(run(services)), plain)  # the same computation as before: bit for bit


def test_img2img_and_inpaint_take_the_units(services):
    init = control_image()
    base = {"task": "img2img", "init_image": init, "denoising_strength": 0.7, "steps": 4}
    without = image(run(services, **base))
    assert_far(image(run(services, [unit()], **base)), without, PIXEL_MAX, PIXEL_MEAN)
    assert_far(image(run(services, [unit(image=None)], **base)), without, PIXEL_MAX, PIXEL_MEAN)  # the init image
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    inpaint = {"task": "inpaint", "init_image": init, "mask": mask, "denoising_strength": 0.9, "steps": 4}
    without = image(run(services, **inpaint))
    assert_far(
        image(run(services, [unit(image=None, module="inpaint_only")], **inpaint)), without, PIXEL_MAX, PIXEL_MEAN
    )


def test_inpaint_only_masked_gives_the_unit_the_cropped_region(services):
    init = control_image((96, 64))
    mask = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 40, 40), fill=255)
    fields = {
        "task": "inpaint",
        "init_image": init,
        "mask": mask,
        "denoising_strength": 0.9,
        "steps": 4,
        "inpaint_full_res": True,
        "width": 64,
        "height": 64,
    }
    without = image(run(services, **fields))
    with_unit = run(services, [unit(image=None, module="inpaint_only")], **fields)
    assert_far(image(with_unit), without, PIXEL_MAX, PIXEL_MEAN)
    canny = run(services, [unit(image=None, module="canny", processor_res=64)], **fields)
    assert_far(image(canny), image(with_unit), PIXEL_MAX, PIXEL_MEAN)


def test_hires_fix_passes_get_the_control_image_at_their_size(services):
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.8, "steps": 5}
    job = run(services, [unit()], **hires)
    assert image(job).shape == (96, 96, 3)
    low_only = run(services, [unit(hr_option="Low res only")], **hires)
    assert_far(image(low_only), image(job), PIXEL_MAX, PIXEL_MEAN)


# --- refusals and the infotext ------------------------------------------------------------------------


def test_a_model_of_another_family_is_refused_with_its_message(services):
    job = run(services, [unit("cn_sdxl")])
    assert job.state == FAILED
    assert "the ControlNet cn_sdxl is for SDXL; the loaded model is SD 1.5" in job.error
    assert "pick a ControlNet made for SD 1.5" in job.error and job.error_field == "alwayson_scripts"
    job = run(services, [unit("ip_sd15", module="ip-adapter_clip_h")], sd_model_checkpoint=SDXL)
    assert job.state == FAILED and "is for SD 1.5; the loaded model is SDXL" in job.error


def test_unknown_models_and_missing_images_are_refused(services):
    job = run(services, [unit("no_such_model")])
    assert job.state == FAILED and "no_such_model" in job.error and job.error_field == "alwayson_scripts"
    job = run(services, [unit(image=None)])
    assert job.state == FAILED and "unit 0 is enabled but has no image" in job.error
    job = run(services, [unit(model="None")])
    assert job.state == FAILED and "no model is selected" in job.error
    job = run(services, [unit(module="depth_midas")])
    assert job.state == FAILED and "dpt_hybrid-midas-501f0c75.pt" in job.error


def test_checked_units_are_plain_data(services):
    from PIL import Image as PILImage

    checked = services.backend.validate(
        GenerationRequest(
            prompt="x",
            steps=3,
            width=64,
            height=64,
            sd_model_checkpoint=SD15,
            alwayson_scripts={"controlnet": [unit(module="canny")]},
        )
    )
    (args,) = checked.alwayson_scripts["controlnet"]
    assert type(args) is dict and args["module"] == "canny" and args["threshold_a"] == 100
    assert all(isinstance(v, (str, int, float, bool, type(None), PILImage.Image)) for v in args.values())


def test_bad_units_are_refused_before_the_job_runs(services):
    from webui.generation.requests import RequestError

    with pytest.raises(RequestError) as caught:
        services.backend.validate(
            GenerationRequest(
                prompt="x",
                steps=3,
                width=64,
                height=64,
                sd_model_checkpoint=SD15,
                alwayson_scripts={"controlnet": [unit(weight=5)]},
            )
        )
    assert "unit 0: weight must be between 0 and 2" in str(caught.value)
    assert caught.value.field == "alwayson_scripts"


def test_the_infotext_has_a1111s_unit_fields(services):
    named = "cn_sd15 [0c0ffee0]"  # A1111's model title: name [hash]
    job = run(
        services,
        [unit(named, module="canny", weight=1), unit(enabled=False), unit(named, weight=0.5, guidance_end=0.5)],
    )
    text = job.result.infotexts[0]
    assert (
        'ControlNet 0: "Module: canny, Model: cn_sd15 [0c0ffee0], Weight: 1.0, Resize Mode: Crop and Resize, '
        "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
        'Pixel Perfect: False, Control Mode: Balanced"'
    ) in text
    assert 'ControlNet 1: "Module: none, Model: cn_sd15 [0c0ffee0], Weight: 0.5' in text
    assert "ControlNet 2" not in text
    from webui.control.extension import ControlExtension

    ext = ControlExtension()
    fields = {"ControlNet 0": text.split('ControlNet 0: "', 1)[1].split('"', 1)[0]}
    ext.webui_infotext_pasted(text, fields)
    assert fields["ControlNet 0 module"] == "canny" and fields["ControlNet 0 weight"] == 1.0


# --- SDXL, Union, SD3 -------------------------------------------------------------------------------------


def test_sdxl_controlnet_and_union(services):
    xl = {"sd_model_checkpoint": SDXL}
    plain_xl = image(run(services, **xl))
    assert_far(image(run(services, [unit("cn_sdxl")], **xl)), plain_xl, PIXEL_MAX, PIXEL_MEAN)
    assert_close_pixels(image(run(services, [unit("cn_sdxl", weight=0)], **xl)), plain_xl)
    hard = image(run(services, [unit("union_sdxl", union_control_type="Hard Edge")], **xl))
    tile = image(run(services, [unit("union_sdxl", union_control_type="Tile")], **xl))
    assert_far(hard, plain_xl, PIXEL_MAX, PIXEL_MEAN)
    assert_far(hard, tile, PIXEL_MAX, PIXEL_MEAN)
    mixed = image(run(services, [unit("cn_sdxl"), unit("union_sdxl", module="canny")], **xl))
    assert_far(mixed, hard, PIXEL_MAX, PIXEL_MEAN)
    job = run(services, [unit("union_sdxl")], **xl)  # module none: which control type?
    assert job.state == FAILED and "set union_control_type" in job.error


def test_sd3_controlnet(services):
    sd3 = {"sd_model_checkpoint": SD3, "sampler_name": "Euler", "cfg_scale": 4.0}
    plain3 = image(run(services, **sd3))
    first = image(run(services, [unit("cn_sd3")], **sd3))
    assert_far(first, plain3, PIXEL_MAX, PIXEL_MEAN)
    assert np.array_equal(image(run(services, [unit("cn_sd3")], **sd3)), first)  # no global RNG involved
    assert_close_pixels(image(run(services, [unit("cn_sd3", weight=0)], **sd3)), plain3)
    assert_far(image(run(services, [unit("cn_sd3", guidance_end=0.5)], **sd3)), first, PIXEL_MAX, PIXEL_MEAN)
    init = {"task": "img2img", "init_image": control_image(), "denoising_strength": 0.8, "steps": 4}
    assert_far(  # diffusers has no SD3 ControlNet img2img pipeline; the hook runs in the plain one
        image(run(services, [unit("cn_sd3")], **sd3, **init)),
        image(run(services, **sd3, **init)),
        PIXEL_MAX,
        PIXEL_MEAN,
    )


def test_sd35_large_controlnet_uses_the_transformers_positional_embedding(services):
    from webui.control.loading import load_control

    large = {"sd_model_checkpoint": SD35L, "sampler_name": "Euler", "cfg_scale": 4.0}
    base = image(run(services, **large))
    on = image(run(services, [unit("cn_sd35_large")], **large))
    assert_far(on, base, PIXEL_MAX, PIXEL_MEAN)
    assert_close_pixels(image(run(services, [unit("cn_sd35_large", weight=0)], **large)), base)
    device = services.manager.device
    cached = load_control(services.manager.catalog.find("cn_sd35_large", kind="control"), device.device, device.dtype)
    assert cached.model.pos_embed is None  # the shared, cached model is not changed


# --- T2I-Adapter ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "checkpoint"), [("t2i_sd15", SD15), ("t2i_sdxl", SDXL)])
def test_t2i_adapters(services, model, checkpoint):
    base = image(run(services, sd_model_checkpoint=checkpoint))
    on = image(run(services, [unit(model)], sd_model_checkpoint=checkpoint))
    assert_far(on, base, PIXEL_MAX, PIXEL_MEAN)
    assert_close_pixels(image(run(services, [unit(model, weight=0)], sd_model_checkpoint=checkpoint)), base)
    six = {"sd_model_checkpoint": checkpoint, "steps": 6}
    half = image(run(services, [unit(model, guidance_end=0.5, weight=2)], **six))
    assert_far(half, image(run(services, [unit(model, weight=2)], **six)), PIXEL_MAX, PIXEL_MEAN)
    init = {"task": "img2img", "init_image": control_image(), "denoising_strength": 0.7, "steps": 4}
    assert_far(
        image(run(services, [unit(model)], sd_model_checkpoint=checkpoint, **init)),
        image(run(services, sd_model_checkpoint=checkpoint, **init)),
        PIXEL_MAX,
        PIXEL_MEAN,
    )


# --- IP-Adapter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "checkpoint", "module"),
    [
        ("ip_sd15", SD15, "ip-adapter_clip_h"),
        ("ip_plus_sd15", SD15, "ip-adapter_clip_sd15"),
        ("ip_sdxl", SDXL, "ip-adapter_clip_g"),
        ("ip_plus_sdxl", SDXL, "ip-adapter-auto"),
    ],
)
def test_ip_adapters(services, model, checkpoint, module):
    base = image(run(services, sd_model_checkpoint=checkpoint))
    unet = services.manager.loaded.pipeline.unet
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    on = image(run(services, [unit(model, module=module)], sd_model_checkpoint=checkpoint))
    assert_far(on, base, PIXEL_MAX, PIXEL_MEAN)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert unet.encoder_hid_proj is None
    six = {"sd_model_checkpoint": checkpoint, "steps": 6}
    half = image(run(services, [unit(model, module=module, guidance_end=0.5)], **six))
    assert_far(half, image(run(services, [unit(model, module=module)], **six)), PIXEL_MAX, PIXEL_MEAN)
    assert_close_pixels(
        image(run(services, [unit(model, module=module, weight=0)], sd_model_checkpoint=checkpoint)), base
    )


def test_ip_adapter_with_attention_slicing_on(services, plain):
    run(services)  # the SD 1.5 checkpoint loaded
    pipe = services.manager.loaded.pipeline
    before = dict(pipe.unet.attn_processors)
    pipe.enable_attention_slicing(1)
    try:
        sliced = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
        job = run(services, [unit("ip_sd15", module="ip-adapter_clip_h")])
        assert_far(image(job), plain, PIXEL_MAX, PIXEL_MEAN)
        assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == sliced
        assert "SlicedAttnProcessor" in {t.__name__ for t in sliced.values()}
    finally:
        pipe.unet.set_attn_processor(before)


def test_a_batch_gets_the_units_on_every_image(services):
    units = [unit(), unit("ip_sd15", module="ip-adapter_clip_h")]
    single = image(run(services, units, seed=8))
    job = run(services, units, seed=7, batch_size=2)
    assert job.state == DONE, job.error
    assert len(job.result.images) == 2
    assert_close_pixels(np.asarray(job.result.images[1]), single)  # image 1 of the batch has seed 8


def test_an_ip_adapter_without_its_image_encoder_is_refused_naming_the_folder(services):
    job = run(services, [unit("ip_needs_other_encoder", module="ip-adapter_clip_h")])
    assert job.state == FAILED and job.error_field == "alwayson_scripts"
    assert "unit 0" in job.error and "CLIP vision encoder" in job.error and "models/clip_vision" in job.error


def test_ip_adapter_with_a_controlnet(services, plain):
    both = image(run(services, [unit("ip_sd15", module="ip-adapter_clip_h"), unit()]))
    alone = image(run(services, [unit()]))
    assert_far(both, alone, PIXEL_MAX, PIXEL_MEAN)


# --- the hook computes what the diffusers ControlNet pipeline computes ----------------------------------------


def _event(pipe, steps, arguments=None):
    return SimpleNamespace(
        pipeline=pipe,
        stage="txt2img",
        width=64,
        height=64,
        steps=steps,
        batch_size=1,
        arguments=arguments or {},
        request=SimpleNamespace(cfg_scale=7.0),
    )


def test_the_hook_equals_diffusers_controlnet_pipeline_with_a1111s_window():
    import torch
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    from webui.control.apply import JobControl, Unit
    from webui.control.units import parse_units
    from webui.models.demo import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd15")
    cn = tiny_controlnet("sd15")
    cmap = control_image()
    steps = 4

    def hooked(end):
        (cu,) = parse_units([{"model": "x", "guidance_end": end}])
        job = JobControl("j", "sd15", [Unit(0, cu, "controlnet", cn, control_map=cmap)], "cpu", torch.float32)
        undo = job.patch(pipe)
        try:
            job.begin_pass(_event(pipe, steps))
            generator = torch.Generator().manual_seed(3)
            return pipe(
                "a cube",
                num_inference_steps=steps,
                height=64,
                width=64,
                generator=generator,
                output_type="np",
                callback_on_step_end=lambda p, i, t, k: job.after_step(i) or {},
            ).images
        finally:
            undo()

    reference = StableDiffusionControlNetPipeline(**pipe.components, controlnet=cn)

    def pipeline(end):
        generator = torch.Generator().manual_seed(3)
        return reference(
            "a cube",
            image=cmap,
            num_inference_steps=steps,
            height=64,
            width=64,
            generator=generator,
            output_type="np",
            controlnet_conditioning_scale=1.0,
            control_guidance_end=end,
        ).images

    assert isinstance(pipe, StableDiffusionPipeline)
    assert_close(hooked(1.0), pipeline(1.0))
    # A1111 keeps a unit while step/N <= end: with 4 steps and end 0.5 it runs steps 0, 1, 2, which is
    # diffusers' (step + 1)/N <= end at end 0.75
    assert_close(hooked(0.5), pipeline(0.75))
    assert_far(hooked(0.5), pipeline(0.5), 2e-3, 1e-4)


# --- through the A1111 API ----------------------------------------------------------------------------------


def _b64(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_api_runs_units_and_answers_422_for_a_wrong_family(services):
    import json
    import re

    import httpx

    from tests.api_server import serve_api

    body = {
        "prompt": "a cube",
        "seed": 7,
        "steps": 3,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": SD15},
    }
    cn_unit = {"enabled": True, "module": "canny", "model": "cn_sd15", "weight": 1, "image": _b64(control_image())}
    with serve_api(services) as url, httpx.Client(base_url=url, timeout=300) as client:
        ok = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [cn_unit]}}})
        assert ok.status_code == 200, ok.text
        info = json.loads(ok.json()["info"])
        # named as /controlnet/model_list lists it ("stem [hash8]"), whatever name the client sent
        assert re.search(r'ControlNet 0: "Module: canny, Model: cn_sd15 \[[0-9a-f]{8}\], Weight: 1.0', info["infotexts"][0])
        wrong = {**cn_unit, "model": "cn_sdxl"}
        r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [wrong]}}})
        assert r.status_code == 422, r.text
        assert "the ControlNet cn_sdxl is for SDXL; the loaded model is SD 1.5" in r.text
        bad = {**cn_unit, "guidance_start": 0.9, "guidance_end": 0.1}
        r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [bad]}}})
        assert r.status_code == 422 and "must not be after guidance_end" in r.text, r.text


def test_the_hook_on_a_9_channel_inpainting_unet_equals_diffusers_controlnet_inpaint_pipeline():
    import torch
    from diffusers import StableDiffusionControlNetInpaintPipeline

    from webui.control.apply import JobControl, Unit
    from webui.control.units import parse_units
    from webui.models.demo import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd15", inpaint=True)
    assert pipe.unet.config.in_channels == 9
    cn = tiny_controlnet("sd15")
    cmap, init = control_image(), control_image((64, 64)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    steps, common = 4, {"num_inference_steps": 4, "height": 64, "width": 64, "output_type": "np", "strength": 1.0}

    (cu,) = parse_units([{"model": "x"}])
    job = JobControl("j", "sd15", [Unit(0, cu, "controlnet", cn, control_map=cmap)], "cpu", torch.float32)
    undo = job.patch(pipe)
    try:
        job.begin_pass(_event(pipe, steps))
        hooked = pipe(
            "a cube",
            image=init,
            mask_image=mask,
            generator=torch.Generator().manual_seed(3),
            callback_on_step_end=lambda p, i, t, k: job.after_step(i) or {},
            **common,
        ).images
    finally:
        undo()
    reference = StableDiffusionControlNetInpaintPipeline(**pipe.components, controlnet=cn)
    expected = reference(
        "a cube",
        image=init,
        mask_image=mask,
        control_image=cmap,
        controlnet_conditioning_scale=1.0,
        generator=torch.Generator().manual_seed(3),
        **common,
    ).images
    assert_close(hooked, expected)


@pytest.mark.parametrize("union", [False, True])
def test_the_hook_equals_diffusers_sdxl_controlnet_pipelines(union):
    import torch
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLControlNetUnionPipeline

    from webui.control.apply import JobControl, Unit
    from webui.control.units import parse_units
    from webui.models.demo import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")
    cn = tiny_controlnet("sdxl", union=union)
    cmap, steps = control_image(), 3
    common = {"num_inference_steps": steps, "height": 64, "width": 64, "output_type": "np"}
    (cu,) = parse_units([{"model": "x", "union_control_type": "Hard Edge"}])
    unit_ = Unit(0, cu, "controlnet", cn, variant="union" if union else "", control_map=cmap, union_index=3)
    job = JobControl("j", "sdxl", [unit_], "cpu", torch.float32)
    undo = job.patch(pipe)
    try:
        job.begin_pass(_event(pipe, steps))
        hooked = pipe(
            "a cube",
            generator=torch.Generator().manual_seed(3),
            callback_on_step_end=lambda p, i, t, k: job.after_step(i) or {},
            **common,
        ).images
    finally:
        undo()
    if union:
        reference = StableDiffusionXLControlNetUnionPipeline(**pipe.components, controlnet=cn)
        expected = reference(
            "a cube",
            control_image=[cmap],
            control_mode=[3],
            controlnet_conditioning_scale=1.0,
            generator=torch.Generator().manual_seed(3),
            **common,
        ).images
    else:
        reference = StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=cn)
        expected = reference(
            "a cube",
            image=cmap,
            controlnet_conditioning_scale=1.0,
            generator=torch.Generator().manual_seed(3),
            **common,
        ).images
    assert_close(hooked, expected)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_hook_equals_diffusers_t2i_adapter_pipelines(family):
    import torch
    from diffusers import StableDiffusionAdapterPipeline, StableDiffusionXLAdapterPipeline

    from tests.control_models import tiny_t2i_adapter
    from webui.control.apply import JobControl, Unit
    from webui.control.units import parse_units
    from webui.models.demo import build_tiny_pipeline

    pipe = build_tiny_pipeline(family)
    adapter = tiny_t2i_adapter(family)
    cmap, steps = control_image(), 3
    common = {"num_inference_steps": steps, "height": 64, "width": 64, "output_type": "np"}
    (cu,) = parse_units([{"model": "x", "weight": 0.8}])
    job = JobControl("j", family, [Unit(0, cu, "t2i_adapter", adapter, control_map=cmap)], "cpu", torch.float32)
    undo = job.patch(pipe)
    try:
        job.begin_pass(_event(pipe, steps))
        hooked = pipe("a cube", generator=torch.Generator().manual_seed(3), **common).images
    finally:
        undo()
    cls = StableDiffusionXLAdapterPipeline if family == "sdxl" else StableDiffusionAdapterPipeline
    components = {k: v for k, v in pipe.components.items() if k in inspect_parameters(cls)}
    reference = cls(**components, adapter=adapter)
    expected = reference(
        "a cube", image=cmap, adapter_conditioning_scale=0.8, generator=torch.Generator().manual_seed(3), **common
    ).images
    assert_close(hooked, expected)


def inspect_parameters(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)
