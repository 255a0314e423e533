"""Preprocessors that need no weights run here; model-based ones name the file they need."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.control.preprocessors import (
    PreprocessorError,
    module_detail,
    module_names,
    pixel_perfect_resolution,
    resize_control,
    run_preprocessor,
)


def square(size=(96, 64)) -> Image.Image:
    image = Image.new("RGB", size, (20, 20, 20))
    ImageDraw.Draw(image).rectangle((24, 16, 72, 48), fill=(230, 230, 230))
    return image


def test_the_names_and_details_are_a1111s():
    names = module_names()
    for name in (
        "none",
        "canny",
        "invert",
        "threshold",
        "blur_gaussian",
        "tile_resample",
        "shuffle",
        "inpaint",
        "inpaint_only",
        "depth",
        "openpose",
        "ip-adapter_clip_sd15",
    ):
        assert name in names
    detail = module_detail("canny")
    assert [s["name"] for s in detail["sliders"]] == ["Preprocessor Resolution", "Low Threshold", "High Threshold"]
    assert detail["sliders"][1]["value"] == 100 and detail["sliders"][2]["max"] == 255
    assert module_detail("depth_midas")["name"] == "depth"  # by label
    assert module_detail("ip-adapter_clip_h")["kind"] == "clip"


def test_canny_finds_the_square_edges_and_its_thresholds_matter():
    edges = np.asarray(run_preprocessor("canny", square(), resolution=64, threshold_a=100, threshold_b=200))
    assert edges.shape == (64, 96, 3) and set(np.unique(edges)) <= {0, 255}
    on = edges[..., 0] > 0
    assert on[16:49, 22:27].any() and on[16:49, 70:75].any()  # the left and right sides
    assert not on[25:40, 35:60].any() and not on[:8].any()  # not inside, not far away
    faint = Image.new("RGB", (64, 64), (100, 100, 100))
    ImageDraw.Draw(faint).rectangle((16, 16, 48, 48), fill=(120, 120, 120))  # Sobel L1 ~ 80-160 at the edge
    low = np.asarray(run_preprocessor("canny", faint, 64, 10, 50))
    high = np.asarray(run_preprocessor("canny", faint, 64, 200, 250))
    assert low.any() and not high.any()


def test_canny_runs_at_the_processor_resolution():
    assert run_preprocessor("canny", square(), resolution=128).size == (192, 128)


def test_the_simple_ones():
    image = square()
    arr = np.asarray(image)
    assert np.array_equal(np.asarray(run_preprocessor("none", image)), arr)
    assert np.array_equal(np.asarray(run_preprocessor("invert (from white bg & black line)", image)), 255 - arr)
    binary = np.asarray(run_preprocessor("threshold", image, 64, threshold_a=127))
    assert binary[32, 48, 0] == 255 and binary[2, 2, 0] == 0
    blurred = np.asarray(run_preprocessor("blur_gaussian", image, 64, threshold_a=4))
    assert 20 < blurred[16, 48, 0] < 230 and blurred.shape == arr.shape
    assert run_preprocessor("tile_resample", image, threshold_a=2).size == (48, 32)
    assert run_preprocessor("tile_resample", image, threshold_a=1).size == (96, 64)
    one = np.asarray(run_preprocessor("shuffle", image, seed=1))
    assert np.array_equal(one, np.asarray(run_preprocessor("shuffle", image, seed=1)))
    assert not np.array_equal(one, np.asarray(run_preprocessor("shuffle", image, seed=2))) and one.shape == arr.shape


def test_inpaint_maps_carry_the_mask_as_transparency():
    mask = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 47, 63), fill=255)
    hint = run_preprocessor("inpaint_only", square(), mask=mask)
    assert hint.mode == "RGBA"
    alpha = np.asarray(hint.getchannel("A"))
    assert alpha[10, 10] == 0 and alpha[10, 80] == 255
    with pytest.raises(PreprocessorError, match="needs a mask"):
        run_preprocessor("inpaint", square())


def test_model_based_ones_name_the_weights_file_and_folder(tmp_path):
    with pytest.raises(PreprocessorError) as caught:
        run_preprocessor("depth_midas", square(), models_dir=tmp_path)
    text = str(caught.value)
    assert "dpt_hybrid-midas-501f0c75.pt" in text and str(tmp_path / "ControlNetPreprocessor" / "midas") in text
    with pytest.raises(PreprocessorError, match="body_pose_model.pth"):
        run_preprocessor("openpose", square(), models_dir=tmp_path)
    with pytest.raises(PreprocessorError, match="unknown preprocessor"):
        run_preprocessor("no_such", square())


def test_resize_modes():
    image = square((100, 50))  # 2:1 onto a square
    assert resize_control(image, 64, 64, "Just Resize").size == (64, 64)
    cropped = np.asarray(resize_control(image, 64, 64, "Crop and Resize"))
    assert cropped.shape == (64, 64, 3) and cropped[32, 0, 0] > 200  # the square fills the middle: cropped sides
    filled = np.asarray(resize_control(image, 64, 64, "Resize and Fill"))
    assert filled.shape == (64, 64, 3) and filled[2, 32, 0] == 20  # padded with the border colour
    hint = run_preprocessor("inpaint", square((100, 50)), mask=Image.new("L", (100, 50), 0))
    padded = np.asarray(resize_control(hint, 64, 64, "Resize and Fill"))
    assert padded[2, 32, 3] == 0 and padded[32, 32, 3] == 255  # the padding is "repaint"
    assert pixel_perfect_resolution(image, 64, 64, "Crop and Resize") == 64
    assert pixel_perfect_resolution(image, 64, 64, "Resize and Fill") == 32
