"""The ControlNet section's plain-data side (no browser): values -> units in ``alwayson_scripts``, and an
infotext's ``ControlNet <i>`` keys -> the units' values (what "Send to" and ↙ paste)."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.control.ui import key, units_from_values, values_from_infotext, with_units
from webui.control.units import ControlUnit, parse_units
from webui.generation.requests import GenerationRequest, RequestError
from webui.ui.control_values import request_from_values

MODELS = ["tiny_cn_sd15 [0123abcd]", "tiny_cn_sdxl [89abcdef]"]
MODULES = ["none", "canny", "threshold"]
INFOTEXT = (
    "a house\nSteps: 3, Sampler: Euler a, Seed: 5, Size: 64x64, "
    'ControlNet 0: "Module: canny, Model: tiny_cn_sd15 [ffffffff], Weight: 0.5, Resize Mode: Just Resize, '
    "Processor Res: 256, Threshold A: 80, Threshold B: 160, Guidance Start: 0.1, Guidance End: 0.9, "
    'Pixel Perfect: True, Control Mode: ControlNet is more important", '
    'ControlNet 1: "Module: threshold, Model: gone [12345678], Weight: 1.0"'
)


def test_enabled_units_go_into_alwayson_scripts_as_control_units():
    image = Image.new("RGB", (32, 32), "white")
    values = {
        "prompt": "a house",
        key(0, "enabled"): False,
        key(1, "enabled"): True,
        key(1, "module"): "canny",
        key(1, "model"): MODELS[0],
        key(1, "weight"): 1,  # a slider can give an int: the unit gets a float
        key(1, "image"): image,
        key(1, "processor_res"): 256.0,
        key(1, "threshold_a"): 90,
        key(1, "control_mode"): "My prompt is more important",
    }
    build = with_units(lambda v: request_from_values("txt2img", v))
    request = build(values)
    assert isinstance(request, GenerationRequest) and request.prompt == "a house"
    (sent,) = request.alwayson_scripts["controlnet"]
    assert isinstance(sent, dict) and sent["image"] is image  # plain data: it crosses the backend
    (unit,) = parse_units([sent])  # what the extension makes of it
    assert isinstance(unit, ControlUnit) and unit.enabled and unit.image is image
    assert (unit.module, unit.model, unit.processor_res) == ("canny", MODELS[0], 256)
    assert isinstance(unit.weight, float) and unit.weight == 1.0 and unit.threshold_a == 90.0
    assert unit.control_mode == "My prompt is more important" and unit.resize_mode == "Crop and Resize"
    assert unit.as_args() == sent
    assert build({"prompt": "x"}).alwayson_scripts == {}  # no unit enabled: no script
    assert units_from_values({key(2, "enabled"): True})[0]["module"] == "none"


def test_an_infotext_restores_the_units_and_names_what_it_cannot():
    values, notes = values_from_infotext(INFOTEXT, MODELS, MODULES)
    assert values[key(0, "enabled")] is True and values[key(1, "enabled")] is True
    assert values[key(2, "enabled")] is False  # not in the infotext: off
    assert values[key(0, "module")] == "canny"
    assert values[key(0, "model")] == MODELS[0]  # the same name with another hash: the installed one
    assert values[key(0, "weight")] == 0.5 and values[key(0, "processor_res")] == 256
    assert (values[key(0, "guidance_start")], values[key(0, "guidance_end")]) == (0.1, 0.9)
    assert values[key(0, "pixel_perfect")] is True
    assert values[key(0, "control_mode")] == "ControlNet is more important"
    assert values[key(0, "resize_mode")] == "Just Resize"
    assert key(1, "model") not in values and any("gone" in note for note in notes)
    assert values_from_infotext("just a prompt", MODELS, MODULES) == ({}, [])
    plain, _ = values_from_infotext("a cat\nSteps: 3, Sampler: Euler a, Seed: 1", MODELS, MODULES)
    assert plain == {key(i, "enabled"): False for i in range(3)}  # made without ControlNet: units off


def test_a_unit_the_extension_would_refuse_is_refused_before_anything_is_queued():
    values = {key(0, "enabled"): True, key(0, "guidance_start"): 0.8, key(0, "guidance_end"): 0.2}
    with pytest.raises(RequestError) as refused:
        with_units(lambda v: request_from_values("txt2img", v))(values)
    assert refused.value.field == "alwayson_scripts" and "unit 0" in refused.value.message
