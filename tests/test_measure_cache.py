"""Layout measurements are kept on disk: a later load, or a later start, reads them instead of timing again."""

from __future__ import annotations

import json

import torch

from webui.models.demo import build_tiny_pipeline
from webui.models.devices import DeviceChoice
from webui.speed.measure_cache import MeasureCache
from webui.speed.optimize import SpeedTuner


def _counting(result=(10.0, 5.0)):
    calls = []

    def measure(block, size=32, batch=2):
        calls.append((block.conv1.in_channels, size, batch))
        return result

    return measure, calls


def test_a_second_tuner_reads_the_stored_measurement_instead_of_timing(tmp_path):
    store = tmp_path / "layout_measurements.json"
    measure, calls = _counting()
    choice = DeviceChoice("cpu", "fp32", "test")
    first = SpeedTuner(choice, measure_layout=MeasureCache(store, "machine A").wrap(measure)).apply(
        build_tiny_pipeline("sd15"), "sd15"
    )
    assert len(calls) == 2  # the UNet's block and the VAE's
    again_pipe = build_tiny_pipeline("sd15")  # a new start: a new tuner, the same file
    again = SpeedTuner(choice, measure_layout=MeasureCache(store, "machine A").wrap(measure)).apply(again_pipe, "sd15")
    assert len(calls) == 2, "measured again although the result was stored"
    assert again.layout == first.layout
    assert again_pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(json.loads(store.read_text())) == 2


def test_another_machine_or_dtype_is_measured(tmp_path):
    store = tmp_path / "m.json"
    measure, calls = _counting()
    pipe = build_tiny_pipeline("sd15")
    block = next(m for m in pipe.unet.modules() if type(m).__name__ == "ResnetBlock2D")
    MeasureCache(store, "A").wrap(measure)(block, size=8, batch=1)
    MeasureCache(store, "B").wrap(measure)(block, size=8, batch=1)
    MeasureCache(store, "A").wrap(measure)(block, size=16, batch=1)
    MeasureCache(store, "A").wrap(measure)(block.to(torch.bfloat16), size=8, batch=1)
    MeasureCache(store, "A").wrap(measure)(block, size=8, batch=1)
    assert len(calls) == 4


def test_an_unwritable_or_damaged_store_only_costs_a_measurement(tmp_path):
    measure, calls = _counting((3.0, 4.0))
    block = next(m for m in build_tiny_pipeline("sd15").vae.modules() if type(m).__name__ == "ResnetBlock2D")
    damaged = tmp_path / "m.json"
    damaged.write_text("[1, 2")
    assert MeasureCache(damaged, "A").wrap(measure)(block, size=8, batch=1) == (3.0, 4.0)
    blocked = tmp_path / "file" / "m.json"
    (tmp_path / "file").write_text("not a folder")
    assert MeasureCache(blocked, "A").wrap(measure)(block, size=8, batch=1) == (3.0, 4.0)
    assert len(calls) == 2
