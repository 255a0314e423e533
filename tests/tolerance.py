"""Comparing images made by two different computations: within rounding, never bit for bit.

CPU kernels differ between machines (AVX2, AVX-512, AMX; oneDNN picks per shape and alignment) and
between batch shapes, so a pipeline loaded two ways, image k of a batch against its seed alone, or a
replay through the infotext agree only to rounding (seen: 4.7e-06 on 90% of pixels on an AMD EPYC).
Only the same computation repeated in one process is compared exactly.

The tolerances are far below what a real regression gives: ``tests/test_tolerance.py`` checks that
another seed, another sampler or another weight exceeds them on the same tiny models.

* ``assert_close(a, b)`` for float images in [0, 1] (numpy arrays, as diffusers' ``output_type="np"``);
* ``assert_close_pixels(a, b)`` for 8-bit images (PIL or uint8 arrays), where one rounding step can
  move a pixel by a level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Float images in [0, 1]: the largest difference allowed anywhere, and on average.
FLOAT_MAX = 2e-3  # half of one 8-bit level
FLOAT_MEAN = 1e-4
# 8-bit images: at most 2 levels anywhere, and 0.05 levels on average (about 1 pixel in 20 off by one).
PIXEL_MAX = 2
PIXEL_MEAN = 0.05


def _floats(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def differences(a: Any, b: Any) -> tuple[float, float]:
    """(largest, mean) absolute difference of two images of the same shape."""
    x, y = _floats(a), _floats(b)
    assert x.shape == y.shape, f"shapes differ: {x.shape} vs {y.shape}"
    diff = np.abs(x - y)
    return float(diff.max()), float(diff.mean())


def assert_close(a: Any, b: Any, max_diff: float = FLOAT_MAX, mean_diff: float = FLOAT_MEAN) -> None:
    """Float images agree within rounding (different kernels), not necessarily bit for bit."""
    largest, mean = differences(a, b)
    assert largest <= max_diff and mean <= mean_diff, (
        f"images differ by up to {largest:.3g} (mean {mean:.3g}); rounding allows {max_diff:g} (mean {mean_diff:g})"
    )


def assert_close_pixels(a: Any, b: Any, max_diff: int = PIXEL_MAX, mean_diff: float = PIXEL_MEAN) -> None:
    """8-bit images agree within a rounding step or two."""
    assert_close(a, b, max_diff, mean_diff)


def assert_far(a: Any, b: Any, max_diff: float, mean_diff: float) -> None:
    """``assert_close(a, b, max_diff, mean_diff)`` would fail: what a real regression must look like."""
    largest, mean = differences(a, b)
    assert largest > max_diff or mean > mean_diff, (
        f"a real change moved the image by only {largest:.3g} (mean {mean:.3g}): the tolerance "
        f"({max_diff:g}, mean {mean_diff:g}) would not catch it"
    )
