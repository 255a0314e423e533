"""Seeds and initial noise, with A1111's semantics.

Why a module of its own: A1111 users expect a seed to name an image. Each image's noise comes from
its own generator seeded with its own seed, so image k of a batch is the same image as seed+k made
alone, and a batch size never changes what a seed means. Variation seeds ("subseeds") blend two
such noises by spherical interpolation, as A1111 does.

Reproducibility: the same seeds give bit-identical noise on the same device. Noise is always drawn
in float32 and cast afterwards, so the dtype does not change the values that were drawn. With
``rng="CPU"`` the noise is drawn on a CPU generator and then moved, so a seed gives the same noise
on any device (CUDA's generator gives different numbers than the CPU's for the same seed).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

SEED_MAX = 2**32 - 1
# Where noise is drawn: "GPU" = on the compute device (A1111's default), "CPU" = on the CPU, then moved.
RNG_SOURCES = ("GPU", "CPU")
# Above this cosine the two noises are nearly parallel and slerp's division by sin(omega) is unstable.
_PARALLEL_DOT = 0.9995


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """-1 means "random": return a fresh seed in [0, 2**32 - 1]; any other seed is returned as is.

    Pass ``rng`` (a ``random.Random``) to make the draw reproducible in tests.
    """
    if seed == -1:
        return (rng or random.Random()).randint(0, SEED_MAX)
    if seed < 0:
        raise ValueError(f"seed must be -1 (random) or a non-negative integer, got {seed}")
    return int(seed)


def image_seeds(
    seed: int,
    subseed: int,
    subseed_strength: float,
    batch_size: int,
    n_iter: int,
    *,
    rng: random.Random | None = None,
) -> list[tuple[int, int]]:
    """One ``(seed, subseed)`` per image, in generation order (batch 0's images first), as A1111.

    The caller resolves ``seed`` with :func:`resolve_seed` first (it appears in the infotext and the
    API's ``seed``). Without variation (strength 0) image k gets ``seed + k``. With variation
    (strength > 0) A1111 keeps the main seed for every image and varies the subseed instead: image k
    gets ``(seed, subseed + k)``, so a batch shows variations of one image. ``subseed`` -1 is
    resolved at random once, whatever the strength: A1111 draws it and reports it (``all_subseeds``
    counts up from it) even when the noise does not use it.
    """
    if seed < 0:
        raise ValueError(f"seed must be resolved before image_seeds (call resolve_seed first), got {seed}")
    if batch_size < 1 or n_iter < 1:
        raise ValueError(f"batch_size and n_iter must be at least 1, got {batch_size} and {n_iter}")
    _check_strength(subseed_strength)
    total = batch_size * n_iter
    base_sub = resolve_seed(subseed, rng)
    if subseed_strength > 0:
        return [(seed, base_sub + k) for k in range(total)]
    return [(seed + k, base_sub + k) for k in range(total)]


def make_generators(seeds: Sequence[int], *, device: Any = "cpu", rng: str = "GPU") -> list[torch.Generator]:
    """One generator per image, seeded with its seed, on the device ``rng`` names.

    Pass the same list to :func:`make_noise` (``generators=``) and then to the pipeline's
    ``generator=``: the sampler's per-step noise then continues each image's own stream, as in
    A1111, instead of restarting it (which would repeat the initial noise at the first step).
    """
    import torch

    gen_device = _generator_device(device, rng)
    return [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]


def make_noise(
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    rng: str = "GPU",
    generators: Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Initial noise ``(len(seeds), C, H, W)`` on ``device`` in ``dtype`` (float32 when None).

    Image k's noise is ``randn(shape)`` from a generator seeded with ``seeds[k]`` (or drawn from
    ``generators[k]``, which advances it). With ``subseed_strength`` > 0 it is
    ``slerp(subseed_strength, noise(seeds[k]), noise(subseeds[k]))``: 0 gives exactly the seed's
    noise, 1 exactly the subseed's.
    """
    import torch

    if len(shape) != 3:
        raise ValueError(f"shape must be (channels, height, width) for one image, got {tuple(shape)}")
    if not seeds:
        raise ValueError("seeds is empty; pass one seed per image")
    _check_strength(subseed_strength)
    if generators is not None and len(generators) != len(seeds):
        raise ValueError(f"got {len(generators)} generators for {len(seeds)} seeds; pass one per seed")
    if subseed_strength > 0 and (subseeds is None or len(subseeds) < len(seeds)):
        got = 0 if subseeds is None else len(subseeds)
        raise ValueError(f"subseed_strength > 0 needs one subseed per seed: got {got} for {len(seeds)} seeds")
    gens = list(generators) if generators is not None else make_generators(seeds, device=device, rng=rng)
    images = []
    for k, gen in enumerate(gens):
        noise = _draw(shape, gen, device)
        if subseed_strength > 0:
            (sub_gen,) = make_generators([subseeds[k]], device=device, rng=rng)
            noise = slerp(subseed_strength, noise, _draw(shape, sub_gen, device))
        images.append(noise)
    return torch.stack(images).to(dtype=dtype or torch.float32)


def slerp(val: float, low: Tensor, high: Tensor, dim: int = 1) -> Tensor:
    """Spherical interpolation from ``low`` (val 0) to ``high`` (val 1), slice by slice along ``dim``.

    Why not a plain lerp: two independent Gaussian noises are nearly orthogonal, so their lerp at
    0.5 has only ~0.71 of their norm (a washed-out image); slerp keeps the norm. The default
    ``dim=1`` on a ``(C, H, W)`` noise is where A1111 normalises, so variation noise matches it.
    val 0 and 1 return copies of ``low`` and ``high`` exactly.
    """
    import torch

    if val <= 0:
        return low.clone()
    if val >= 1:
        return high.clone()
    low_dir = low / torch.linalg.vector_norm(low, dim=dim, keepdim=True)
    high_dir = high / torch.linalg.vector_norm(high, dim=dim, keepdim=True)
    dot = (low_dir * high_dir).sum(dim=dim, keepdim=True).clamp(-1.0, 1.0)
    if dot.mean() > _PARALLEL_DOT:
        return low * (1.0 - val) + high * val
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / sin_omega) * low + (torch.sin(val * omega) / sin_omega) * high


def _draw(shape: tuple[int, int, int], gen: torch.Generator, device: Any) -> Tensor:
    """randn in float32 on the generator's device, then moved to ``device``."""
    import torch

    return torch.randn(tuple(shape), generator=gen, device=gen.device, dtype=torch.float32).to(device)


def _generator_device(device: Any, rng: str) -> torch.device:
    import torch

    if rng not in RNG_SOURCES:
        raise ValueError(f"rng must be one of {', '.join(RNG_SOURCES)}, got {rng!r}")
    return torch.device("cpu") if rng == "CPU" else torch.device(device)


def _check_strength(strength: float) -> None:
    if not (0.0 <= strength <= 1.0) or math.isnan(strength):
        raise ValueError(f"subseed_strength must be between 0 and 1, got {strength}")
