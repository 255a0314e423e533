"""img2img/inpaint image operations: resize modes, masks, fill, only-masked crop and paste-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.generation.img_ops import (
    crop_region,
    expand_to_aspect,
    fill_masked,
    latent_masked_content,
    mask_is_empty,
    mask_to_latent,
    paste_back,
    prepare_mask,
    resize_image,
)

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def quadrants(width: int, height: int) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    half_w, half_h = width // 2, height // 2
    draw.rectangle((0, 0, half_w - 1, half_h - 1), fill=RED)
    draw.rectangle((half_w, 0, width - 1, half_h - 1), fill=GREEN)
    draw.rectangle((0, half_h, half_w - 1, height - 1), fill=BLUE)
    draw.rectangle((half_w, half_h, width - 1, height - 1), fill=YELLOW)
    return image


def bordered(width: int, height: int, border: int) -> Image.Image:
    """Red with green bands of ``border`` px along the long sides' ends (left/right or top/bottom)."""
    image = Image.new("RGB", (width, height), RED)
    draw = ImageDraw.Draw(image)
    if width >= height:
        draw.rectangle((0, 0, border - 1, height - 1), fill=GREEN)
        draw.rectangle((width - border, 0, width - 1, height - 1), fill=GREEN)
    else:
        draw.rectangle((0, 0, width - 1, border - 1), fill=GREEN)
        draw.rectangle((0, height - border, width - 1, height - 1), fill=GREEN)
    return image


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """ "L" mask, white inside ``box`` (right/bottom exclusive)."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


def values(image: Image.Image) -> list[int]:
    return np.asarray(image).ravel().tolist()


def near(pixel, colour, tol: int = 6) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


# --- resize modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("source", [(200, 100), (100, 200), (64, 64), (33, 71)])
def test_resize_gives_exactly_the_target_size_in_rgb(mode, source):
    out = resize_image(quadrants(*source), 96, 64, mode)
    assert out.size == (96, 64)
    assert out.mode == "RGB"


def test_just_resize_stretches_the_whole_image():
    out = resize_image(bordered(200, 100, 20), 100, 100, 0)
    assert near(out.getpixel((2, 50)), GREEN)  # the border survives, squeezed to 10 px
    assert near(out.getpixel((97, 50)), GREEN)
    assert near(out.getpixel((50, 50)), RED)


@pytest.mark.parametrize("source", [(200, 100), (100, 200)])
def test_crop_and_resize_cuts_the_excess_off_the_long_side(source):
    out = np.asarray(resize_image(bordered(*source, border=40), 100, 100, 1))
    # the 40 px green bands lie outside the centred 100 px crop of the 200 px side
    assert np.abs(out.astype(int) - np.array(RED)).max() <= 6


def test_crop_and_resize_keeps_the_centre_when_upscaling():
    out = resize_image(quadrants(40, 20), 80, 80, 1)
    assert near(out.getpixel((5, 5)), RED)
    assert near(out.getpixel((75, 75)), YELLOW)


def test_resize_and_fill_fits_a_wide_image_and_stretches_its_edge_rows():
    out = resize_image(quadrants(200, 100), 100, 100, 2)
    # the image occupies rows 25..74; the bands repeat its first and last rows
    assert near(out.getpixel((10, 2)), RED)
    assert near(out.getpixel((90, 2)), GREEN)
    assert near(out.getpixel((10, 97)), BLUE)
    assert near(out.getpixel((90, 97)), YELLOW)
    assert near(out.getpixel((10, 30)), RED)


def test_resize_and_fill_fits_a_tall_image_and_stretches_its_edge_columns():
    out = resize_image(quadrants(100, 200), 100, 100, 2)
    assert near(out.getpixel((2, 10)), RED)
    assert near(out.getpixel((97, 10)), GREEN)
    assert near(out.getpixel((2, 90)), BLUE)
    assert near(out.getpixel((97, 90)), YELLOW)


def test_resize_and_fill_leaves_no_black_band_on_odd_margins():
    out = np.asarray(resize_image(Image.new("RGB", (200, 99), RED), 100, 100, 2))
    assert np.abs(out.astype(int) - np.array(RED)).max() <= 6


def test_latent_upscale_mode_resizes_like_just_resize():
    image = quadrants(50, 30)
    assert np.array_equal(np.asarray(resize_image(image, 64, 64, 3)), np.asarray(resize_image(image, 64, 64, 0)))


def test_resize_flattens_transparency_onto_white():
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert resize_image(image, 10, 10, 0).getpixel((5, 5)) == (255, 255, 255)


def test_resize_rejects_an_unknown_mode_and_names_the_valid_ones():
    with pytest.raises(ValueError, match="Crop and resize"):
        resize_image(quadrants(10, 10), 8, 8, 7)


# --- masks ----------------------------------------------------------------------------------------


def test_prepare_mask_binarises_a_grey_mask():
    mask = Image.fromarray(np.array([[0, 100, 200, 255]], dtype=np.uint8), "L")
    assert values(prepare_mask(mask)) == [0, 0, 255, 255]


def test_prepare_mask_keeps_grey_levels_without_binarize():
    mask = Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint8), "L")
    assert values(prepare_mask(mask, binarize=False)) == [0, 100, 200]


def test_prepare_mask_reads_a_1_bit_mask():
    mask = Image.new("1", (4, 1), 0)
    mask.putpixel((2, 0), 1)
    out = prepare_mask(mask)
    assert out.mode == "L" and values(out) == [0, 0, 255, 0]


def test_prepare_mask_reads_an_rgb_mask_by_luminance():
    mask = Image.new("RGB", (3, 1), (0, 0, 0))
    mask.putpixel((1, 0), (255, 255, 255))
    assert values(prepare_mask(mask)) == [0, 255, 0]


def test_prepare_mask_reads_a_drawn_layer_by_its_alpha():
    # strokes in any brush colour on a transparent canvas: red would be too dark as luminance
    layer = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    layer.putpixel((0, 0), (255, 0, 0, 255))
    assert values(prepare_mask(layer)) == [255, 0, 0]


def test_prepare_mask_reads_an_opaque_rgba_mask_by_luminance():
    mask = Image.new("RGBA", (3, 1), (0, 0, 0, 255))
    mask.putpixel((2, 0), (255, 255, 255, 255))
    assert values(prepare_mask(mask)) == [0, 0, 255]


def test_prepare_mask_inverts():
    mask = rect_mask((4, 1), (0, 0, 1, 1))
    assert values(prepare_mask(mask, invert=True)) == [0, 255, 255, 255]


def test_prepare_mask_blur_softens_the_edge_only():
    out = np.asarray(prepare_mask(rect_mask((64, 64), (16, 16, 48, 48)), blur=4))
    assert out[32, 32] == 255  # the middle stays fully masked
    assert out[0, 0] == 0  # far outside stays unmasked
    edge = out[32, 10:22]
    assert ((edge > 0) & (edge < 255)).sum() >= 4  # a soft ramp across the old hard edge


def test_mask_is_empty_tells_a_black_mask_from_a_drawn_one():
    assert mask_is_empty(Image.new("L", (8, 8), 0))
    assert not mask_is_empty(rect_mask((8, 8), (2, 2, 3, 3)))


# --- fill -----------------------------------------------------------------------------------------


def fill_scene() -> tuple[Image.Image, Image.Image]:
    """Green left half, blue right half, a red square in the middle that the mask covers."""
    image = Image.new("RGB", (64, 64), GREEN)
    ImageDraw.Draw(image).rectangle((32, 0, 63, 63), fill=BLUE)
    ImageDraw.Draw(image).rectangle((20, 20, 43, 43), fill=RED)
    return image, rect_mask((64, 64), (20, 20, 44, 44))


def test_fill_masked_keeps_unmasked_pixels_identical():
    image, mask = fill_scene()
    out = np.asarray(fill_masked(image, mask))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(image)[outside])


def test_fill_masked_removes_the_original_content_under_the_mask():
    image, mask = fill_scene()
    inside = np.asarray(fill_masked(image, mask))[20:44, 20:44]
    assert inside[..., 0].max() <= 5  # no red left: the surroundings have none


def test_fill_masked_smears_in_the_nearby_colours():
    image, mask = fill_scene()
    out = fill_masked(image, mask)
    left, right = out.getpixel((21, 32)), out.getpixel((42, 32))
    assert left[1] > left[2]  # near the green side: greener than blue
    assert right[2] > right[1]  # near the blue side: bluer than green


def test_fill_masked_with_everything_masked_gives_a_neutral_image():
    out = np.asarray(fill_masked(Image.new("RGB", (16, 16), RED), Image.new("L", (16, 16), 255)))
    assert np.all(np.abs(out.astype(int) - 128) <= 1)


# --- only masked: crop region, aspect, paste back -------------------------------------------------


@pytest.mark.parametrize(
    ("box", "padding", "expected"),
    [
        ((30, 20, 50, 40), 5, (25, 15, 55, 45)),
        ((30, 20, 50, 40), 0, (30, 20, 50, 40)),
        ((0, 70, 10, 80), 8, (0, 62, 18, 80)),  # touches the left and bottom edges
        ((95, 0, 100, 3), 32, (63, 0, 100, 35)),  # touches the right and top edges
    ],
)
def test_crop_region_pads_the_mask_bbox_inside_the_image(box, padding, expected):
    assert crop_region(rect_mask((100, 80), box), padding) == expected


def test_crop_region_of_an_empty_mask_is_the_whole_image():
    assert crop_region(Image.new("L", (100, 80), 0), 16) == (0, 0, 100, 80)


@pytest.mark.parametrize(
    ("box", "target", "image_size", "expected"),
    [
        ((30, 20, 50, 40), (128, 64), (100, 80), (20, 20, 60, 40)),  # square -> 2:1, grows both sides
        ((40, 45, 60, 55), (512, 512), (100, 100), (40, 40, 60, 60)),  # wide -> square, grows height
        ((0, 0, 10, 30), (512, 512), (100, 100), (0, 0, 30, 30)),  # at the left edge: grows right only
        ((90, 50, 100, 60), (96, 32), (100, 100), (70, 50, 100, 60)),  # at the right edge: slides left
        ((0, 0, 50, 10), (64, 64), (50, 20), (0, 0, 50, 20)),  # image too short: whole height
        ((10, 10, 50, 30), (64, 32), (100, 100), (10, 10, 50, 30)),  # already 2:1: unchanged
    ],
)
def test_expand_to_aspect_matches_hand_computed_boxes(box, target, image_size, expected):
    assert expand_to_aspect(box, *target, image_size) == expected


def test_expand_to_aspect_rejects_an_empty_box():
    with pytest.raises(ValueError, match="empty"):
        expand_to_aspect((5, 5, 5, 9), 64, 64, (10, 10))


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_paste_back_whole_picture_keeps_unmasked_pixels_identical():
    original, generated = random_image((64, 64), 1), random_image((64, 64), 2)
    mask = prepare_mask(rect_mask((64, 64), (16, 16, 48, 48)), blur=4)
    out = np.asarray(paste_back(original, generated, mask))
    m = np.asarray(mask)
    assert np.array_equal(out[m == 0], np.asarray(original)[m == 0])
    assert np.array_equal(out[m >= 128], np.asarray(generated)[m >= 128])  # at least half masked: generated


def test_paste_back_only_masked_puts_the_generation_in_the_box():
    original = random_image((100, 100), 3)
    mask = rect_mask((100, 100), (30, 30, 50, 50))
    box = expand_to_aspect(crop_region(mask, 10), 64, 64, original.size)
    out = paste_back(original, Image.new("RGB", (64, 64), RED), mask, box)
    assert out.size == original.size
    arr, m = np.asarray(out), np.asarray(mask)
    assert np.array_equal(arr[m == 0], np.asarray(original)[m == 0])
    assert np.all(arr[m == 255] == np.array(RED))


def test_paste_back_whole_picture_refuses_a_different_size():
    with pytest.raises(ValueError, match="Only masked"):
        paste_back(random_image((64, 64), 1), random_image((32, 32), 2), Image.new("L", (64, 64)))


# --- latent masked content ------------------------------------------------------------------------


def half_mask(batch: int = 1) -> torch.Tensor:
    mask = torch.zeros(batch, 1, 4, 4)
    mask[..., :2] = 1.0  # left half repaints
    return mask


@pytest.mark.parametrize(
    ("mode", "left", "right"),
    [(0, 3.0, 3.0), (1, 3.0, 3.0), (2, -2.0, 3.0), (3, 0.0, 3.0)],
)
def test_latent_masked_content_per_mode(mode, left, right):
    latents, noise = torch.full((2, 4, 4, 4), 3.0), torch.full((2, 4, 4, 4), -2.0)
    out = latent_masked_content(latents, half_mask(), mode, noise)
    assert out.shape == latents.shape
    assert torch.all(out[..., :2] == left) and torch.all(out[..., 2:] == right)


def test_latent_masked_content_rejects_an_unknown_mode_and_names_the_valid_ones():
    with pytest.raises(ValueError, match="latent nothing"):
        latent_masked_content(torch.zeros(1, 4, 4, 4), half_mask(), 5, None)


def test_latent_noise_needs_noise_of_the_latents_shape():
    with pytest.raises(ValueError, match="shape"):
        latent_masked_content(torch.zeros(1, 4, 4, 4), half_mask(), 2, torch.zeros(1, 4, 2, 2))


def test_mask_to_latent_is_a_1x1xhxw_float_mask():
    latent = mask_to_latent(rect_mask((64, 64), (0, 0, 32, 64)), 8, 8)
    assert latent.shape == (1, 1, 8, 8) and latent.dtype == torch.float32
    assert torch.all(latent[..., :4] == 1.0) and torch.all(latent[..., 4:] == 0.0)
