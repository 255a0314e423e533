"""Seeds and noise: A1111's seed order, per-image generators, variation seeds, CPU/GPU rng."""

from __future__ import annotations

import random

import pytest
import torch

from webui.generation.noise import SEED_MAX, image_seeds, make_generators, make_noise, resolve_seed, slerp

SHAPE = (4, 8, 8)


def test_resolve_seed_keeps_a_given_seed():
    assert resolve_seed(1234) == 1234


def test_resolve_seed_minus_one_draws_a_different_seed_each_call():
    seeds = {resolve_seed(-1) for _ in range(5)}
    assert len(seeds) > 1
    assert all(0 <= s <= SEED_MAX for s in seeds)


def test_resolve_seed_uses_the_given_rng():
    assert resolve_seed(-1, random.Random(7)) == resolve_seed(-1, random.Random(7))


def test_resolve_seed_rejects_other_negative_values():
    with pytest.raises(ValueError, match="-1"):
        resolve_seed(-5)


@pytest.mark.parametrize(
    ("batch_size", "n_iter", "expected"),
    [
        (1, 1, [(100, 7)]),
        (3, 1, [(100, 7), (101, 8), (102, 9)]),
        (2, 2, [(100, 7), (101, 8), (102, 9), (103, 10)]),
        (1, 3, [(100, 7), (101, 8), (102, 9)]),
    ],
)
def test_image_seeds_count_up_across_batch_and_iterations(batch_size, n_iter, expected):
    assert image_seeds(100, 7, 0.0, batch_size, n_iter) == expected


def test_image_seeds_with_variation_keep_the_seed_and_count_up_the_subseed():
    # A1111: with a variation strength every image shares the main seed; only subseeds vary.
    assert image_seeds(100, 7, 0.3, 2, 2) == [(100, 7), (100, 8), (100, 9), (100, 10)]


def test_image_seeds_resolve_a_random_subseed_once_when_variation_is_on():
    pairs = image_seeds(100, -1, 0.5, 3, 1, rng=random.Random(3))
    first_sub = pairs[0][1]
    assert first_sub >= 0
    assert [sub for _, sub in pairs] == [first_sub, first_sub + 1, first_sub + 2]


def test_image_seeds_draw_a_random_subseed_even_without_variation():
    # A1111 draws the subseed whatever the strength and reports it; only the noise ignores it at 0.
    pairs = image_seeds(100, -1, 0.0, 2, 1, rng=random.Random(3))
    first_sub = pairs[0][1]
    assert first_sub >= 0 and pairs == [(100, first_sub), (101, first_sub + 1)]


def test_image_seeds_refuse_an_unresolved_seed():
    with pytest.raises(ValueError, match="resolve_seed"):
        image_seeds(-1, 0, 0.0, 1, 1)


def test_same_seeds_give_bit_identical_noise():
    assert torch.equal(make_noise(SHAPE, [5, 6]), make_noise(SHAPE, [5, 6]))


def test_different_seeds_give_different_noise():
    assert not torch.equal(make_noise(SHAPE, [5]), make_noise(SHAPE, [6]))


def test_noise_has_one_image_per_seed():
    assert make_noise(SHAPE, [1, 2, 3]).shape == (3, *SHAPE)


def test_batch_item_k_equals_the_seed_generated_alone():
    batch = make_noise(SHAPE, [40, 41, 42])
    for k, seed in enumerate([40, 41, 42]):
        assert torch.equal(batch[k], make_noise(SHAPE, [seed])[0])


def test_noise_is_torch_randn_of_the_seed():
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(9))
    assert torch.equal(make_noise(SHAPE, [9])[0], expected)


def test_cpu_rng_equals_noise_drawn_on_a_cpu_generator():
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(11))
    assert torch.equal(make_noise(SHAPE, [11], rng="CPU")[0], expected)


def test_noise_is_drawn_in_float32_then_cast():
    half = make_noise(SHAPE, [3], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, make_noise(SHAPE, [3]).to(torch.bfloat16))


def test_unknown_rng_source_is_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="GPU, CPU"):
        make_noise(SHAPE, [1], rng="NV")


def test_subseed_strength_zero_is_exactly_the_seed_noise():
    assert torch.equal(make_noise(SHAPE, [5], [9], 0.0), make_noise(SHAPE, [5]))


def test_subseed_strength_one_is_exactly_the_subseed_noise():
    assert torch.equal(make_noise(SHAPE, [5], [9], 1.0), make_noise(SHAPE, [9]))


def test_half_variation_lies_between_and_keeps_the_norm():
    shape = (4, 32, 32)
    seed_noise, sub_noise = make_noise(shape, [5]), make_noise(shape, [9])
    mixed = make_noise(shape, [5], [9], 0.5)
    assert not torch.equal(mixed, seed_noise) and not torch.equal(mixed, sub_noise)
    # equidistant from both ends, and the norm of a slerp (a lerp would shrink it to ~0.71)
    assert torch.dist(mixed, seed_noise).item() == pytest.approx(torch.dist(mixed, sub_noise).item(), rel=0.05)
    assert (mixed.norm() / seed_noise.norm()).item() == pytest.approx(1.0, abs=0.05)


def test_variation_needs_one_subseed_per_seed():
    with pytest.raises(ValueError, match="one subseed per seed"):
        make_noise(SHAPE, [1, 2], [3], 0.5)


def test_slerp_of_parallel_inputs_is_a_lerp():
    low = torch.ones(2, 3, 4)
    assert torch.allclose(slerp(0.25, low, 2 * low), 1.25 * low)


def test_generators_continue_after_the_initial_noise():
    gens = make_generators([8, 9])
    noise = make_noise(SHAPE, [8, 9], generators=gens)
    assert torch.equal(noise, make_noise(SHAPE, [8, 9]))
    # the pipeline's next draw from gens[0] continues seed 8's stream, not a repeat of it
    reference = torch.Generator("cpu").manual_seed(8)
    torch.randn(SHAPE, generator=reference)
    next_draw = torch.randn(SHAPE, generator=gens[0])
    assert torch.equal(next_draw, torch.randn(SHAPE, generator=reference))
    assert not torch.equal(next_draw, noise[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_rng_on_cuda_matches_cpu_noise():
    on_cuda = make_noise(SHAPE, [11, 12], device="cuda", rng="CPU")
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), make_noise(SHAPE, [11, 12]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_rng_on_cuda_is_reproducible_and_per_seed():
    batch = make_noise(SHAPE, [11, 12], device="cuda", rng="GPU")
    assert torch.equal(batch, make_noise(SHAPE, [11, 12], device="cuda", rng="GPU"))
    assert torch.equal(batch[1], make_noise(SHAPE, [12], device="cuda")[0])
    assert not torch.equal(batch.cpu(), make_noise(SHAPE, [11, 12]))
