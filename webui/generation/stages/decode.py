"""Stage "decode": the last pass's latents to images with its pipeline's VAE (``passes.decode_guarded``:
an fp16 overflow is retried in fp32; NaN latents fail the job with a message instead of a black image)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webui.generation import passes

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job
    from webui.generation.service import JobContext


class Decode:
    name = "decode"

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        batch.images = passes.decode_guarded(batch.decode_pipe, batch.latents)
