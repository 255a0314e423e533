"""ControlNet units: A1111's fields, aliases and defaults checked once; the infotext written and read back."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from webui.control.units import (
    CONTROL_MODES,
    RESIZE_MODES,
    ControlUnit,
    parse_units,
    unit_infotext,
    units_from_infotext,
)
from webui.hooks import JobRefused


def b64(image, data_url=False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


RED = Image.new("RGB", (40, 30), (200, 10, 10))
MASK = Image.new("L", (40, 30), 255)


def test_a1111_defaults_and_slider_defaults_fill_in():
    (unit,) = parse_units([{"module": "canny", "model": "cn [abcd1234]", "image": b64(RED)}])
    assert unit.enabled and unit.weight == 1.0 and unit.resize_mode == "Crop and Resize"
    assert unit.control_mode == "Balanced" and unit.guidance_start == 0.0 and unit.guidance_end == 1.0
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 100, 200)
    assert unit.image.size == (40, 30) and unit.image.mode == "RGB"


def test_aliases_ints_and_data_urls():
    units = parse_units(
        [
            {
                "input_image": b64(RED, data_url=True),
                "module": "canny",
                "weight": 1,
                "resize_mode": 2,
                "control_mode": 1,
                "guidance": 0.5,
                "threshold_a": 50,
                "threshold_b": 300,
            },
            {
                "image": {"image": b64(RED), "mask": b64(MASK)},
                "module": "inpaint_global_harmonious",
                "resize_mode": "Inner Fit (Scale to Fit)",
                "control_mode": "ControlNet is more important",
            },
            {"image": [b64(RED), b64(MASK)], "module": "ip-adapter_clip_h", "resize_mode": 3, "enabled": False},
        ]
    )
    first, second, third = units
    assert isinstance(first.weight, float) and first.resize_mode == "Resize and Fill"
    assert first.control_mode == CONTROL_MODES[1] and first.guidance_end == 0.5
    assert first.threshold_a == 50 and first.threshold_b == 200  # out of the slider's range: its default
    assert second.module == "inpaint" and second.mask.mode == "L" and second.resize_mode == RESIZE_MODES[1]
    assert second.control_mode == CONTROL_MODES[2]
    assert third.module == "ip-adapter_clip_sd15" and third.mask is not None and not third.enabled
    assert third.resize_mode == "Just Resize"


def test_parsing_again_returns_the_same_units():
    units = parse_units([{"module": "canny", "image": b64(RED)}])
    assert parse_units(units) == units
    assert parse_units([u.as_args() for u in units]) == units  # the plain form webui_script_args hands back
    assert parse_units({"args": [ControlUnit()]}) == (ControlUnit(),)


@pytest.mark.parametrize(
    ("unit", "words"),
    [
        ({"weight": 3}, "unit 0: weight must be between 0 and 2"),
        ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start (0.8) must not be after guidance_end"),
        ({"guidance_end": 1.5}, "guidance_end must be between 0 and 1"),
        ({"module": "no_such"}, "'no_such' is not a known preprocessor"),
        ({"resize_mode": "Stretch"}, "resize_mode must be one of Just Resize"),
        ({"control_mode": 7}, "control_mode must be one of"),
        ({"image": "not base64!"}, "image is not valid base64"),
        ({"image": base64.b64encode(b"%!PS-Adobe").decode()}, "image is base64, but this is not an image"),
        ({"image": "https://example.com/x.png"}, "images are not fetched"),
        ({"weight": "heavy"}, "weight must be a number"),
        ({"ipadapter_input": "gASV"}, "pickled"),
    ],
)
def test_bad_units_are_refused_naming_the_unit_and_field(unit, words):
    with pytest.raises(JobRefused) as caught:
        parse_units([{"module": "none"}, unit][1:])
    assert words in str(caught.value) and caught.value.field == "alwayson_scripts"


def test_the_second_unit_is_named():
    with pytest.raises(JobRefused, match="unit 1: weight"):
        parse_units([{}, {"weight": -1}])


def test_too_many_pixels_is_refused():
    with pytest.raises(JobRefused, match="largest accepted"):
        parse_units([{"image": b64(RED)}], max_pixels=100)


def test_infotext_is_a1111s_format_and_reads_back():
    (unit,) = parse_units([{"module": "canny", "model": "control_v11p_sd15_canny", "weight": 1}])
    text = unit_infotext(unit, "control_v11p_sd15_canny [d14c016b]")
    assert text == (
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, "
        "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
        "Pixel Perfect: False, Control Mode: Balanced"
    )
    back = units_from_infotext({"ControlNet 1": '"' + text + '"', "ControlNet 0": text, "Steps": "20"})
    assert len(back) == 2 and back[0] == back[1]
    assert back[0]["module"] == "canny" and back[0]["model"] == "control_v11p_sd15_canny [d14c016b]"
    assert back[0]["weight"] == 1.0 and back[0]["pixel_perfect"] is False and back[0]["enabled"] is True
    (again,) = parse_units([back[0]])
    assert unit_infotext(again, again.model) == text


def test_the_older_infotext_formats_are_read():
    old = (
        "preprocessor: canny, model: control_sd15_canny [fef5e48e], weight: 0.8, starting/ending: (0.1, 0.6), "
        "resize mode: Crop and Resize, pixel perfect: True, control mode: Balanced, preprocessor params: (512, 64, 128)"
    )
    (unit,) = units_from_infotext({"ControlNet": old})
    assert unit["module"] == "canny" and unit["weight"] == 0.8
    assert (unit["guidance_start"], unit["guidance_end"]) == (0.1, 0.6)
    assert (unit["processor_res"], unit["threshold_a"], unit["threshold_b"]) == (512, 64, 128)
    assert unit["pixel_perfect"] is True
    (parsed,) = parse_units([unit])
    assert parsed.guidance_end == 0.6
