"""A request as a plan of named stages, and the loop that runs the plan batch by batch.

``plan_for(job)`` picks the stages a checked request needs, in order:

=====================  ==============================================  =================================
stage                  what it does                                    module (``webui/generation/``)
=====================  ==============================================  =================================
encode prompt          prompt embeddings of the first pass (cached)    ``stages/encode.py``
prepare latents        noise and generators, the init image, or the   ``stages/latents.py``
                       inpaint work area and masked content            (``stages/inpaint.py``)
denoise                the first pass's pipeline call                  ``stages/denoise.py``
refiner hand-off       SDXL: the refiner finishes the last steps       ``stages/refiner.py``
hires fix              upscale, then a second img2img pass             ``stages/hires.py``
decode                 latents -> images (fp32 retry, NaN guard)       ``stages/decode.py``
inpaint paste-back     only the masked area changes                    ``stages/inpaint.py``
save                   image hooks, infotext, the file, the result     ``stages/save.py``
=====================  ==============================================  =================================

Every stage but save runs inside the out-of-memory wrapper (``retry_out_of_memory``): after out of memory
the batch runs once more with the next stronger memory mode. The stages hand each other a
``Batch``; the ``Job`` holds what the whole job shares (the checked request, the model handle, the
engine's parts). A stage reads what it needs from them and never calls into another stage's module
except through its public functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from webui.generation.latest import Latest
from webui.generation.service import BatchSkipped, JobContext, JobFailed, JobInterrupted, JobResult

ENCODE, LATENTS, DENOISE, REFINER, HIRES, DECODE, PASTE_BACK, SAVE = (
    "encode prompt",
    "prepare latents",
    "denoise",
    "refiner hand-off",
    "hires fix",
    "decode",
    "inpaint paste-back",
    "save",
)


@dataclass(frozen=True)
class EngineParts:
    """What the engine lends its stages (built once in ``app.py``)."""

    samplers: Any  # webui.generation.samplers.SamplerTable
    writer: Any = None  # webui.outputs.writer.OutputWriter
    hashes: Any = None  # webui.models.hashes.HashCache
    hooks: Any = None  # webui.extensions.ExtensionHost (None: no extensions)
    prompt_cache: Any = None  # webui.speed.prompt_cache.PromptCache (None: encode every pass)
    oom_retry: bool = True  # retry a batch once with a stronger memory mode after out of memory
    embeddings: Any = None  # webui.models.embeddings.EmbeddingLibrary (None: no embeddings)
    wildcards: Any = None  # webui.generation.wildcards.Wildcards (None: __name__ stays as written)
    upscalers: Any = None  # webui.upscale.run.Upscalers: hires fix with an upscaler model (None: none)


@dataclass
class Job:
    """One running request: the checked request, the model it holds, its seeds and the names it reports.

    The fields after ``seeds`` are filled from ``checked`` (what the stages read most, by the names the
    infotext uses); build a job with ``Job.of``.
    """

    checked: Any  # webui.generation.check.CheckedRequest
    model: Any  # webui.models.handle.ModelHandle
    parts: EngineParts
    seeds: list[tuple[int, int]]
    job_id: str = ""
    req: Any = None  # the GenerationRequest
    family: Any = None  # FamilySpec of the checkpoint
    sampler: str = ""  # what runs (a fallback may differ from the request)
    schedule: str = ""
    hr_sampler: str = ""  # what the hires pass runs
    hr_schedule: str = ""
    steps: int = 0
    cfg: float = 0.0
    width: int = 0
    height: int = 0
    model_name: str = ""
    model_hash: str = ""
    vae_name: str = ""
    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)  # textual-inversion embeddings used (TI hashes)
    latest: Latest | None = None  # the running batch's newest estimate (for an interrupt); one per batch
    refiner: Any = None  # webui.models.handle.RefinerModel when the request hands off to a refiner
    warnings: list[str] = field(default_factory=list)  # what could not run as asked, and what ran instead

    @classmethod
    def of(cls, checked: Any, model: Any, parts: EngineParts, seeds: list[tuple[int, int]], job_id: str) -> Job:
        first, hires = checked.sampler, checked.hires_sampler
        return cls(
            checked,
            model,
            parts,
            seeds,
            job_id,
            req=checked.request,
            family=checked.family,
            sampler=first.spec.name,
            schedule=first.schedule.name,
            hr_sampler=hires.spec.name,
            hr_schedule=hires.schedule.name,
            steps=checked.steps,
            cfg=checked.cfg,
            width=checked.width,
            height=checked.height,
            warnings=list(checked.warnings),
        )


@dataclass(frozen=True)
class PassSpec:
    """One denoising pass: its task and label, and what differs from the first pass (0 / None: the same)."""

    task: str
    label: str
    n: int  # images in the batch
    seed: int  # the batch's first seed (SDE samplers' Brownian noise)
    steps: int = 0
    sampler: str = ""
    schedule: str = ""
    prompt: str | None = None
    negative: str | None = None
    width: int = 0
    height: int = 0
    model: Any = None  # a RefinerModel: the pass runs on it instead of the job's checkpoint
    seeds: tuple[int, ...] = ()  # each image's seed (wildcards choose with it); () = ``seed`` for all
    step_offset: int = 0  # the pass's step k is step offset + k of its prompt schedule (the refiner's)


@dataclass
class Batch:
    """What the stages of one batch hand each other."""

    seeds: list[tuple[int, int]]
    first_index: int
    pipe: Any = None  # the first pass's pipeline
    cond: Any = None  # its prompt embeddings
    noise: Any = None
    generators: list[Any] = field(default_factory=list)
    image: Any = None  # the first pass's input image(s): img2img's init, inpaint's work area (or latents)
    mask: Any = None  # inpaint: the mask the model sees
    masked_latents: Any = None  # inpaint with latent noise / nothing
    paste: Callable[[list[Any]], list[Any]] | None = None  # inpaint: paste the generated area back
    latents: Any = None  # the last pass's output
    decode_pipe: Any = None  # the pipeline whose VAE decodes ``latents``
    images: list[Any] = field(default_factory=list)


class Stage(Protocol):
    name: str

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None: ...


class Plan:
    """The named stages of one request; ``run_batch`` runs them on one batch."""

    def __init__(self, stages: Sequence[Stage], save: Any) -> None:
        self.stages = tuple(stages)
        self.save = save

    @property
    def names(self) -> tuple[str, ...]:
        return (*(stage.name for stage in self.stages), self.save.name)

    def run_batch(self, job: Job, batch: Batch, ctx: JobContext) -> list[Any]:
        """The batch's images: every stage but save, retried once with more memory saving after out of memory."""

        def run() -> list[Any]:
            return run_stages(self.stages, job, Batch(batch.seeds, batch.first_index), ctx)

        return retry_out_of_memory(run, job)


def retry_out_of_memory(run: Callable[[], list[Any]], job: Job) -> list[Any]:
    """The wrapper around a batch's stages: after out of memory, ``run()`` once more with the next stronger
    memory mode (when allowed), else a JobFailed that says which mode helps (Settings > Memory).

    The worker survives either way; the model handle switches the mode and writes the advice.
    """
    from webui.memory.planner import is_out_of_memory

    model, req = job.model, job.req
    try:
        return run()
    except (JobInterrupted, BatchSkipped):
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if not model.escalate_memory(req.batch_size, allowed=job.parts.oom_retry):
            raise JobFailed(model.oom_message(job.width, job.height, req.batch_size)) from None
    try:
        return run()
    except Exception as exc:
        if is_out_of_memory(exc):
            model.release_memory()
            raise JobFailed(model.oom_message(job.width, job.height, req.batch_size)) from None
        raise


def run_stages(stages: Sequence[Stage], job: Job, batch: Batch, ctx: JobContext) -> list[Any]:
    """The stages in order on one batch; an interrupted batch's estimate is finished like its images."""
    job.latest.finish = lambda images: _finish(stages, batch, images)
    for stage in stages:
        stage(job, batch, ctx)
    return batch.images


def _finish(stages: Sequence[Stage], batch: Batch, images: list[Any]) -> list[Any]:
    """What the stages after decode do to images (inpaint's paste-back), for an interrupted batch's estimate."""
    for stage in stages:
        finish = getattr(stage, "finish", None)
        if finish is not None:
            images = finish(batch, images)
    return images


def plan_for(job: Job) -> Plan:
    """The stages this job's request needs."""
    from webui.generation.stages import decode, denoise, encode, hires, inpaint, latents, refiner, save

    req = job.req
    stages: list[Stage] = [encode.EncodePrompt(), latents.PrepareLatents(), denoise.Denoise()]
    if req.task == "txt2img" and req.refiner_checkpoint:
        stages.append(refiner.RefinerHandOff())
    if req.task == "txt2img" and req.enable_hr:
        stages.append(hires.HiresFix())
    stages.append(decode.Decode())
    if req.task == "inpaint":
        stages.append(inpaint.PasteBack())
    return Plan(stages, save.Save())


def total_steps(job: Job) -> int:
    """Sampling steps one batch runs over all its passes (the progress bar's total)."""
    from webui.generation import passes

    req = job.req
    if req.task == "txt2img":
        total = job.steps
        if req.enable_hr:
            total += passes.steps_run(req.hr_second_pass_steps or job.steps, req.denoising_strength)
        return total
    return max(1, passes.steps_run(job.steps, req.denoising_strength))


def run_job(plan: Plan, job: Job, ctx: JobContext) -> JobResult:
    """Every batch of the job: skip drops one, interrupt stops (keeping the batch's latest estimate, unsaved)."""
    req = job.req
    result = JobResult()
    result.info = plan.save.info(job, [], [])
    ctx.plan(total_steps(job) * req.n_iter, req.total_images)
    per_batch = req.batch_size
    try:
        for it in range(req.n_iter):
            batch = Batch(job.seeds[it * per_batch : (it + 1) * per_batch], it * per_batch)
            job.latest = Latest()
            try:
                ctx.check()
                images = plan.run_batch(job, batch, ctx)
            except BatchSkipped:
                result.skipped_batches += 1
                continue
            except JobInterrupted:  # A1111: the batch being sampled still gives its latest estimate, unsaved
                plan.save.keep_interrupted(job, batch, result, ctx)
                raise
            plan.save(job, batch, images, result)
            ctx.image_done(len(images))
            ctx.partial(result)
    except JobInterrupted:
        result.interrupted = True
    result.info = plan.save.info(job, result.seeds, result.infotexts)
    return result
