"""``LocalBackend``: the ``Backend`` protocol in this process, over the app's ``Services``.

It owns nothing of its own: it reads the services each time (the job queue, the manager, the
catalog, the settings), turns live objects into the plain records of ``webui.backend.records``
and posts device work (loads, VAE switches, unloads) to the generation worker, which owns the
device. A backend in another process (a Ray Serve replica, issue 17) runs one of these beside
its own services and returns what it returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from webui.backend import local_models as M
from webui.backend import local_settings
from webui.backend.records import (
    VAE_NONE,
    Busy,
    ControlResult,
    DownloadChoice,
    EmbeddingInfo,
    ExtensionSetting,
    FamilyChoices,
    FamilyInfo,
    Folders,
    JobOutcome,
    JobProgress,
    JobSnapshot,
    LoadedModel,
    LoadReport,
    LoraInfo,
    MemoryUsage,
    ModelInfo,
    NotEnoughMemory,
    NotFound,
    QueueFull,
    QueueList,
    QueueState,
    Refusal,
    Refused,
    RuntimeOptions,
    SamplerInfo,
    ScheduleInfo,
    Step,
    StyledPrompt,
    StyleInfo,
    TaskFailed,
    TokenCount,
    UpscalerInfo,
)
from webui.families.registry import FALLBACK_FAMILY
from webui.generation.requests import GenerationRequest, Limits, RequestError, listed_choices

if TYPE_CHECKING:
    from webui.app import Services
    from webui.backend.local_outputs import OutputsBrowser
    from webui.backend.output_records import OutputInfo, OutputPage, OutputTrashed
    from webui.config import Settings
    from webui.extensions import Extension
    from webui.generation.service import GenerationService, Job
    from webui.settings_edit import SaveResult
    from webui.upscale.extras import ExtrasRequest

log = logging.getLogger(__name__)

CLIP_PAD = "<|endoftext|>"
LIVE_OPTIONS = ("preview_every", "ram_cache_models", "ram_cache_gib")  # what ``set_options`` changes


def refusal_of(job: Any) -> Refusal | None:
    """The request field a failed job blames (the API's 422), with the names its message lists."""
    from webui.generation.samplers import SamplerError

    exc = job.exception
    if job.error_field:
        message = getattr(exc, "message", None) or job.error
        valid = listed_choices(exc) if exc is not None else None
        return Refusal(job.error_field, message, list(valid) if valid else None)
    if isinstance(exc, SamplerError):
        valid = listed_choices(exc)
        return Refusal("sampler_name", str(exc), list(valid) if valid else None)
    return None


def _is_memory_refusal(exc: BaseException | None) -> bool:
    """A load refused because the model cannot fit in RAM or on the GPU (webui.models.ram_budget / device_budget)."""
    from webui.models.ram_budget import NotEnoughMemoryError

    return isinstance(exc, NotEnoughMemoryError)


def _memory_refusal_field(job: Any) -> str:
    """The request field whose model a failed job could not load for memory ("" when it failed otherwise)."""
    exc = job.exception
    return str(getattr(exc, "field", "") or "sd_model_checkpoint") if _is_memory_refusal(exc) else ""


def _outcome(result: Any) -> JobOutcome:
    return JobOutcome(
        images=list(result.images),
        infotexts=list(result.infotexts),
        seeds=list(result.seeds),
        subseeds=list(result.subseeds),
        paths=list(result.paths),
        info=dict(result.info or {}),
        interrupted=bool(result.interrupted),
        skipped_batches=int(result.skipped_batches),
    )


def _progress(p: Any, preview_after: int | None) -> JobProgress:
    newer = preview_after is not None and p.preview is not None and p.preview_id > preview_after
    return JobProgress(
        step=p.step,
        steps=p.steps,
        done_steps=p.done_steps,
        total_steps=p.total_steps,
        images_done=p.images_done,
        images_total=p.images_total,
        eta_seconds=p.eta_seconds,
        preview=p.preview if newer else None,
        preview_id=p.preview_id,
        textinfo=p.textinfo,
    )


class LocalBackend:
    """The in-process backend (see the module docstring); one per app, built by ``webui.app``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lora_headers: dict[Any, tuple[str, str]] = {}  # LoRA header inspections by (path, mtime)
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()  # one tokenizer, many browser tabs
        self._styles: Any = None  # webui.generation.styles.StyleStore, on first use
        self._outputs: OutputsBrowser | None = None  # webui.backend.local_outputs, built on first use

    @property
    def _generation(self) -> GenerationService:
        generation = self._services.generation
        if generation is None:
            raise RuntimeError("the app was built without a job queue (webui.app.build_generation)")
        return generation

    # --- jobs ---------------------------------------------------------------------------------------

    def _snapshot(self, job: Job, preview_after: int | None) -> JobSnapshot:
        from webui.generation.service import FINISHED, RUNNING

        finished = job.finished  # read first: the state is final before ``finished`` is set
        state = job.state if finished or job.state not in FINISHED else RUNNING
        request = job.request
        return JobSnapshot(
            id=job.id,
            state=state,
            source=job.source,
            is_task=request is None and getattr(job, "work", None) is None,
            position=self._generation.position(job),
            created=job.created,
            started=job.started,
            progress=_progress(job.progress, preview_after),
            error=job.error if finished else "",
            error_field=job.error_field if finished else "",
            stop_reason=job.stop_reason,
            refusal=refusal_of(job) if finished and state == "failed" else None,
            memory_refusal=_memory_refusal_field(job) if finished and state == "failed" else "",
            interrupt_requested=job.interrupt_event.is_set(),
            skip_requested=job.skip_event.is_set(),
            n_iter=request.n_iter if request is not None else 1,
            batch_size=request.batch_size if request is not None else 1,
            result=_outcome(job.result) if finished else None,
        )

    def _job(self, job_id: str) -> Job:
        try:
            return self._generation.get(job_id)
        except KeyError as exc:
            raise NotFound(str(exc.args[0] if exc.args else exc), "job", job_id) from None

    def submit(self, request: GenerationRequest, source: str = "api", job_id: str | None = None) -> JobSnapshot:
        return self._queue(request, source, job_id, None)

    def _queue(self, request: GenerationRequest | None, source: str, job_id: str | None, work: Any) -> JobSnapshot:
        from webui.generation.service import QueueFullError

        try:
            job = self._generation.submit(request, source=source, work=work, job_id=job_id)  # type: ignore[arg-type]
        except QueueFullError as exc:
            raise QueueFull(str(exc)) from None
        except ValueError as exc:  # an id a job has already (force_task_id)
            raise RequestError("force_task_id", str(exc)) from None
        return self._snapshot(job, None)

    def job(self, job_id: str, preview_after: int | None = None) -> JobSnapshot:
        return self._snapshot(self._job(job_id), preview_after)

    def wait(self, job_id: str, timeout: float, preview_after: int | None = None) -> JobSnapshot:
        job = self._job(job_id)
        job.wait(timeout)
        return self._snapshot(job, preview_after)

    def queue(self, preview: bool = True) -> QueueState:
        generation = self._generation
        job = generation.current
        current = self._snapshot(job, -1 if preview else None) if job is not None else None
        return QueueState(current, len(generation.waiting()))

    def queue_list(self, history: int = 50) -> QueueList:
        from webui.backend.local_queue import queue_list

        return queue_list(self._generation, history)

    def _waiting_action(self, action: str, job_id: str, *args: Any) -> ControlResult:
        job = self._job(job_id)
        if getattr(self._generation, action)(job_id, *args):
            return ControlResult(True, job_id)
        if job.finished:
            raise Refused(f"job {job_id} has finished already ({job.state}); there is nothing to {action}")
        done = {"cancel": "cancelled", "move": "moved"}[action]
        raise Refused(f"job {job_id} is running; only a waiting job can be {done}. Stop it with Interrupt")

    def cancel(self, job_id: str) -> ControlResult:
        return self._waiting_action("cancel", job_id)

    def move_job(self, job_id: str, position: int) -> ControlResult:
        return self._waiting_action("move", job_id, int(position))

    def _control(self, action: str, job_id: str | None) -> ControlResult:
        generation = self._generation
        if job_id is None:
            job = generation.current
            return ControlResult(getattr(generation, action)(), job.id if job is not None else "")
        try:
            return ControlResult(getattr(generation, action)(job_id), job_id)
        except KeyError as exc:
            raise NotFound(str(exc.args[0] if exc.args else exc), "job", job_id) from None

    def interrupt(self, job_id: str | None = None) -> ControlResult:
        return self._control("interrupt", job_id)

    def skip(self, job_id: str | None = None) -> ControlResult:
        return self._control("skip", job_id)

    # --- requests -----------------------------------------------------------------------------------

    def limits(self) -> Limits:
        engine = self._services.engine
        if hasattr(engine, "limits_now"):
            return engine.limits_now()
        return getattr(engine, "limits", None) or Limits()

    def validate(self, request: GenerationRequest, names: bool = True) -> GenerationRequest:
        """The engine's one check (``webui.generation.check``): the fields alone, or with ``names`` also the
        checkpoint, refiner, VAE, LoRAs and samplers it names (``NotFound`` lists the valid ones)."""
        from webui.generation.check import UnknownName
        from webui.generation.requests import check_fields
        from webui.xyz.grid import is_grid, validate_grid

        if is_grid(request):  # an X/Y/Z grid: every cell is checked as its own request
            return validate_grid(request, lambda cell: self.validate(cell, names))  # type: ignore[return-value]
        if not names:
            return check_fields(request, self.limits())
        try:
            return self._services.engine.check(request).request
        except UnknownName as exc:
            raise NotFound(exc.message, exc.kind, "", list(exc.valid or ()), exc.field) from None

    def count_tokens(self, text: str) -> TokenCount:
        from webui.generation.prompts import count_tokens
        from webui.models.tokenizers import clip_tokenizer

        # The bundled CLIP tokenizer: every family we run has a CLIP BPE tokenizer first (SD 1.5 / SDXL /
        # SD3: CLIP-L; SD 2.x: OpenCLIP-H, same vocabulary), so the count is the model's. Not the loaded
        # pipeline's own: a fast tokenizer shared with the worker fails with "Already borrowed".
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = clip_tokenizer(CLIP_PAD)
            used, limit = count_tokens(self._tokenizer, text or "")
            if used:
                from webui.backend.local_embeddings import count_with_embeddings

                used, limit = count_with_embeddings(self._services, self._tokenizer, text or "", (used, limit))
        return TokenCount(used, limit)

    # --- prompt styles --------------------------------------------------------------------------------

    def _style_store(self) -> Any:
        from webui.generation.styles import StyleStore

        if self._styles is None:
            services = self._services
            self._styles = StyleStore(lambda: services.paths.styles_file(services.settings))
        return self._styles

    def _style_call(self, action: str, *args: Any) -> Any:
        from webui.generation.styles import StylesFileError

        try:
            return getattr(self._style_store(), action)(*args)
        except StylesFileError as exc:
            raise TaskFailed(str(exc), "StylesFileError") from None

    def styles(self) -> list[StyleInfo]:
        return [StyleInfo(s.name, s.prompt, s.negative_prompt) for s in self._style_call("styles")]

    def apply_styles(self, prompt: str, negative_prompt: str, names: list[str]) -> StyledPrompt:
        done = self._style_call("apply", prompt or "", negative_prompt or "", list(names or ()))
        return StyledPrompt(done.prompt, done.negative_prompt, done.applied, done.unknown)

    def extract_styles(self, prompt: str, negative_prompt: str) -> StyledPrompt:
        done = self._style_call("extract", prompt or "", negative_prompt or "")
        return StyledPrompt(done.prompt, done.negative_prompt, done.applied)

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> StyleInfo:
        style = self._style_call("save", name, prompt, negative_prompt)
        log.info("style %r saved to %s", style.name, self._style_store().path)
        return StyleInfo(style.name, style.prompt, style.negative_prompt)

    # --- models -------------------------------------------------------------------------------------

    def families(self) -> list[FamilyInfo]:
        return [M.family_info(spec) for _, spec in self._services.families.items()]

    def models(self, kind: str = "checkpoint", usable: bool = True) -> list[ModelInfo]:
        catalog = self._services.catalog
        entries = catalog.usable(kind) if usable else catalog.entries(kind)
        return [M.model_info(self._services, e) for e in entries]

    def find_model(self, name: str, kind: str = "checkpoint") -> ModelInfo:
        catalog = self._services.catalog
        try:
            entry = catalog.find(name, kind=kind)
        except KeyError as exc:
            valid = [e.name for e in catalog.usable(kind)]
            raise NotFound(str(exc.args[0] if exc.args else exc), kind, name, valid) from None
        return M.model_info(self._services, entry)

    def loaded(self) -> LoadedModel | None:
        from webui.models.manager import ModelNotLoadedError

        manager = self._services.manager
        entry, family = manager.current_entry, manager.family
        if entry is None or family is None:
            return None
        try:
            notes = tuple(getattr(manager.loaded, "notes", None) or ())
        except ModelNotLoadedError:  # unloaded meanwhile
            return None
        return LoadedModel(M.model_info(self._services, entry), M.family_info(family), notes)

    def next_checkpoint(self) -> ModelInfo | None:
        manager, engine = self._services.manager, self._services.engine
        entry = manager.current_entry
        if entry is None and engine is not None:
            entry = engine.next_checkpoint()
        return M.model_info(self._services, entry) if entry is not None else None

    def _on_worker(self, action: Any, timeout: float | None, source: str) -> Any:
        """Run device work on the generation worker, after the jobs already queued; plain errors out."""
        try:
            return self._generation.call(action, timeout=timeout, label=source)
        except TimeoutError as exc:
            raise Busy(str(exc)) from None
        except Exception as exc:
            if _is_memory_refusal(exc):  # a refusal, not a failure: the message says what to free
                log.warning("%s refused: %s", source, exc)
                raise NotEnoughMemory(str(exc), type(exc).__name__) from None
            log.warning("%s failed: %s: %s", source, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            raise TaskFailed(str(exc), type(exc).__name__) from None

    def load_model(
        self, name: str, timeout: float | None = None, source: str = "model load", client: str = ""
    ) -> LoadReport:
        manager = self._services.manager
        report = self._on_worker(lambda: manager.load(name), timeout, source)
        return LoadReport(
            report.name,
            report.family,
            M.family_label(self._services, report.family),
            report.seconds,
            report.from_cache,
            tuple(report.notes),
        )

    def unload_model(self, timeout: float | None = None, source: str = "unloading the checkpoint") -> None:
        self._on_worker(self._services.manager.unload, timeout, source)

    def set_vae(self, name: str | None, timeout: float | None = None, source: str = "VAE switch") -> str:
        manager = self._services.manager
        target = None if name in VAE_NONE else name
        return str(self._on_worker(lambda: manager.set_vae(target), timeout, source))

    def refresh_models(self) -> None:
        self._services.catalog.refresh()

    def _family(self, family_id: str | None) -> Any:
        return self._services.families.get(family_id) if family_id else None

    def family_choices(self, family: str | None) -> FamilyChoices:
        from webui.models.families import TASKS

        table, families = self._services.samplers, self._services.families
        assert table is not None
        spec = self._family(family)
        base = spec if spec is not None else families.get(FALLBACK_FAMILY)  # no model: the fallback family's
        if spec is None:
            by_task = {task: table.sampler_names() for task in TASKS}
        else:
            by_task = {task: table.samplers_for(spec, task) for task in TASKS}
        return FamilyChoices(
            family=M.family_info(spec) if spec is not None else None,
            defaults=M.family_info(base),
            samplers=by_task,
            all_samplers=table.sampler_names(),
            default_sampler=table.default_sampler(base),
            schedules=table.schedule_names(),
        )

    def schedules_for(self, family: str | None, sampler: str | None) -> list[str]:
        from webui.generation.samplers import SamplerError

        table = self._services.samplers
        assert table is not None
        spec = self._family(family)
        if spec is None or not sampler:
            return table.schedule_names()
        try:
            return table.schedules_for(spec, sampler)
        except SamplerError:
            return table.schedule_names()

    def samplers(self, family: str | None) -> list[SamplerInfo]:
        return M.sampler_infos(self._services, family)

    def schedules(self) -> list[ScheduleInfo]:
        return M.schedule_infos(self._services)

    def loras(self, family: str | None) -> list[LoraInfo]:
        return M.lora_rows(self._services, self._lora_headers, family)

    def embeddings(self) -> list[EmbeddingInfo]:
        from webui.backend.local_embeddings import embedding_rows

        return embedding_rows(self._services)

    def create_demo_models(self) -> Iterator[Step]:
        return M.demo_model_steps(self._services)

    def download_choices(self) -> list[DownloadChoice]:
        from webui.models.download import DEFAULT_CHECKPOINTS

        return [DownloadChoice(d.name, d.label) for d in DEFAULT_CHECKPOINTS]

    def download_checkpoint(self, name: str) -> Iterator[Step]:
        return M.download_checkpoint_steps(self._services, name)

    def download_t5_tokenizer(self) -> Iterator[Step]:
        return M.download_t5_steps(self._services)

    # --- settings and options -----------------------------------------------------------------------

    def settings(self) -> Settings:
        return self._services.settings

    def folders(self) -> Folders:
        paths = self._services.paths
        return Folders(str(paths.models), str(paths.outputs), str(paths.extensions), str(paths.config_file))

    def device_description(self, wait: bool = True) -> str | None:
        """The device and precision choice and, with a model loaded, what runs its denoiser (the CPU engine);
        None when ``wait`` is False and the device is still being chosen (torch is being imported)."""
        from webui.speed.engine_setup import engine_line

        device = self._services.device
        if device is None:
            return ""
        ready = getattr(device, "ready", None)  # a DeferredDevice while torch is imported
        if not wait and ready is not None and not ready():
            return None
        text = device.describe()
        engine = engine_line(self._services.manager)
        return f"{text}; {engine}" if text and engine else text

    def memory_usage(self) -> MemoryUsage:
        manager = self._services.manager
        ram = manager.ram_cache_usage()
        gpu = manager.device_usage()
        current = manager.current_entry
        return MemoryUsage(
            cached=tuple((name, int(n)) for name, n in ram["models"]),
            cache_bytes=int(ram["bytes"]),
            cache_budget_bytes=int(ram["budget_bytes"]),
            cache_max_models=int(ram["max_models"]),
            active=current.name if current is not None else "",
            active_bytes=int(ram["active_bytes"]),
            secondary_bytes=int(ram["secondary_bytes"]),
            on_gpu=tuple((name, int(n)) for name, n in gpu["models"]) if gpu is not None else None,
            gpu_bytes=int(gpu["bytes"]) if gpu is not None else 0,
            gpu_needed_bytes=int(gpu["needed_bytes"]) if gpu is not None else 0,
            gpu_free_bytes=int(gpu["free_bytes"]) if gpu is not None else 0,
            gpu_total_bytes=int(gpu["total_bytes"]) if gpu is not None else 0,
        )

    def options(self) -> RuntimeOptions:
        services = self._services
        root = getattr(services.writer, "root", None) or services.paths.outputs
        return RuntimeOptions(preview_every=int(getattr(services.generation, "preview_every", 0)), outputs_dir=str(root))

    def set_options(self, changes: Mapping[str, Any]) -> RuntimeOptions:
        unknown = [key for key in changes if key not in LIVE_OPTIONS]
        if unknown:
            raise RequestError(unknown[0], f"is not a live option; these are: {', '.join(LIVE_OPTIONS)}", LIVE_OPTIONS)
        if "ram_cache_models" in changes:
            self._services.manager.set_ram_cache_models(int(changes["ram_cache_models"]))
        if "ram_cache_gib" in changes:
            self._services.manager.set_ram_cache_gib(float(changes["ram_cache_gib"]))
        if "preview_every" in changes:
            self._generation.preview_every = max(0, int(changes["preview_every"]))
        return self.options()

    def setting_values(self) -> dict[str, Any]:
        return local_settings.current_values(self._services)

    def default_setting_values(self) -> dict[str, Any]:
        return local_settings.default_values(self._services)

    def extension_settings(self) -> list[ExtensionSetting]:
        return [ExtensionSetting(name, spec) for name, spec in local_settings.extension_settings(self._services)]

    def save_settings(self, values: Mapping[str, Any], reset: bool = False) -> SaveResult:
        return local_settings.save_settings(self._services, values, reset=reset)

    # --- extensions ---------------------------------------------------------------------------------

    def extensions(self) -> list[Extension] | None:
        host = self._services.extensions
        return host.extensions() if host is not None else None

    def _host_action(self, action: str, *args: Any) -> Any:
        from webui.extensions import ExtensionError

        host = self._services.extensions
        if host is None:
            raise Refused("this app was started without the extension host")
        try:
            return getattr(host, action)(*args)
        except ExtensionError as exc:
            raise Refused(str(exc)) from None

    def set_extension_enabled(self, name: str, enabled: bool) -> Extension:
        return self._host_action("set_enabled", name, enabled)

    # --- upscalers and Extras (webui.backend.local_upscale) ---------------------------------------------

    def upscalers(self, refresh: bool = False) -> list[UpscalerInfo]:
        from webui.backend.local_upscale import upscaler_list

        return upscaler_list(self._services, refresh)

    def check_extras(self, request: ExtrasRequest) -> ExtrasRequest:
        from webui.backend.local_upscale import check

        return check(self._services, request)

    def submit_extras(self, request: ExtrasRequest, source: str = "api", job_id: str | None = None) -> JobSnapshot:
        """Queue an Extras job (checked first: ``RequestError`` for a bad field); follow it with ``job``/``wait``."""
        from webui.backend.local_upscale import check, work_for

        checked = check(self._services, request)
        return self._queue(None, source, job_id, work_for(self._services, checked))

    def extras_folder_images(self, folder: str) -> tuple[tuple[Any, ...], tuple[str, ...]]:
        """The images of a batch folder inside the outputs folder (``RequestError`` for one outside)."""
        from webui.backend.local_upscale import folder_images

        return folder_images(self._services, folder)

    def install_extension_requirements(self, name: str) -> str:
        return str(self._host_action("install_requirements", name))

    # --- outputs browser ----------------------------------------------------------------------------

    def _outputs_browser(self) -> OutputsBrowser:
        from webui.backend.local_outputs import outputs_browser

        self._outputs = outputs_browser(self._services, self._outputs)
        return self._outputs

    def list_outputs(self, page: int = 1, folder: str = "all", date: str = "", per_page: int = 36) -> OutputPage:
        return self._outputs_browser().page(page, folder, date, per_page)

    def output_info(self, output_id: str) -> OutputInfo:
        return self._outputs_browser().info(output_id)

    def output_image(self, output_id: str) -> Any:
        return self._outputs_browser().image(output_id)

    def output_thumbnail(self, output_id: str) -> Any:
        return self._outputs_browser().thumbnail(output_id)

    def trash_output(self, output_id: str) -> OutputTrashed:
        return self._outputs_browser().trash(output_id)
