"""The generation engine: turns one request into images, on the worker thread.

``Engine.run`` is the whole path of a job: extensions may change the request
(``webui_before_job``); ``check_request`` checks it and resolves what it names, once; the job holds
its checkpoint through a ``ModelHandle`` from start to end (VAE, LoRAs and the extensions' extra
models applied to it); ``plan_for`` turns the request into named stages (``plan.py``,
``stages/``) and ``run_job`` runs them batch by batch. The queue (``service.py``) calls ``run``;
nothing else touches the pipelines.
"""

from __future__ import annotations

import logging
from typing import Any

from webui.generation.check import CheckContext, CheckedRequest, check_request, next_checkpoint
from webui.generation.plan import EngineParts, Job, plan_for, run_job
from webui.generation.requests import GenerationRequest, Limits, RequestError
from webui.generation.service import JobContext, JobFailed, JobResult

log = logging.getLogger(__name__)


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
        embeddings: Any = None,
        wildcards: Any = None,
        upscalers: Any = None,
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
        self.embeddings = embeddings  # webui.models.embeddings.EmbeddingLibrary (None: no embeddings)
        self.wildcards = wildcards  # webui.generation.wildcards.Wildcards (None: __name__ stays as written)
        self.upscalers = upscalers  # webui.upscale.run.Upscalers (None: hires fix resamples only)

    # -- checking -----------------------------------------------------------------------------
    def limits_now(self) -> Limits:
        """The limits, with the upscaler models installed now as hires-fix upscalers."""
        if self.upscalers is None:
            return self.limits
        from dataclasses import replace

        return replace(self.limits, hr_model_upscalers=tuple(e.name for e in self.upscalers.entries() if e.is_model))

    def check_context(self) -> CheckContext:
        """What ``check_request`` reads now: the limits, catalog, samplers and the loaded model."""
        manager = self.manager
        current = manager.current_entry
        return CheckContext(
            limits=self.limits_now(),
            catalog=manager.catalog,
            samplers=self.samplers,
            families=getattr(manager, "families", None),
            current=current,
            current_family=manager.family if current is not None else None,
            default_model=self.default_model,
            scripts=self.hooks.script_args if self.hooks is not None else None,
        )

    def check(self, request: GenerationRequest) -> CheckedRequest:
        """``check_request`` against the engine's state now (what the API's early answer calls too)."""
        if request.sd_upscale is not None:  # its own options, and the tile size it runs at
            from webui.generation.sd_upscale import check_with

            return check_with(self, request)
        return check_request(request, self.check_context())

    def next_checkpoint(self) -> Any:
        """The checkpoint a job naming none runs on: the loaded one, else the default, else the first found."""
        return next_checkpoint(self.check_context())

    # -- entry point --------------------------------------------------------------------------
    def run(self, request: GenerationRequest, ctx: JobContext) -> JobResult:
        if request.sd_upscale is not None:  # A1111's "SD upscale": img2img tile by tile (each tile comes back here)
            from webui.generation.sd_upscale import run_sd_upscale

            return run_sd_upscale(self, request, ctx)
        request = self._before_job(request)
        checked = self.check(request)
        with self.manager.handle(checked.model) as model:
            if checked.family is None or checked.family.id != model.family.id:
                checked = self.check(request)  # against the family as loaded (known once loaded: a .ckpt)
            job = self._start(checked, model, ctx.job_id)
            plan = plan_for(job)
            return run_job(plan, job, ctx)

    def _before_job(self, request: GenerationRequest) -> GenerationRequest:
        """Extensions may change the request (``webui_before_job``) or refuse it."""
        if self.hooks is None:
            return request
        from webui.hooks import JobRefused

        try:
            return self.hooks.before_job(request)
        except JobRefused as exc:
            raise RequestError(exc.field or "prompt", str(exc)) from None

    def _start(self, checked: CheckedRequest, model: Any, job_id: str) -> Job:
        """The job on its model: VAE, LoRAs, extensions' models, the refiner; its seeds and the names it reports."""
        from webui.generation.noise import image_seeds, resolve_seed

        req = checked.request
        if checked.set_vae:
            self._use_vae(model, checked)
        seed = resolve_seed(req.seed)
        subseed = resolve_seed(req.subseed)  # drawn even without variation: A1111 reports it
        parts = EngineParts(
            self.samplers,
            self.writer,
            self.hashes,
            self.hooks,
            self.prompt_cache,
            self.oom_retry,
            self.embeddings,
            self.wildcards,
            self.upscalers,
        )
        job = Job.of(
            checked, model, parts, image_seeds(seed, subseed, req.subseed_strength, req.batch_size, req.n_iter), job_id
        )
        self._use_loras(job)
        self._describe_model(job)
        self._add_models(job)
        if req.task == "txt2img" and req.refiner_checkpoint:
            from webui.generation.stages.refiner import load_refiner

            job.refiner = load_refiner(job)
        return job

    def _use_vae(self, model: Any, checked: CheckedRequest) -> None:
        try:
            model.use_vae(checked.vae)
        except KeyError as exc:
            raise RequestError("sd_vae", str(exc).strip("'\"")) from None

    def _use_loras(self, job: Job) -> None:
        from webui.models.lora import LoraError

        loras = job.checked.loras
        try:
            job.model.use_loras([(entry, tag.weight) for tag, entry in loras])
        except KeyError as exc:
            raise RequestError("prompt", f"{str(exc).strip(chr(39))} (from a <lora:...> tag)") from None
        except LoraError as exc:
            raise RequestError("prompt", str(exc)) from None
        for _tag, entry in loras:
            digest = self.hashes.get(entry.path, compute=True) if self.hashes else None
            if digest:
                job.lora_hashes[entry.stem] = digest[:12]

    def _describe_model(self, job: Job) -> None:
        entry = job.model.entry
        job.model_name = entry.stem
        if self.hashes is not None and entry.format != "diffusers":
            # The infotext needs it (A1111 writes it on the first image): cached after the first
            # job; else this waits for the hash the load started in the background, or computes it.
            try:
                digest = self.hashes.get(entry.path, compute=True)
            except OSError:  # the file went away since the load: the image is still worth saving
                digest = None
            job.model_hash = digest[:10] if digest else ""
        job.vae_name = job.model.vae_name()

    def _add_models(self, job: Job) -> None:
        """The extensions' extra models for this job (``webui_job_models``), held by the model handle."""
        hooks = self.hooks
        if hooks is None or not hooks.has_impls("webui_job_models"):
            return
        from webui.hooks import JobModelsEvent, JobRefused

        model = job.model
        event = JobModelsEvent(
            job.job_id, job.req, job.family.id, job.req.task, model.checkpoint_pipeline, model.device, model.dtype
        )
        try:
            additions = hooks.job_models(event)
        except JobRefused as exc:
            raise (RequestError(exc.field, str(exc)) if exc.field else JobFailed(str(exc))) from None
        if additions:
            model.add(additions, hooks.report)
