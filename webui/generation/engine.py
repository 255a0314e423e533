"""The generation engine: turns one validated request into images, on the worker thread.

It picks the checkpoint, activates the prompt's LoRAs, checks the sampler against the family,
draws the noise from the seeds, runs the passes (first pass, SDXL refiner hand-off, hires fix,
inpaint crop and paste-back), writes each image with its infotext and publishes progress. The
queue (``service.py``) calls ``Engine.run``; nothing else touches the pipelines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from webui.generation import oom, passes, results
from webui.generation.latest import Latest
from webui.generation.requests import GenerationRequest, Limits, RequestError, hires_size, listed_choices
from webui.generation.requests import validate_request
from webui.generation.service import BatchSkipped, JobContext, JobInterrupted, JobResult

log = logging.getLogger(__name__)

VAE_NONE = ("", "Automatic", "None")


@dataclass
class _Job:
    """Everything resolved for one request (defaults filled, model chosen, seeds drawn)."""

    req: GenerationRequest
    family: Any
    pipe_task: str
    sampler: str
    schedule: str
    steps: int
    cfg: float
    width: int
    height: int
    seeds: list[tuple[int, int]]
    prompt: str
    negative: str
    loras: list[Any]
    model_name: str = ""
    model_hash: str = ""
    vae_name: str = ""
    lora_hashes: dict[str, str] = field(default_factory=dict)
    job_id: str = ""
    latest: Latest = field(default_factory=Latest)  # the running batch's newest estimate (for an interrupt)
    hr_sampler: str = ""  # what the hires pass runs (a fallback may differ from the request)
    hr_schedule: str = ""
    warnings: list[str] = field(default_factory=list)  # what could not run as asked, and what ran instead


class Engine:
    def __init__(
        self,
        manager: Any,
        samplers: Any,
        writer: Any,
        hashes: Any = None,
        limits: Limits | None = None,
        default_model: str = "",
        hooks: Any = None,
        oom_retry: bool = True,
        prompt_cache: Any = None,
    ) -> None:
        self.manager = manager
        self.samplers = samplers
        self.writer = writer
        self.hashes = hashes
        self.limits = limits or Limits()
        self.default_model = default_model
        self.hooks = hooks  # webui.extensions.ExtensionHost (None: no extensions)
        self.oom_retry = oom_retry  # retry a batch once with a stronger memory mode after out of memory
        self.prompt_cache = prompt_cache  # webui.speed.prompt_cache.PromptCache (None: encode every pass)

    # -- entry point ------------------------------------------------------------
    def run(self, request: GenerationRequest, ctx: JobContext) -> JobResult:
        request = self._before_job(request)
        validate_request(request, self.limits)
        job = self._resolve(request)
        job.job_id = ctx.job_id
        result = JobResult()
        result.info = self._info(job, [], [])
        total_images = request.total_images
        ctx.plan(self._total_steps(job) * request.n_iter, total_images)
        per_batch = request.batch_size
        try:
            for it in range(request.n_iter):
                batch = job.seeds[it * per_batch : (it + 1) * per_batch]
                job.latest = Latest()
                try:
                    ctx.check()
                    images = self._run_batch_guarded(job, batch, ctx)
                except BatchSkipped:
                    result.skipped_batches += 1
                    continue
                except JobInterrupted:  # A1111: the batch being sampled still gives its latest estimate, unsaved
                    results.keep_interrupted(self, job, batch, result, it * per_batch, ctx)
                    raise
                self._collect(job, batch, images, result, it * per_batch)
                ctx.image_done(len(images))
                ctx.partial(result)
        except JobInterrupted:
            result.interrupted = True
        result.info = self._info(job, result.seeds, result.infotexts)
        return result

    def _before_job(self, request: GenerationRequest) -> GenerationRequest:
        """Extensions may change the request (``webui_before_job``) or refuse it."""
        if self.hooks is None:
            return request
        from webui.hooks import JobRefused

        try:
            return self.hooks.before_job(request)
        except JobRefused as exc:
            raise RequestError("prompt", str(exc)) from None

    # -- resolving the request -----------------------------------------------
    def _resolve(self, req: GenerationRequest) -> _Job:
        from webui.generation.noise import image_seeds, resolve_seed
        from webui.generation.prompts import extract_loras

        self._ensure_model(req.sd_model_checkpoint)
        family = self.manager.family
        if req.sd_vae:
            self._apply_vae(req.sd_vae)
        sampler = req.sampler_name or self.samplers.default_sampler(family)
        spec, schedule, warnings = self._check_sampler(family, req.task, sampler, req.scheduler, "sampler_name")
        hires = (spec, schedule, ())
        if req.enable_hr and (req.hr_sampler_name or req.hr_scheduler):
            # A1111: "use same scheduler" is the schedule type as asked, so another sampler gets its own Automatic
            hr_sampler = req.hr_sampler_name or spec.name
            hr_schedule = req.hr_scheduler or req.scheduler
            hires = self._check_sampler(family, "img2img", hr_sampler, hr_schedule, "hr_sampler_name")
        width = req.width or family.default_size[0]
        height = req.height or family.default_size[1]
        if req.task != "txt2img" and not (req.width and req.height):
            width, height = req.init_image.size[0] // 8 * 8, req.init_image.size[1] // 8 * 8
        prompt, loras = extract_loras(req.prompt)
        negative, _ = extract_loras(req.negative_prompt)
        seed = resolve_seed(req.seed)
        subseed = resolve_seed(req.subseed)  # drawn even without variation: A1111 reports it
        if req.task != "txt2img" and req.subseed_strength > 0:
            raise RequestError(
                "subseed_strength", "variation seeds work for txt2img only for now; set the variation strength to 0"
            )
        job = _Job(
            req=req,
            family=family,
            pipe_task=req.task,
            sampler=spec.name,
            schedule=schedule.name,
            steps=req.steps or family.default_steps,
            cfg=family.default_cfg if req.cfg_scale is None else req.cfg_scale,
            width=width,
            height=height,
            seeds=image_seeds(seed, subseed, req.subseed_strength, req.batch_size, req.n_iter),
            prompt=prompt,
            negative=negative,
            loras=loras,
            hr_sampler=hires[0].name,
            hr_schedule=hires[1].name,
            warnings=list(dict.fromkeys((*warnings, *hires[2]))),
        )
        self._apply_loras(job)
        self._describe_model(job)
        return job

    def _check_sampler(self, family: Any, task: str, sampler: str, schedule: str, field_name: str) -> tuple:
        """(sampler spec, schedule type, warnings) that run; only an unknown sampler name is an error."""
        from webui.generation.samplers import SamplerError

        try:
            choice = self.samplers.choose(family, task, sampler, schedule)
        except SamplerError as exc:
            raise RequestError(field_name, str(exc), listed_choices(exc)) from None
        return choice.spec, choice.schedule, choice.warnings

    def _ensure_model(self, name: str) -> None:
        manager = self.manager
        if name:
            try:
                manager.load(name)
            except KeyError as exc:
                raise RequestError("sd_model_checkpoint", str(exc).strip("'\"")) from None
            return
        if manager.current_entry is not None:
            return
        entry = self.next_checkpoint()
        if entry is None:
            raise RequestError(
                "sd_model_checkpoint",
                "no checkpoint is installed; put a .safetensors file in models/Stable-diffusion "
                "or use the Models tab to download one",
            )
        manager.load(entry)

    def next_checkpoint(self) -> Any:
        """The checkpoint a job naming none runs on: the loaded one, else the default, else the first found.

        A default that is not installed falls back to the first one found, as A1111 does.
        """
        manager = self.manager
        if manager.current_entry is not None:
            return manager.current_entry
        if self.default_model:
            try:
                return manager.catalog.find(self.default_model, kind="checkpoint")
            except KeyError:
                log.warning("default checkpoint %r is not installed; using the first one found", self.default_model)
        return next((e for e in manager.catalog.entries("checkpoint") if e.usable), None)

    def _apply_vae(self, name: str) -> None:
        try:
            self.manager.set_vae(None if name in VAE_NONE else name)
        except KeyError as exc:
            raise RequestError("sd_vae", str(exc).strip("'\"")) from None

    def _apply_loras(self, job: _Job) -> None:
        from webui.models.lora import LoraError

        try:
            self.manager.apply_loras([(tag.name, tag.weight) for tag in job.loras])
        except KeyError as exc:
            raise RequestError("prompt", f"{str(exc).strip(chr(39))} (from a <lora:...> tag)") from None
        except LoraError as exc:
            raise RequestError("prompt", str(exc)) from None
        for tag in job.loras:
            entry = self.manager.catalog.find(tag.name, kind="lora")
            digest = self.hashes.get(entry.path, compute=True) if self.hashes else None
            if digest:
                job.lora_hashes[entry.stem] = digest[:12]

    def _describe_model(self, job: _Job) -> None:
        entry = self.manager.current_entry
        job.model_name = entry.stem
        if self.hashes is not None and entry.format != "diffusers":
            # The infotext needs it (A1111 writes it on the first image): cached after the first
            # job; else this waits for the hash the load started in the background, or computes it.
            try:
                digest = self.hashes.get(entry.path, compute=True)
            except OSError:  # the file went away since the load: the image is still worth saving
                digest = None
            job.model_hash = digest[:10] if digest else ""
        job.vae_name = self.manager.vae_name()

    def _total_steps(self, job: _Job) -> int:
        req = job.req
        if req.task == "txt2img":
            total = job.steps
            if req.enable_hr:
                total += passes.steps_run(req.hr_second_pass_steps or job.steps, req.denoising_strength)
            return total
        return max(1, passes.steps_run(job.steps, req.denoising_strength))

    # -- running one batch ------------------------------------------------------
    def _run_batch_guarded(self, job: _Job, batch: list[tuple[int, int]], ctx: JobContext) -> list[Any]:
        """One batch; after out of memory, retry once with the next stronger memory mode, or say which helps."""
        return oom.run_guarded(self, job, batch, ctx)

    def _run_batch(self, job: _Job, batch: list[tuple[int, int]], ctx: JobContext) -> list[Any]:
        runners = {"txt2img": self._txt2img, "img2img": self._img2img, "inpaint": self._inpaint}
        return runners[job.req.task](job, batch, ctx)

    def _pass(
        self,
        job: _Job,
        task: str,
        ctx: JobContext,
        *,
        n: int,
        pipe: Any = None,
        family: Any = None,
        sampler: str = "",
        schedule: str = "",
        prompt: str | None = None,
        negative: str | None = None,
        steps: int | None = None,
        width: int = 0,
        height: int = 0,
        secondary: bool = False,
        seed: int | None = None,
        label: str = "",
    ) -> passes.PassInputs:
        from webui.generation.preview import latents_to_preview

        family = family or job.family
        pipe = pipe or self.manager.pipeline(task)
        built = self.samplers.build(
            self.manager.scheduler_config(secondary=secondary),
            family,
            task,
            sampler or job.sampler,
            schedule or job.schedule,
            steps=steps or job.steps,
            shift=job.req.shift or None,
            seed=seed,  # SDE samplers draw their Brownian noise from it; without it they use the global RNG
        )
        cond = self._encode(
            job,
            pipe,
            family,
            job.prompt if prompt is None else prompt,
            job.negative if negative is None else negative,
            n,
            secondary,
        )
        width, height = width or job.width, height or job.height

        step_hook = self._step_hook(job, family, label or task, steps or job.steps)

        def on_step(step: int, timestep: Any, latents: Any) -> Any:
            changed = step_hook(step, timestep, latents) if step_hook else None
            ctx.on_step(
                step, latents if changed is None else changed, preview=lambda lat: latents_to_preview(lat, family)
            )
            return changed

        return passes.PassInputs(
            pipe=pipe,
            family=family,
            scheduler=built.scheduler,
            call_kwargs=built.call_kwargs,
            cond=cond,
            steps=steps or job.steps,
            cfg_scale=job.cfg,
            width=width,
            height=height,
            on_step=on_step,
            sdxl_conditioning=self._sdxl_conditioning(job, width, height),
            latest=job.latest,
        )

    def _encode(self, job: _Job, pipe: Any, family: Any, prompt: str, negative: str, n: int, secondary: bool) -> dict:
        """The prompt embeddings, from the prompt cache when this model state encoded them before."""
        from webui.generation.conditioning import encode_prompts

        req = job.req

        def encode() -> dict[str, Any]:
            return encode_prompts(
                pipe, family, [prompt] * n, [negative] * n, clip_skip=req.clip_skip, use_t5=req.use_t5
            )

        if self.prompt_cache is None:
            return encode()
        from webui.speed.prompt_cache import PromptKey

        entry = self.manager.current_entry
        state = (
            (str(entry.path), entry.mtime_ns) if entry is not None else None,
            req.refiner_checkpoint if secondary else "",
            tuple((tag.name, float(tag.weight)) for tag in job.loras),  # text-encoder LoRAs change the embeddings
        )
        key = PromptKey.of(pipe, state, prompt, negative, clip_skip=req.clip_skip, use_t5=req.use_t5, batch=n)
        return self.prompt_cache.get_or_encode(pipe, key, encode)

    def _step_hook(self, job: _Job, family: Any, label: str, steps: int) -> Any:
        """``webui_step`` for this pass, or None when no extension listens (no per-step cost then)."""
        if self.hooks is None or not self.hooks.has_impls("webui_step"):
            return None
        from webui.hooks import StepEvent

        def call(step: int, timestep: Any, latents: Any) -> Any:
            event = StepEvent(job.job_id, step, steps, latents, timestep, family.id, label)
            out = self.hooks.step(event)
            return None if out is latents else out

        return call

    @staticmethod
    def _sdxl_conditioning(job: _Job, width: int, height: int) -> dict[str, Any]:
        req = job.req
        return {
            "original_size": (req.original_height or height, req.original_width or width),
            "target_size": (req.target_height or height, req.target_width or width),
            "crops_coords_top_left": (req.crop_top, req.crop_left),
        }

    def _noise(self, job: _Job, batch: list[tuple[int, int]], width: int, height: int, pipe: Any) -> tuple[Any, list]:
        """Initial noise of each image from its seed (and variation seed), plus the generators that drew it.

        The same generators go to the pipeline, so an ancestral sampler's per-step noise continues
        each image's own stream (A1111) instead of repeating the initial draw.
        """
        from webui.generation.noise import make_generators, make_noise
        from webui.memory.apply import execution_device

        # Under offload the weights sit on the CPU but the pipeline computes on the GPU: draw there,
        # in the compute dtype (an fp8-stored denoiser still computes in it).
        device = execution_device(pipe)
        seeds = [s for s, _ in batch]
        generators = make_generators(seeds, device=device, rng=job.req.rng)
        noise = make_noise(
            (job.family.latent_channels, height // 8, width // 8),
            seeds,
            [sub for _, sub in batch],
            job.req.subseed_strength,
            device=device,
            dtype=self.manager.device.dtype,
            rng=job.req.rng,
            generators=generators,
        )
        return noise, generators

    def _generators(self, job: _Job, batch: list[tuple[int, int]]) -> list[Any]:
        from webui.generation.noise import make_generators

        return make_generators([s for s, _ in batch], device=self.manager.device.device, rng=job.req.rng)

    def _txt2img(self, job: _Job, batch: list[tuple[int, int]], ctx: JobContext) -> list[Any]:
        req = job.req
        n = len(batch)
        inputs = self._pass(job, "txt2img", ctx, n=n, seed=batch[0][0])
        noise, generators = self._noise(job, batch, job.width, job.height, inputs.pipe)
        ctx.begin_pass(job.steps, "txt2img")
        if req.refiner_checkpoint:
            latents = self._with_refiner(job, batch, ctx, inputs, noise, generators)
            if not req.enable_hr:
                return passes.decode_guarded(inputs.pipe, latents)
        elif req.enable_hr:
            latents = passes.txt2img(inputs, noise, generators, output_type="latent")
            ctx.finish_pass(job.steps)
        else:
            images = passes.txt2img(inputs, noise, generators)
            ctx.finish_pass(job.steps)
            return images
        return self._hires(job, batch, ctx, inputs.pipe, latents)

    def _with_refiner(
        self, job: _Job, batch, ctx: JobContext, inputs: passes.PassInputs, noise: Any, generators: list
    ) -> Any:
        req = job.req
        if not job.family.refiners:
            raise RequestError(
                "refiner_checkpoint", f"the refiner hand-off needs an SDXL base model, not {job.family.label}"
            )
        try:
            refiner_pipe, refiner_family = self.manager.secondary(req.refiner_checkpoint, "img2img")
        except KeyError as exc:
            raise RequestError("refiner_checkpoint", str(exc).strip("'\"")) from None
        if not job.family.accepts_refiner(refiner_family):
            raise RequestError(
                "refiner_checkpoint",
                f"{req.refiner_checkpoint} is {refiner_family.label}; pick an SDXL refiner or base model",
            )
        switch = req.refiner_switch_at
        latents = passes.txt2img(inputs, noise, generators, output_type="latent", denoising_end=switch)
        ctx.finish_pass(max(1, round(job.steps * switch)))
        refiner_inputs = self._pass(
            job,
            "img2img",
            ctx,
            n=len(batch),
            pipe=refiner_pipe,
            family=refiner_family,
            secondary=True,
            seed=batch[0][0],
        )
        ctx.begin_pass(max(1, job.steps - round(job.steps * switch)), "refiner")
        out = passes.img2img(refiner_inputs, latents, 1.0, generators, output_type="latent", denoising_start=switch)
        ctx.finish_pass(max(1, job.steps - round(job.steps * switch)))
        return out

    def _hires(self, job: _Job, batch, ctx: JobContext, pipe: Any, latents: Any) -> list[Any]:
        from webui.generation.img_ops import resize_image

        req = job.req
        width, height = hires_size(job.width, job.height, req)
        if req.hr_upscaler in passes.LATENT_UPSCALE_MODES:
            image: Any = passes.upscale_latents(latents, width, height, req.hr_upscaler)
        else:
            image = [resize_image(im, width, height, 0) for im in passes.decode_guarded(pipe, latents)]
        steps = passes.steps_for_strength(req.hr_second_pass_steps or job.steps, req.denoising_strength)
        inputs = self._pass(
            job,
            "img2img",
            ctx,
            n=len(batch),
            sampler=job.hr_sampler,
            schedule=job.hr_schedule,
            prompt=extract_text(req.hr_prompt) if req.hr_prompt else None,
            negative=extract_text(req.hr_negative_prompt) if req.hr_negative_prompt else None,
            steps=steps,
            width=width,
            height=height,
            seed=batch[0][0],
            label="hires fix",
        )
        run = passes.steps_run(steps, req.denoising_strength)
        ctx.begin_pass(run, "hires fix")
        images = passes.img2img(inputs, image, req.denoising_strength, self._generators(job, batch))
        ctx.finish_pass(run)
        return images

    def _img2img(self, job: _Job, batch, ctx: JobContext) -> list[Any]:
        from webui.generation.img_ops import resize_image

        req = job.req
        init = resize_image(req.init_image.convert("RGB"), job.width, job.height, req.resize_mode)
        steps = passes.steps_for_strength(job.steps, req.denoising_strength)
        inputs = self._pass(job, "img2img", ctx, n=len(batch), steps=steps, seed=batch[0][0])
        run = passes.steps_run(steps, req.denoising_strength)
        ctx.begin_pass(run, "img2img")
        images = passes.img2img(inputs, [init] * len(batch), req.denoising_strength, self._generators(job, batch))
        ctx.finish_pass(run)
        return images

    def _inpaint(self, job: _Job, batch, ctx: JobContext) -> list[Any]:
        from webui.generation import inpaint as inpaint_ops

        return inpaint_ops.run(self, job, batch, ctx)

    # -- results ------------------------------------------------------------------
    def _collect(self, job: _Job, batch, images: list[Any], result: JobResult, first_index: int) -> None:
        results.collect(self, job, batch, images, result, first_index)

    def _info(self, job: _Job, seeds: list[int], infotexts: list[str]) -> dict[str, Any]:
        return results.info(job, seeds, infotexts, inpainting=job.req.task == "inpaint" and self._inpainting_model())

    def _inpainting_model(self) -> bool:
        model = passes.denoiser(self.manager.loaded.pipeline)
        return getattr(model.config, "in_channels", 4) == 9


def extract_text(prompt: str) -> str:
    from webui.generation.prompts import extract_loras

    return extract_loras(prompt)[0]
