"""End to end through the job queue on tiny checkpoints of each family: the engine as users meet it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.app_services import tmp_services
from tests.tolerance import PIXEL_MAX, PIXEL_MEAN, assert_close_pixels, assert_far
from webui.generation.requests import GenerationRequest
from webui.generation.service import DONE, FAILED, INTERRUPTED
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.outputs.infotext import parse_infotext
from webui.outputs.writer import read_infotext

FAMILIES = ("sd15", "sdxl", "sd3")
SIZE = 64


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("gen")
    models = root / "models"
    write_demo_models(models)
    ckpts = models / "Stable-diffusion"
    shutil.copy(tiny_checkpoint("sd15", inpaint=True).path, ckpts / "sd15-inpainting.safetensors")
    shutil.copy(tiny_checkpoint("sdxl_refiner").path, ckpts / "sdxl-refiner.safetensors")
    svc = tmp_services(root, ram_cache_models=4, preview_every=1)
    svc.generation.start()
    yield svc
    svc.generation.stop()


def model(family: str) -> str:
    return demo_checkpoint_name(family)


def generate(services, **fields):
    fields.setdefault("width", SIZE)
    fields.setdefault("height", SIZE)
    fields.setdefault("steps", 3)
    job = services.generation.submit(GenerationRequest(**fields))
    assert job.wait(120), "job did not finish"
    return job


def ok(services, **fields):
    job = generate(services, **fields)
    assert job.state == DONE, job.error
    return job


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def init_image(size: int = SIZE) -> Image.Image:
    grad = np.linspace(0, 255, size, dtype=np.uint8)
    rgb = np.stack(
        [np.tile(grad, (size, 1)), np.tile(grad[:, None], (1, size)), np.full((size, size), 90, np.uint8)], -1
    )
    return Image.fromarray(rgb)


def square_mask(size: int = SIZE, lo: int = 16, hi: int = 48) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[lo:hi, lo:hi] = 255
    return Image.fromarray(m)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint"])
def test_every_family_and_task_makes_images_saved_with_infotext(services, family, task):
    fields = dict(task=task, prompt=f"a {task} test", seed=11, sd_model_checkpoint=model(family), save_images=True)
    if task != "txt2img":
        fields.update(init_image=init_image(), denoising_strength=0.6)
    if task == "inpaint":
        fields.update(mask=square_mask())
    job = ok(services, **fields)
    (image,) = job.result.images
    assert image.size == (SIZE, SIZE)
    folder = "txt2img-images" if task == "txt2img" else "img2img-images"
    path = job.result.paths[0]
    assert f"/{folder}/" in path and path.endswith("-11.png")
    params = parse_infotext(read_infotext(path))
    assert params["Prompt"] == f"a {task} test"
    assert params["Seed"] in (11, "11")
    assert job.result.info["sd_model_name"] == model(family).rsplit(".", 1)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_request_and_seed_give_the_same_image_bit_for_bit(services, family):
    req = dict(prompt="reproducible", seed=1234, sd_model_checkpoint=model(family), save_images=False)
    a = ok(services, **req).result.images[0]
    b = ok(services, **req).result.images[0]
    c = ok(services, **{**req, "seed": 1235}).result.images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_seeds_follow_a1111_and_each_image_matches_its_seed_alone(services):
    job = ok(
        services, prompt="batch", seed=500, batch_size=2, n_iter=2, sd_model_checkpoint=model("sd15"), save_images=False
    )
    assert job.result.seeds == [500, 501, 502, 503]
    alone = ok(services, prompt="batch", seed=502, sd_model_checkpoint=model("sd15"), save_images=False)
    # a batch of 2 and a batch of 1 run other kernels: equal within rounding (tests/tolerance.py)
    assert_close_pixels(pixels(job.result.images[2]), pixels(alone.result.images[0]))
    assert_far(pixels(job.result.images[2]), pixels(job.result.images[3]), PIXEL_MAX, PIXEL_MEAN)  # the next seed


def test_variation_seed_strength_moves_between_the_two_seeds(services):
    base = dict(prompt="variation", seed=7, sd_model_checkpoint=model("sd15"), save_images=False)
    plain = pixels(ok(services, **base).result.images[0])
    none = pixels(ok(services, **base, subseed=99, subseed_strength=0.0).result.images[0])
    half = pixels(ok(services, **base, subseed=99, subseed_strength=0.5).result.images[0])
    assert np.array_equal(plain, none)
    assert not np.array_equal(plain, half)


def test_cpu_rng_reproduces(services):
    req = dict(prompt="cpu noise", seed=3, rng="CPU", sd_model_checkpoint=model("sdxl"), save_images=False)
    assert np.array_equal(pixels(ok(services, **req).result.images[0]), pixels(ok(services, **req).result.images[0]))


def test_random_seed_is_drawn_and_reported(services):
    job = ok(services, prompt="random", seed=-1, sd_model_checkpoint=model("sd15"), save_images=False)
    assert 0 <= job.result.seeds[0] < 2**32
    assert f"Seed: {job.result.seeds[0]}" in job.result.infotexts[0]


def test_sd3_img2img_runs_a_multistep_solver(services):
    """DPM++ 2M on flow sigmas has no scale_noise in diffusers; our subclass adds it, so SD3 img2img takes it."""
    job = ok(
        services, task="img2img", init_image=init_image(), sampler_name="DPM++ 2M", sd_model_checkpoint=model("sd3")
    )
    assert job.result.info["sampler_name"] == "DPM++ 2M" and "warnings" not in job.result.info


def test_a_sampler_the_family_cannot_run_falls_back_and_says_so(services):
    job = ok(services, sampler_name="DPM2 a", scheduler="Karras", sd_model_checkpoint=model("sd3"))
    assert (job.result.info["sampler_name"], job.result.info["scheduler"]) == ("Euler", "Karras")
    assert job.result.info["warnings"] == [
        "Sampler 'DPM2 a' does not work with SD3 Medium (flow-matching models); Euler was used"
    ]
    assert "Sampler: Euler, Schedule type: Karras," in job.result.infotexts[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_offered_txt2img_sampler_runs(services, family):
    services.generation.call(lambda: services.manager.load(model(family)), timeout=60)
    fam = services.manager.family
    for name in services.samplers.samplers_for(fam, "txt2img"):
        job = generate(
            services,
            prompt="s",
            seed=1,
            sampler_name=name,
            steps=2,
            sd_model_checkpoint=model(family),
            save_images=False,
        )
        assert job.state == DONE, f"{name}: {job.error}"


def test_nine_channel_inpainting_checkpoint_keeps_unmasked_pixels(services):
    image = init_image()
    job = ok(
        services,
        task="inpaint",
        prompt="inpaint model",
        init_image=image,
        mask=square_mask(),
        mask_blur=0,
        denoising_strength=1.0,
        seed=5,
        sd_model_checkpoint="sd15-inpainting.safetensors",
        save_images=False,
    )
    out = pixels(job.result.images[0])
    src = pixels(image)
    assert np.array_equal(out[:8, :8], src[:8, :8])
    assert not np.array_equal(out[20:44, 20:44], src[20:44, 20:44])
    assert job.result.info["is_using_inpainting_conditioning"] is True


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_masked_content_modes_and_only_masked_area(services, fill):
    job = ok(
        services,
        task="inpaint",
        prompt="fill",
        init_image=init_image(96),
        mask=square_mask(96, 40, 56),
        inpainting_fill=fill,
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        denoising_strength=0.8,
        seed=9,
        sd_model_checkpoint=model("sd15"),
        save_images=False,
    )
    out = pixels(job.result.images[0])
    assert out.shape[:2] == (96, 96)  # only-masked pastes back into the original size
    assert np.array_equal(out[:16, :16], pixels(init_image(96))[:16, :16])


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_doubles_the_size_and_writes_its_keys(services, upscaler):
    job = ok(
        services,
        prompt="hires",
        seed=2,
        enable_hr=True,
        hr_scale=2.0,
        hr_upscaler=upscaler,
        hr_second_pass_steps=2,
        denoising_strength=0.5,
        sd_model_checkpoint=model("sd15"),
        save_images=False,
    )
    assert job.result.images[0].size == (128, 128)
    params = parse_infotext(job.result.infotexts[0])
    assert params["Hires upscaler"] == upscaler
    assert float(params["Hires upscale"]) == 2.0
    assert float(params["Denoising strength"]) == 0.5


def test_sdxl_refiner_hand_off(services):
    base = dict(prompt="refined", seed=4, steps=4, sd_model_checkpoint=model("sdxl"), save_images=False)
    plain = ok(services, **base).result.images[0]
    job = ok(services, **base, refiner_checkpoint="sdxl-refiner.safetensors", refiner_switch_at=0.5)
    assert job.result.images[0].size == (SIZE, SIZE)
    assert not np.array_equal(pixels(plain), pixels(job.result.images[0]))
    assert "Refiner: sdxl-refiner" in job.result.infotexts[0]


def test_refiner_must_be_sdxl(services):
    job = generate(services, prompt="x", refiner_checkpoint=model("sd15"), sd_model_checkpoint=model("sdxl"))
    assert job.state == FAILED and "SDXL" in job.error


def test_clip_skip_changes_the_sd15_image(services):
    base = dict(prompt="clip skip", seed=8, sd_model_checkpoint=model("sd15"), save_images=False)
    one = pixels(ok(services, **base).result.images[0])
    two = ok(services, **base, clip_skip=2)
    assert not np.array_equal(one, pixels(two.result.images[0]))
    assert "Clip skip: 2" in two.result.infotexts[0]


def test_infotext_round_trip_regenerates_the_same_image(services):
    from webui.generation.infotext_map import request_fields_from_infotext

    first = ok(
        services,
        prompt="a (red:1.2) cube, [blue] sky",
        negative_prompt="blurry",
        seed=77,
        steps=4,
        cfg_scale=5.5,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        sd_model_checkpoint=model("sd15"),
        save_images=True,
    )
    fields = request_fields_from_infotext(parse_infotext(read_infotext(first.result.paths[0])))
    again = ok(
        services,
        **{k: v for k, v in fields.items() if k not in ("width", "height", "steps")},
        width=fields["width"],
        height=fields["height"],
        steps=fields["steps"],
        save_images=False,
    )
    assert np.array_equal(pixels(first.result.images[0]), pixels(again.result.images[0]))


def test_invalid_requests_fail_with_the_field_to_change(services):
    job = generate(services, prompt="x", width=65, sd_model_checkpoint=model("sd15"))
    assert job.state == FAILED and job.error_field == "width" and "multiple of 8" in job.error
    job = generate(services, prompt="x", sampler_name="Nope", sd_model_checkpoint=model("sd15"))
    assert job.state == FAILED and "Euler a" in job.error
    job = generate(services, prompt="x", sd_model_checkpoint="missing.safetensors")
    assert job.state == FAILED and job.error_field == "sd_model_checkpoint"
    job = generate(services, prompt="x <lora:nope:1>", sd_model_checkpoint=model("sd15"))
    assert job.state == FAILED and "nope" in job.error


def test_interrupt_keeps_finished_images(services):
    job = services.generation.submit(
        GenerationRequest(
            prompt="long",
            seed=1,
            n_iter=40,
            steps=3,
            width=SIZE,
            height=SIZE,
            sd_model_checkpoint=model("sd15"),
            save_images=False,
        )
    )
    import time

    deadline = time.time() + 60
    while job.progress.images_done < 1 and time.time() < deadline:
        time.sleep(0.01)
    services.generation.interrupt(job.id)
    assert job.wait(60)
    assert job.state == INTERRUPTED
    assert 1 <= len(job.result.images) < 40
    assert job.progress.preview is not None


def test_lora_tag_activates_the_lora_for_this_job_only(services, fresh_tiny_pipe):
    from tests.lora_files import write_kohya_unet_family

    lora_dir = services.paths.models / "Lora"
    write_kohya_unet_family(fresh_tiny_pipe("sd15"), lora_dir / "detail.safetensors", scale=1.0)
    write_kohya_unet_family(fresh_tiny_pipe("sdxl"), lora_dir / "xl_only.safetensors", sgm_names=True)
    services.catalog.refresh()
    base = dict(seed=21, sd_model_checkpoint=model("sd15"), save_images=False)
    plain = pixels(ok(services, prompt="a cat", **base).result.images[0])
    with_lora = ok(services, prompt="a cat <lora:detail:1>", **base)
    assert not np.array_equal(plain, pixels(with_lora.result.images[0]))
    assert with_lora.result.infotexts[0].startswith("a cat <lora:detail:1>")
    assert "Lora hashes:" in with_lora.result.infotexts[0]
    # the tag is only text to the encoder once removed, and the LoRA is off again for the next job
    after = pixels(ok(services, prompt="a cat", **base).result.images[0])
    assert np.array_equal(plain, after)
    wrong = generate(services, prompt="a cat <lora:xl_only:1>", **base)
    assert wrong.state == FAILED and "SDXL" in wrong.error


def test_resolution_presets_per_family():
    from webui.families.registry import default_families

    for name, fam in default_families().items():
        assert fam.default_size in fam.resolution_presets, name
        assert all(w % 64 == 0 and h % 64 == 0 for w, h in fam.resolution_presets), name
    xl = default_families().get("sdxl").resolution_presets
    assert (1216, 832) in xl and (832, 1216) in xl
    assert all(0.9e6 < w * h < 1.1e6 for w, h in xl)  # SDXL's buckets are all about one megapixel
