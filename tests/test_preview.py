"""Live preview: the linear latent-to-RGB projection per family, sizes and cost."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from webui.families.registry import default_families
from webui.generation.preview import latent_rgb_factors, latents_to_preview

FAMILIES = default_families()


def latents(channels: int, height: int = 8, width: int = 8, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("family_id", "channels"),
    [("sd15", 4), ("sd2", 4), ("sdxl", 4), ("sdxl_refiner", 4), ("sd3", 16), ("sd35_medium", 16), ("sd35_large", 16)],
)
def test_every_family_has_factors_for_its_channels(family_id, channels):
    matrix, bias = latent_rgb_factors(FAMILIES.get(family_id))
    assert len(matrix) == channels and all(len(row) == 3 for row in matrix)
    assert len(bias) == 3


def test_sdxl_has_its_own_factors():
    assert latent_rgb_factors(FAMILIES.get("sdxl")) != latent_rgb_factors(FAMILIES.get("sd15"))


def test_an_unknown_family_falls_back_on_its_channel_count():
    other = dataclasses.replace(FAMILIES.get("sd3"), id="someday")
    assert latent_rgb_factors(other) == latent_rgb_factors(FAMILIES.get("sd3"))
    assert latent_rgb_factors(dataclasses.replace(other, latent_channels=32)) is None


@pytest.mark.parametrize(("family_id", "channels"), [("sd15", 4), ("sdxl", 4), ("sd3", 16)])
def test_preview_is_an_rgb_image_eight_times_the_latent(family_id, channels):
    image = latents_to_preview(latents(channels, 8, 12), FAMILIES.get(family_id))
    assert image.mode == "RGB" and image.size == (96, 64)


def test_preview_is_capped_at_max_side_keeping_the_aspect():
    image = latents_to_preview(latents(4, 128, 64), FAMILIES.get("sd15"), max_side=512)
    assert image.size == (256, 512)


def test_preview_matches_the_linear_projection():
    lat = latents(4, 2, 2)
    matrix, bias = latent_rgb_factors(FAMILIES.get("sdxl"))
    expected = ((torch.einsum("chw,cr->hwr", lat[0], torch.tensor(matrix)) + torch.tensor(bias) + 1) / 2).clamp(0, 1)
    image = np.asarray(latents_to_preview(lat, FAMILIES.get("sdxl"), max_side=2))
    assert np.abs(image.astype(float) - expected.numpy() * 255).max() <= 0.5


@pytest.mark.parametrize(("family_id", "channels"), [("sd15", 4), ("sd3", 16)])
def test_different_latents_give_different_previews(family_id, channels):
    family = FAMILIES.get(family_id)
    first = np.asarray(latents_to_preview(latents(channels, seed=1), family))
    second = np.asarray(latents_to_preview(latents(channels, seed=2), family))
    assert not np.array_equal(first, second)


def test_preview_shows_the_first_image_of_the_batch():
    family = FAMILIES.get("sd15")
    batch = latents(4, seed=3, batch=2)
    assert np.array_equal(
        np.asarray(latents_to_preview(batch, family)), np.asarray(latents_to_preview(batch[:1], family))
    )


def test_preview_accepts_half_precision_latents():
    image = latents_to_preview(latents(16).to(torch.bfloat16), FAMILIES.get("sd3"))
    assert image.size == (64, 64)


def test_latents_without_factors_still_give_a_preview():
    family = dataclasses.replace(FAMILIES.get("sd15"), id="someday", latent_channels=8)
    image = latents_to_preview(latents(8), family)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert len(set(np.asarray(image).ravel().tolist())) > 1


def test_preview_rejects_latents_of_the_wrong_rank():
    with pytest.raises(ValueError, match="latents must be"):
        latents_to_preview(torch.zeros(4, 8), FAMILIES.get("sd15"))


def test_preview_of_128px_latents_is_cheap():
    family, lat = FAMILIES.get("sdxl"), latents(4, 128, 128)
    latents_to_preview(lat, family)  # warm-up
    best = min(_timed(lambda: latents_to_preview(lat, family)) for _ in range(5))
    print(f"preview of 4x128x128 latents: {best * 1000:.2f} ms")
    assert best < 0.05  # typically ~1 ms; the bound only catches a pathological slowdown


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start
