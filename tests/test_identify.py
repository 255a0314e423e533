"""Identifying models from the safetensors header alone (stripped files: real keys and shapes)."""

from __future__ import annotations

import time

import pytest

from tests import headers as H
from webui.models.identify import UnsupportedModelError, identify_checkpoint, identify_header
from webui.models.safetensors_header import read_header

CASES = [
    # fixture, family, in_channels, components
    (H.SD15, "sd15", 4, {"unet", "clip_l", "vae"}),
    (H.SD15_INPAINT, "sd15", 9, {"unet", "clip_l", "vae"}),
    (H.SD2, "sd2", 4, {"unet", "openclip_h"}),
    (H.SDXL, "sdxl", 4, {"unet", "clip_l", "clip_g", "vae"}),
    (H.SDXL_INPAINT, "sdxl", 9, {"unet", "clip_l", "clip_g", "vae"}),
    (H.SDXL_UNET_ONLY, "sdxl", 4, {"unet"}),
    (H.REFINER, "sdxl_refiner", 4, {"unet", "clip_g"}),
    (H.SD3_MEDIUM, "sd3", 16, {"transformer"}),
    (H.SD3_INCL_CLIPS_T5, "sd3", 16, {"transformer", "clip_l", "clip_g", "t5xxl", "vae"}),
    (H.SD35_MEDIUM, "sd35_medium", 16, {"transformer"}),
    (H.SD35_LARGE, "sd35_large", 16, {"transformer"}),
    (H.SD3_BARE, "sd3", 16, {"transformer"}),
]


@pytest.mark.parametrize("shapes,family,in_ch,components", CASES)
def test_family_and_parts_from_header(tmp_path, shapes, family, in_ch, components):
    path = H.write_safetensors(tmp_path / "model.safetensors", shapes)
    det = identify_checkpoint(read_header(path))
    assert (det.family, det.in_channels, set(det.components)) == (family, in_ch, components)
    assert det.inpaint == (in_ch == 9)


@pytest.mark.parametrize(
    "shapes,expected",
    [
        (H.FLUX, "Flux"),
        (H.KOHYA_LORA, "LoRA"),
        (H.VAE, "VAE"),
        (H.T5_FILE, "text encoder"),
        ({"something.else": (3,)}, "not a Stable Diffusion checkpoint"),
    ],
)
def test_unsupported_files_say_what_they_seem_to_be(tmp_path, shapes, expected):
    path = H.write_safetensors(tmp_path / "odd.safetensors", shapes)
    with pytest.raises(UnsupportedModelError) as err:
        identify_checkpoint(read_header(path))
    assert expected in str(err.value)
    assert "odd.safetensors" in str(err.value)


@pytest.mark.parametrize(
    "shapes,kind,info",
    [
        (H.SD15, "checkpoint", {}),
        (H.KOHYA_LORA, "lora", {}),
        (H.VAE, "vae", {"latent_channels": 4}),
        (H.CLIP_L_FILE, "text_encoder", {"slot": "clip_l"}),
        (H.T5_FILE, "text_encoder", {"slot": "t5xxl"}),
    ],
)
def test_identify_sorts_files_by_kind(tmp_path, shapes, kind, info):
    found = identify_header(read_header(H.write_safetensors(tmp_path / "f.safetensors", shapes)))
    assert found.kind == kind
    assert dict(found.info) == info


def test_detection_reads_no_tensor_data(tmp_path):
    # A "6 GB" SDXL file (sparse): detection must only touch the header.
    shapes = dict(H.SDXL)
    shapes[H.DM + "huge"] = (1024, 1024, 1024, 3)
    path = H.write_safetensors(tmp_path / "big.safetensors", shapes)
    assert path.stat().st_size > 6 * 2**30
    t0 = time.perf_counter()
    assert identify_checkpoint(read_header(path)).family == "sdxl"
    assert time.perf_counter() - t0 < 0.5
