"""The tolerances of ``tests/tolerance.py`` still catch a real regression on the tiny models.

The comparisons that allow rounding (two loaders, a batch against a single image, a replay) must
fail when the image really changed: another seed, another sampler, another step count or another
prompt. Each case makes the image twice, once with the change, and checks that the difference is
beyond the tolerance by a wide margin, as float images and as the 8-bit images users save.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tolerance import FLOAT_MAX, FLOAT_MEAN, PIXEL_MAX, PIXEL_MEAN, assert_close, assert_far

# How far beyond the tolerance a real change must be (a regression is not a rounding-sized nudge).
MARGIN = 10


def _image(pipe, seed: int = 0, steps: int = 3, prompt: str = "a photo of a cat", scheduler=None) -> np.ndarray:
    if scheduler is not None:
        pipe.scheduler = scheduler
    with torch.no_grad():
        return pipe(
            prompt=prompt,
            num_inference_steps=steps,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(seed),
        ).images


@pytest.fixture(scope="module")
def sd15(tiny_checkpoint):
    pipe = tiny_checkpoint("sd15").pipe
    original = pipe.scheduler
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    pipe.scheduler = original


def _changes(pipe):
    from diffusers import EulerAncestralDiscreteScheduler

    ancestral = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    return {
        "another seed": dict(seed=1),
        "another sampler": dict(scheduler=ancestral),
        "another step count": dict(steps=4),
        "another prompt": dict(prompt="a photo of a dog"),
    }


@pytest.mark.parametrize("change", ["another seed", "another sampler", "another step count", "another prompt"])
def test_a_real_change_is_far_beyond_the_rounding_tolerance(sd15, change):
    original = sd15.scheduler
    base = _image(sd15)
    try:
        changed = _image(sd15, **_changes(sd15)[change])
    finally:
        sd15.scheduler = original
    assert_far(base, changed, MARGIN * FLOAT_MAX, MARGIN * FLOAT_MEAN)
    to_8bit = lambda x: np.round(x * 255).astype(np.int16)  # noqa: E731 - what the writer saves
    assert_far(to_8bit(base), to_8bit(changed), MARGIN * PIXEL_MAX, PIXEL_MEAN * MARGIN)


def test_the_same_computation_repeated_is_within_tolerance_and_bit_exact(sd15):
    first, again = _image(sd15), _image(sd15)
    assert_close(first, again)
    assert np.array_equal(first, again)  # the same computation twice in one process: bit for bit
