"""Stage "hires fix": the first pass upscaled (in latent space, or decoded and resized), then a second img2img pass.

A1111's rules: the target size from ``hr_scale`` or ``hr_resize_x/y``; the second pass runs
``hr_second_pass_steps`` (0: the first pass's) at ``denoising_strength``, with its own sampler,
schedule type and prompts where the request gives them. An interrupt in the first pass returns the
first pass's image (this stage never starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from webui.generation import passes
from webui.generation.requests import HR_UPSCALERS, hires_size

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job
    from webui.generation.service import JobContext


class HiresFix:
    name = "hires fix"

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        from webui.generation.img_ops import resize_image
        from webui.generation.plan import PassSpec
        from webui.generation.stages.denoise import pass_inputs
        from webui.generation.stages.encode import encode_pass
        from webui.generation.stages.latents import generators_for

        req, checked = job.req, job.checked
        width, height = hires_size(job.width, job.height, req)
        if req.hr_upscaler in passes.LATENT_UPSCALE_MODES:
            image = passes.upscale_latents(batch.latents, width, height, req.hr_upscaler)
        elif job.parts.upscalers is not None and req.hr_upscaler not in HR_UPSCALERS:
            from webui.upscale.hires import upscale_decoded

            decoded = passes.decode_guarded(batch.decode_pipe, batch.latents)
            image = upscale_decoded(job.parts.upscalers, decoded, width, height, req.hr_upscaler, ctx)
        else:
            decoded = passes.decode_guarded(batch.decode_pipe, batch.latents)
            image = [resize_image(im, width, height, 0) for im in decoded]
        steps = passes.steps_for_strength(req.hr_second_pass_steps or job.steps, req.denoising_strength)
        spec = PassSpec(
            "img2img",
            "hires fix",
            n=len(batch.seeds),
            seed=batch.seeds[0][0],
            steps=steps,
            sampler=job.hr_sampler,
            schedule=job.hr_schedule,
            prompt=checked.hr_prompt,
            negative=checked.hr_negative,
            width=width,
            height=height,
            seeds=tuple(s for s, _ in batch.seeds),
        )
        pipe = job.model.pipeline("img2img")
        inputs = pass_inputs(job, spec, ctx, pipe, job.family, encode_pass(job, spec, pipe, job.family))
        run = passes.steps_run(steps, req.denoising_strength)
        ctx.begin_pass(run, "hires fix")
        batch.latents = passes.img2img(
            inputs, image, req.denoising_strength, generators_for(job, batch.seeds), output_type="latent"
        )
        batch.decode_pipe = pipe
        ctx.finish_pass(run)
