"""Stage "refiner hand-off": the SDXL refiner (or another SDXL model) runs the last steps of the first pass.

The first pass stops at ``refiner_switch_at`` (``denoise``); the refiner continues from its
latents with ``denoising_start`` at the same point, from the generators the first pass used. The
refiner is loaded beside the job's checkpoint once, when the job starts (``load_refiner``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webui.generation import passes
from webui.generation.requests import RequestError

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job
    from webui.generation.service import JobContext


def load_refiner(job: Job) -> Any:
    """The refiner model beside the job's checkpoint (a RefinerModel); RequestError when the families do not fit."""
    req = job.req
    if not job.family.refiners:
        raise RequestError(
            "refiner_checkpoint", f"the refiner hand-off needs an SDXL base model, not {job.family.label}"
        )
    from webui.models.ram_budget import NotEnoughMemoryError

    try:
        refiner = job.model.refiner(job.checked.refiner, "img2img")
    except KeyError as exc:
        raise RequestError("refiner_checkpoint", str(exc).strip("'\"")) from None
    except NotEnoughMemoryError as exc:  # the refiner's load was refused: the answer names its field
        raise type(exc)(str(exc), field="refiner_checkpoint") from None
    if not job.family.accepts_refiner(refiner.family):
        raise RequestError(
            "refiner_checkpoint",
            f"{req.refiner_checkpoint} is {refiner.family.label}; pick an SDXL refiner or base model",
        )
    return refiner


class RefinerHandOff:
    name = "refiner hand-off"

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        from webui.generation.plan import PassSpec
        from webui.generation.stages.denoise import pass_inputs
        from webui.generation.stages.encode import encode_pass

        refiner, switch, steps = job.refiner, job.req.refiner_switch_at, job.steps
        run = max(1, steps - round(steps * switch))
        spec = PassSpec(
            "img2img",
            "refiner",
            n=len(batch.seeds),
            seed=batch.seeds[0][0],
            model=refiner,
            seeds=tuple(s for s, _ in batch.seeds),
            step_offset=steps - run,  # the refiner goes on with the first pass's prompt schedule
        )
        cond = encode_pass(job, spec, refiner.pipeline, refiner.family)
        inputs = pass_inputs(job, spec, ctx, refiner.pipeline, refiner.family, cond)
        ctx.begin_pass(run, "refiner")
        batch.latents = passes.img2img(
            inputs, batch.latents, 1.0, batch.generators, output_type="latent", denoising_start=switch
        )
        ctx.finish_pass(run)
