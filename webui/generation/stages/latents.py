"""Stage "prepare latents": what the first pass starts from, and the generators that continue each image's noise.

txt2img starts from noise drawn per seed (and variation seed); img2img from the init image at the
output size; inpaint from its work area and masked content (``stages/inpaint.py``). The same
generators go to the pipeline, so an ancestral sampler's per-step noise continues each image's own
stream (A1111) instead of repeating the initial draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job
    from webui.generation.service import JobContext


def noise_for(job: Job, seeds: list[tuple[int, int]], width: int, height: int, pipe: Any) -> tuple[Any, list]:
    """Initial noise of each image from its seed (and variation seed), plus the generators that drew it."""
    from webui.generation.noise import make_generators, make_noise
    from webui.memory.apply import execution_device

    # Under offload the weights sit on the CPU but the pipeline computes on the GPU: draw there,
    # in the compute dtype (an fp8-stored denoiser still computes in it).
    device = execution_device(pipe)
    firsts = [s for s, _ in seeds]
    generators = make_generators(firsts, device=device, rng=job.req.rng)
    noise = make_noise(
        (job.family.latent_channels, height // 8, width // 8),
        firsts,
        [sub for _, sub in seeds],
        job.req.subseed_strength,
        device=device,
        dtype=job.model.dtype,
        rng=job.req.rng,
        generators=generators,
    )
    return noise, generators


def generators_for(job: Job, seeds: list[tuple[int, int]]) -> list[Any]:
    """Fresh generators of the batch's seeds (a pass that starts from an image, or a second pass)."""
    from webui.generation.noise import make_generators

    return make_generators([s for s, _ in seeds], device=job.model.device, rng=job.req.rng)


class PrepareLatents:
    name = "prepare latents"

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        req = job.req
        if req.task == "txt2img":
            batch.noise, batch.generators = noise_for(job, batch.seeds, job.width, job.height, batch.pipe)
        elif req.task == "img2img":
            from webui.generation.img_ops import resize_image

            init = resize_image(req.init_image.convert("RGB"), job.width, job.height, req.resize_mode)
            batch.image = [init] * len(batch.seeds)
            batch.generators = generators_for(job, batch.seeds)
        else:
            from webui.generation.stages.inpaint import prepare

            prepare(job, batch)
