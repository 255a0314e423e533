"""Stage "denoise": the first pass's pipeline call, and what every pass is made of.

``pass_inputs`` builds a pass for ``passes`` (webui.generation.passes calls diffusers): the sampler
from the model's own scheduler config, the per-step callback (progress, preview, interrupt and
skip, ``webui_step``), and the extensions' part of the pass: ``webui_stage_arguments`` (extra call
arguments, a ControlNet's image and weights) and ``webui_step_callbacks`` (per-step changes),
checked against the pipeline that is called. The refiner hand-off and hires fix build their passes
with it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from webui.generation import passes

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job, PassSpec
    from webui.generation.service import JobContext


def pass_inputs(job: Job, spec: PassSpec, ctx: JobContext, pipe: Any, family: Any, cond: Any) -> passes.PassInputs:
    """Everything ``passes`` needs for one pass on ``pipe`` (the job's checkpoint, or ``spec.model``'s)."""
    from webui.generation.preview import latents_to_preview

    steps = spec.steps or job.steps
    config = spec.model.scheduler_config if spec.model is not None else job.model.scheduler_config()
    built = job.parts.samplers.build(
        config,
        family,
        spec.task,
        spec.sampler or job.sampler,
        spec.schedule or job.schedule,
        steps=steps,
        shift=job.req.shift or None,
        seed=spec.seed,  # SDE samplers draw their Brownian noise from it; without it they use the global RNG
    )
    width, height = spec.width or job.width, spec.height or job.height
    step_hook = _step_hook(job, family, spec.label or spec.task, steps)

    def on_step(step: int, timestep: Any, latents: Any) -> Any:
        changed = step_hook(step, timestep, latents) if step_hook else None
        ctx.on_step(step, latents if changed is None else changed, preview=lambda lat: latents_to_preview(lat, family))
        return changed

    return passes.PassInputs(
        pipe=pipe,
        family=family,
        scheduler=built.scheduler,
        call_kwargs=built.call_kwargs,
        cond=cond,
        steps=steps,
        cfg_scale=job.cfg,
        width=width,
        height=height,
        on_step=on_step,
        sdxl_conditioning=size_conditioning(job, width, height),
        latest=job.latest,
        extend=_extension_part(job, spec, family, steps, width, height),
        step_callbacks=_prompt_switch(cond, pipe),
    )


def _prompt_switch(cond: Any, pipe: Any) -> list[Any]:
    """Prompt editing / alternation: the callback that switches the embeddings per step (none without it)."""
    from webui.generation.prompt_steps import switch_callback

    switch = switch_callback(cond, pipe)
    return [switch] if switch is not None else []


def size_conditioning(job: Job, width: int, height: int) -> dict[str, Any]:
    """SDXL's size and crop conditioning (A1111's defaults: the image size, no crop)."""
    req = job.req
    return {
        "original_size": (req.original_height or height, req.original_width or width),
        "target_size": (req.target_height or height, req.target_width or width),
        "crops_coords_top_left": (req.crop_top, req.crop_left),
    }


def _step_hook(job: Job, family: Any, label: str, steps: int) -> Any:
    """``webui_step`` for this pass, or None when no extension listens (no per-step cost then)."""
    hooks = job.parts.hooks
    if hooks is None or not hooks.has_impls("webui_step"):
        return None
    from webui.hooks import StepEvent

    def call(step: int, timestep: Any, latents: Any) -> Any:
        out = hooks.step(StepEvent(job.job_id, step, steps, latents, timestep, family.id, label))
        return None if out is latents else out

    return call


# --- the extensions' part of a pass ----------------------------------------------------------


def _extension_part(job: Job, spec: PassSpec, family: Any, steps: int, width: int, height: int) -> Any:
    """``extend(pipe, arguments)`` for ``passes``, or None when no extension takes part in passes."""
    hooks = job.parts.hooks
    if hooks is None or not (hooks.has_impls("webui_stage_arguments") or hooks.has_impls("webui_step_callbacks")):
        return None
    from webui.hooks import StageEvent

    def extend(pipe: Any, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        event = StageEvent(
            job.job_id,
            spec.label or spec.task,
            spec.task,
            job.req,
            family.id,
            pipe,
            width,
            height,
            steps,
            spec.n,
            dict(arguments),
        )
        added = _arguments(hooks, pipe, arguments, _given_arguments(hooks, event))
        callbacks = (
            _callbacks(hooks, pipe, hooks.step_callbacks(event)) if hooks.has_impls("webui_step_callbacks") else []
        )
        return added, callbacks

    return extend


def _given_arguments(hooks: Any, event: Any) -> list[tuple[str, dict]]:
    """``webui_stage_arguments``; a JobRefused there fails the job with its message (and field)."""
    if not hooks.has_impls("webui_stage_arguments"):
        return []
    from webui.generation.requests import RequestError
    from webui.generation.service import JobFailed
    from webui.hooks import JobRefused

    try:
        return hooks.stage_arguments(event)
    except JobRefused as exc:
        raise (RequestError(exc.field, str(exc)) if exc.field else JobFailed(str(exc))) from None


def _arguments(hooks: Any, pipe: Any, arguments: Mapping[str, Any], given: Sequence[tuple[str, dict]]) -> dict:
    """The extensions' arguments the call can take: none the app sets, none another extension gave, none unknown."""
    out: dict[str, Any] = {}
    for name, values in given:
        for key, value in values.items():
            if key in arguments:
                hooks.report(name, "webui_stage_arguments", f"{key!r} is set by the app; it was left out")
            elif key in out:
                hooks.report(name, "webui_stage_arguments", f"{key!r} was already given by another extension")
            elif not passes.accepts(pipe, key):
                hooks.report(name, "webui_stage_arguments", f"{type(pipe).__name__} takes no {key!r}; it was left out")
            else:
                out[key] = value
    return out


def _callbacks(hooks: Any, pipe: Any, given: Sequence[tuple[str, Any]]) -> list[Any]:
    """The extensions' step callbacks, each isolated (an error is reported and the step goes on)."""
    allowed = set(getattr(pipe, "_callback_tensor_inputs", ("latents",)))
    out = []
    for name, fn in given:
        wanted = list(getattr(fn, "tensor_inputs", ["latents"]))
        bad = [t for t in wanted if t not in allowed]
        if bad:
            hooks.report(name, "webui_step_callbacks", f"{type(pipe).__name__} has no step tensors {bad}; left out")
            continue
        out.append(_isolated(hooks, name, fn, wanted))
    return out


def _isolated(hooks: Any, name: str, fn: Any, tensor_inputs: list[str]) -> Any:
    def call(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        ok, out = hooks.run_guarded(name, "webui_step_callbacks", fn, pipe, step, timestep, tensors)
        if not ok or out is None:
            return {}
        if not isinstance(out, Mapping):
            hooks.report(name, "webui_step_callbacks", f"returned {type(out).__name__}; return a dict of tensors")
            return {}
        return {k: v for k, v in out.items() if k in tensor_inputs}

    call.tensor_inputs = tensor_inputs  # type: ignore[attr-defined]
    return call


# --- the stage -------------------------------------------------------------------------------


class Denoise:
    """The first pass: txt2img from the noise (up to the refiner's switch), img2img / inpaint from the image."""

    name = "denoise"

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        from webui.generation.stages.encode import first_pass

        req = job.req
        spec = first_pass(job, batch)
        inputs = pass_inputs(job, spec, ctx, batch.pipe, job.family, batch.cond)
        batch.decode_pipe = batch.pipe
        if req.task == "txt2img":
            ctx.begin_pass(job.steps, "txt2img")
            if req.refiner_checkpoint:
                switch = req.refiner_switch_at
                batch.latents = passes.txt2img(
                    inputs, batch.noise, batch.generators, output_type="latent", denoising_end=switch
                )
                ctx.finish_pass(max(1, round(job.steps * switch)))
                return
            batch.latents = passes.txt2img(inputs, batch.noise, batch.generators, output_type="latent")
            ctx.finish_pass(job.steps)
            return
        run = passes.steps_run(spec.steps, req.denoising_strength)
        ctx.begin_pass(run, req.task)
        if req.task == "img2img":
            batch.latents = passes.img2img(
                inputs, batch.image, req.denoising_strength, batch.generators, output_type="latent"
            )
        else:
            batch.latents = passes.inpaint(
                inputs,
                batch.image,
                batch.mask,
                req.denoising_strength,
                batch.generators,
                masked_image_latents=batch.masked_latents,
                output_type="latent",
            )
        ctx.finish_pass(run)
