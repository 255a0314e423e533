"""Upscalers: tiny spandrel models read without running code, tiles that equal the untiled run, the Extras job."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.tolerance import assert_close, assert_close_pixels, assert_far
from tests.upscaler_files import compact_state, esrgan_state, save_code_pickle, save_pth, save_safetensors
from webui.generation.requests import RequestError
from webui.generation.service import JobInterrupted
from webui.upscale import catalog
from webui.upscale.extras import ExtrasRequest, check_extras, infotext_params, postprocess_line
from webui.upscale.job import run_extras
from webui.upscale.loading import UpscalerError, load_model
from webui.upscale.run import TileOptions, Upscalers


def picture(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    save_safetensors(compact_state(scale=2), root / "ESRGAN" / "2x_tiny_compact.safetensors")
    save_pth({"params_ema": esrgan_state(scale=2)}, root / "RealESRGAN" / "tiny_esrgan_x2.pth")
    save_safetensors(compact_state(scale=4, seed=3), root / "upscale_models" / "4x-comfy.safetensors")
    return root


# --- reading the files --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [compact_state, esrgan_state])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_tiny_models_load_from_both_formats(tmp_path, make, suffix):
    path = tmp_path / f"m{suffix}"
    save_safetensors(make(), path) if suffix == ".safetensors" else save_pth({"params": make()}, path)
    model = load_model(path)
    assert model.scale == 2 and model.purpose == "SR"
    import torch

    with torch.inference_mode():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)


def test_a_pth_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path):
    mark = tmp_path / "the-payload-ran"
    path = save_code_pickle(compact_state(), tmp_path / "evil.pth", mark)
    with pytest.raises(UpscalerError, match="safe loader refuses"):
        load_model(path)
    assert not mark.exists()


def test_a_file_that_is_no_upscaler_says_so(tmp_path):
    import torch

    path = save_safetensors({"some.weight": torch.zeros(2, 2)}, tmp_path / "x.safetensors")
    with pytest.raises(UpscalerError, match="does not recognise"):
        load_model(path)


def test_importing_spandrel_leaves_no_torchvision_stand_in_behind():
    import importlib.util
    import sys

    from webui.upscale.loading import import_spandrel

    import_spandrel()
    if importlib.util.find_spec("torchvision") is None:
        assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)


# --- the list -----------------------------------------------------------------------------------------


def test_catalog_lists_resampling_first_then_every_folder(models):
    entries = catalog.scan(models)
    assert [e.name for e in entries[:3]] == ["None", "Lanczos", "Nearest"]
    by_name = {e.name: e for e in entries}
    assert by_name["2x_tiny_compact"].kind == "ESRGAN" and by_name["2x_tiny_compact"].scale == 2
    assert by_name["tiny_esrgan_x2"].kind == "RealESRGAN" and by_name["tiny_esrgan_x2"].scale == 2
    assert by_name["4x-comfy"].kind == "spandrel" and by_name["4x-comfy"].scale == 4
    with pytest.raises(KeyError, match="available: None, Lanczos"):
        catalog.find(entries, "nope")


def test_a1111s_own_model_files_keep_the_names_a1111_gives_them(tmp_path):
    save_safetensors(compact_state(scale=4), tmp_path / "RealESRGAN" / "realesr-general-x4v3.safetensors")
    entries = catalog.scan(tmp_path)
    entry = catalog.find(entries, "R-ESRGAN General 4xV3")  # as A1111's infotexts and API clients say it
    assert entry.name == "R-ESRGAN General 4xV3" and entry.scale == 4
    assert catalog.find(entries, "realesr-general-x4v3") == entry  # the stem works too


# --- tiles --------------------------------------------------------------------------------------------


def test_tiled_equals_untiled_within_rounding(models):
    import numpy as np

    ups = Upscalers(models)
    image = picture(150, 120)
    whole = ups.upscale(image, 2, "2x_tiny_compact", TileOptions(tile=0))
    tiled = ups.upscale(image, 2, "2x_tiny_compact", TileOptions(tile=32, overlap=16))
    assert ups.tiles_for("2x_tiny_compact", 150, 120, 2, TileOptions(32, 16)) > 20  # it really was tiled
    assert_close(np.asarray(tiled) / 255.0, np.asarray(whole) / 255.0, max_diff=1 / 255 + 1e-9, mean_diff=1e-3)


def test_tiles_without_overlap_show_seams(models):
    """What the overlap is for: without it the tile edges differ (so the test above can fail)."""
    import numpy as np

    ups = Upscalers(models)
    image = picture(150, 120)
    whole = np.asarray(ups.upscale(image, 2, "2x_tiny_compact", TileOptions(tile=0))) / 255.0
    seams = np.asarray(ups.upscale(image, 2, "2x_tiny_compact", TileOptions(tile=32, overlap=0))) / 255.0
    assert_far(seams, whole, 1 / 255 + 1e-9, 1e-3)


# --- scale, resize to, the second upscaler ------------------------------------------------------------


def test_scale_by_runs_the_model_then_resizes_to_the_exact_size(models):
    ups = Upscalers(models)
    image = picture(40, 30)
    assert ups.upscale(image, 2, "2x_tiny_compact").size == (80, 60)
    assert ups.upscale(image, 3, "2x_tiny_compact").size == (120, 90)  # two runs (x4), then Lanczos down
    assert ups.upscale(image, 1.5, "Lanczos").size == (60, 45)
    assert ups.upscale(image, 2, "None").size == (40, 30)


def test_resize_to_with_crop_is_exact_and_without_keeps_the_aspect(models):
    ups = Upscalers(models)
    image = picture(40, 30)
    base = {"images": (image,), "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60}
    base["upscaler_1"] = "Lanczos"
    cropped = run_extras(check_extras(ExtrasRequest(**base, save=False), ups), ups, None, FakeContext())
    kept = run_extras(
        check_extras(ExtrasRequest(**base, upscaling_crop=False, save=False), ups), ups, None, FakeContext()
    )
    assert cropped.images[0].size == (100, 60)
    assert kept.images[0].size == (100, 75)  # covers 100x60 at the image's own aspect
    assert "Postprocess upscale to: 100x60, Postprocess crop to: 100x60" in cropped.infotexts[0]


def test_second_upscaler_is_blended_at_its_visibility(models):
    ups = Upscalers(models)
    image = picture(20, 20)
    req = ExtrasRequest(
        images=(image,), upscaler_1="Nearest", upscaler_2="Lanczos", extras_upscaler_2_visibility=0.5, save=False
    )
    out = run_extras(check_extras(req, ups), ups, None, FakeContext()).images[0]
    nearest, lanczos = (
        image.resize((40, 40), Image.Resampling.NEAREST),
        image.resize((40, 40), Image.Resampling.LANCZOS),
    )
    assert_close_pixels(out, Image.blend(nearest, lanczos, 0.5))
    assert_far(out, nearest, 2, 0.05)


def test_infotext_is_a1111s():
    req = ExtrasRequest(
        images=(picture(),), upscaler_1="R-ESRGAN 4x+", upscaler_2="Lanczos", extras_upscaler_2_visibility=0.3
    )
    assert postprocess_line(infotext_params(req, picture())) == (
        "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+, Postprocess upscaler 2: Lanczos"
    )


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"upscaler_1": "nope"}, "upscaler_1"),
        ({"upscaler_2": "nope"}, "upscaler_2"),
        ({"upscaling_resize": 20}, "upscaling_resize"),
        ({"resize_mode": 2}, "resize_mode"),
        ({"extras_upscaler_2_visibility": 2}, "extras_upscaler_2_visibility"),
        ({"images": ()}, "image"),
    ],
)
def test_bad_fields_are_refused_by_name(models, fields, field):
    with pytest.raises(RequestError) as info:
        check_extras(ExtrasRequest(**{"images": (picture(),), **fields}), Upscalers(models))
    assert info.value.field == field


# --- the job ------------------------------------------------------------------------------------------


class FakeContext:
    """What ``run_extras`` sees of a JobContext; ``stop_after`` tiles it raises as an interrupt would."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.steps, self.planned, self.partials = stop_after, 0, None, []

    def plan(self, total, images):
        self.planned = (total, images)

    def begin_pass(self, steps, label=""):
        pass

    def on_step(self, step, *_):
        self.steps += 1
        self.check()

    def check(self):
        if self.stop_after is not None and self.steps >= self.stop_after:
            raise JobInterrupted()

    def finish_pass(self, steps):
        pass

    def image_done(self, count=1):
        pass

    def partial(self, result):
        self.partials.append(len(result.images))


def test_an_interrupt_lands_between_tiles(models):
    ups = Upscalers(models, tiles=TileOptions(tile=16, overlap=4))
    req = check_extras(ExtrasRequest(images=(picture(64, 64), picture(64, 64, 1)), upscaler_1="2x_tiny_compact"), ups)
    ctx = FakeContext(stop_after=3)
    with pytest.raises(JobInterrupted):
        run_extras(req, ups, None, ctx)
    assert ctx.steps == 3 and ctx.planned[0] > 3 and ctx.partials == []  # stopped inside the first image


def test_the_job_saves_with_infotext_and_keeps_the_source_parameters(models, tmp_path):
    from webui.outputs.writer import OutputWriter, encode_image, read_infotext

    source = Image.open(__import__("io").BytesIO(encode_image(picture(), "a cat\nSteps: 3, Seed: 7", "png")))
    ups = Upscalers(models)
    writer = OutputWriter(tmp_path / "outputs")
    req = check_extras(ExtrasRequest(images=(source,), upscaler_1="2x_tiny_compact"), ups)
    result = run_extras(req, ups, writer, FakeContext())
    saved = result.paths[0]
    assert "extras-images" in saved
    text = read_infotext(Image.open(saved))
    assert text == "a cat\nSteps: 3, Seed: 7, Postprocess upscale by: 2, Postprocess upscaler: 2x_tiny_compact"
