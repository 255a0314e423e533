"""The A1111-compatible REST API: ``/sdapi/v1/*`` on the app's own port.

Every generation goes through the app's job queue (``services.generation``), so API jobs and UI
jobs take turns on the one worker that owns the device. ``txt2img``/``img2img`` answer when
their job ends, as A1111 does; while they wait, the event loop stays free (the handler polls
the job, it holds no thread), so ``/progress``, ``/interrupt`` and ``/skip`` answer at once.

Status codes: 200 (done, or interrupted: the images finished so far and, as A1111, the batch being
sampled as far as it got), 400 (the body is not JSON
in UTF-8), 404 (unknown checkpoint, VAE, LoRA or sampler; the answer lists the valid names), 413
(body over the size limit), 422 (a field the app cannot use; the answer names it. A sampler and
schedule type the model cannot run as asked are no error: they fall back as in A1111, and
``info["warnings"]`` says what ran), 500 (the job failed; its message), 503
(the queue is full). Errors are JSON:
``{"error", "detail", "field", "valid"}`` (``webui.api.errors``).

A client that disconnects while waiting: its job is cancelled when nobody would get anything
from it (``save_images`` false, A1111's API default); with ``save_images`` true the job runs on
so its files are written (A1111 never cancels).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from starlette.concurrency import run_in_threadpool

from webui.api import convert, views
from webui.api.errors import ApiError, ApiRoute, SafeJSONResponse, error_responses, not_found
from webui.api.schemas import (
    ControlResponse,
    GenerationResponse,
    Img2ImgRequest,
    LoraItem,
    OptionsUpdateResponse,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    RefreshResponse,
    SamplerItem,
    SchedulerItem,
    SdModelItem,
    Txt2ImgRequest,
    UpscalerItem,
    VaeItem,
)
from webui.generation.requests import Limits, RequestError, listed_choices

log = logging.getLogger(__name__)

POLL_SECONDS = (0.01, 0.1)  # first and longest wait between looks at a running job
DISCONNECT_CHECK_SECONDS = 0.5


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("webui")
    except PackageNotFoundError:
        return ""


class SdApi:
    """The route handlers, bound to one Services object and the API's own option state."""

    def __init__(self, services: Any) -> None:
        self.services = services
        settings = services.settings
        self.state = views.ApiState(
            defaults=convert.ApiDefaults(), checkpoints_limit=getattr(settings, "ram_cache_models", 0) + 1
        )
        self.version = _version()

    @property
    def limits(self) -> Limits:
        """The engine's limits as they are now (the Settings page replaces them)."""
        return getattr(getattr(self.services, "engine", None), "limits", None) or Limits()

    # -- generation -----------------------------------------------------------------------------
    async def txt2img(self, body: Txt2ImgRequest, request: Request) -> dict[str, Any]:
        """A1111's txt2img: answers when the job is done, with base64 PNGs and the infotexts."""
        return await self._generate(body, "txt2img", request)

    async def img2img(self, body: Img2ImgRequest, request: Request) -> dict[str, Any]:
        """A1111's img2img; with a ``mask`` it inpaints (white = repaint)."""
        return await self._generate(body, "img2img", request)

    async def _generate(self, body: Any, task: str, request: Request) -> dict[str, Any]:
        call = await run_in_threadpool(self._prepare, body, task)
        job = self._submit(call)
        if not await self._wait(job, call, request):
            return {"images": [], "parameters": {}, "info": "{}"}  # nobody is listening
        return await run_in_threadpool(self._respond, job, call)

    def _prepare(self, body: Any, task: str) -> convert.ApiCall:
        call = convert.request_from_api(body, task, self.state.defaults, self.limits)
        self._check_names(call, body)
        self._check_samplers(call.request)
        return call

    def _check_samplers(self, req: Any) -> None:
        """404 before queueing for a sampler name that no model kind knows (A1111 answers 404 too).

        Any known sampler with any schedule type runs: one the family cannot run as asked falls back
        when the job runs, and the answer's ``info["warnings"]`` says what ran instead. The family is
        the requested checkpoint's, else the loaded model's; with none, the name is looked up in
        every kind. Nothing is loaded or queued for a request refused here.
        """
        from webui.generation.samplers import UnknownSampler

        samplers = self.services.samplers
        if not hasattr(samplers, "choose"):
            return
        family = self._request_family(req)
        names = [("sampler_name", req.sampler_name, req.task)]
        if req.enable_hr:
            names.append(("hr_sampler_name", req.hr_sampler_name, "img2img"))
        for field, name, task in names:
            if not name:
                continue
            try:
                if family is None:
                    samplers.resolve(name)
                else:
                    samplers.choose(family, task, name)
            except UnknownSampler as exc:
                raise ApiError(404, "NotFound", str(exc), field, exc.valid) from None

    def _request_family(self, req: Any) -> Any:
        services = self.services
        if not hasattr(services.samplers, "check"):
            return None
        if not req.sd_model_checkpoint:
            return services.manager.family if services.manager.current_entry is not None else None
        families = getattr(services, "families", None)
        try:
            family_id = services.catalog.find(req.sd_model_checkpoint, kind="checkpoint").family
            return families.get(family_id) if families is not None and family_id else None
        except KeyError:
            return None

    def _check_names(self, call: convert.ApiCall, body: Any) -> None:
        """404 before queueing for a checkpoint, VAE or LoRA that does not exist."""
        from webui.generation.prompts import extract_loras

        req = call.request
        catalog = self.services.catalog
        model = req.sd_model_checkpoint
        if model and not _exists(catalog, model, "checkpoint"):
            if "sd_model_checkpoint" in (body.override_settings or {}):
                self._raise_missing("sd_model_checkpoint", model, "checkpoint")
            call.warnings.append(f"the infotext's model {model!r} is not installed; the loaded model was used")
            call.request = req = req.replace(sd_model_checkpoint="")
        if req.refiner_checkpoint and not _exists(catalog, req.refiner_checkpoint, "checkpoint"):
            self._raise_missing("refiner_checkpoint", req.refiner_checkpoint, "checkpoint")
        if req.sd_vae not in views.VAE_NONE and not _exists(catalog, req.sd_vae, "vae"):
            self._raise_missing("sd_vae", req.sd_vae, "vae")
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            try:
                _, tags = extract_loras(getattr(req, name))
            except ValueError as exc:
                raise RequestError(name, str(exc)) from None
            for tag in tags:
                if not _exists(catalog, tag.name, "lora"):
                    self._raise_missing(name, tag.name, "lora")

    def _raise_missing(self, field: str, name: str, kind: str) -> None:
        catalog = self.services.catalog
        try:
            catalog.find(name, kind=kind)
        except KeyError as exc:
            raise not_found(field, exc, [e.name for e in catalog.usable(kind)]) from None

    def _submit(self, call: convert.ApiCall) -> Any:
        from webui.generation.service import QueueFullError

        try:
            return self.services.generation.submit(call.request, source="api")
        except QueueFullError as exc:
            raise ApiError(503, "QueueFull", str(exc)) from None

    async def _wait(self, job: Any, call: convert.ApiCall, request: Request) -> bool:
        """True when the job finished, False when the client went away first."""
        delay, last_check = POLL_SECONDS[0], time.monotonic()
        while not job.finished:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_SECONDS[1])
            if time.monotonic() - last_check < DISCONNECT_CHECK_SECONDS:
                continue
            last_check = time.monotonic()
            if await request.is_disconnected():
                if not call.request.save_images:
                    log.info("API client went away; cancelling job %s (nothing would be saved)", job.id)
                    self.services.generation.interrupt(job.id)
                return False
        return True

    def _respond(self, job: Any, call: convert.ApiCall) -> dict[str, Any]:
        if job.state == "failed":
            raise _failure(job)
        if job.stop_reason:  # the app stopped it (the job time budget): the client is told why
            call.warnings.append(job.stop_reason)
        info = convert.build_info(call, job.result, self.version, self._model_info())
        return convert.build_response(call, job.result, info)

    def _model_info(self) -> dict[str, Any]:
        entry = self.services.manager.current_entry
        if entry is None:
            return {}
        sha = views.sha256_of(self.services, entry)
        return {"sd_model_name": entry.stem, "sd_model_hash": sha[:10] if sha else None}

    # -- progress and control -------------------------------------------------------------------
    def progress(self, skip_current_image: Annotated[bool, Query()] = False) -> dict[str, Any]:
        """The running job: fraction done, ETA, step, and the latest live preview."""
        generation = self.services.generation
        job = generation.current
        waiting = len(generation.waiting())
        if job is None or job.request is None:  # idle, or a task such as a model load
            state = {"queue_size": waiting, "job_count": 0}
            textinfo = job.source if job is not None else ""
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": textinfo}
        p, req = job.progress, job.request
        state = {
            "skipped": job.skip_event.is_set(),
            "interrupted": job.interrupt_event.is_set(),
            "job": job.id,
            "job_count": req.n_iter,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
            "job_no": min(p.images_done // max(req.batch_size, 1), max(req.n_iter - 1, 0)),
            "sampling_step": p.step,
            "sampling_steps": p.steps,
            "queue_size": waiting,
        }
        image = None
        if not skip_current_image and p.preview is not None:
            image = convert.image_to_base64(p.preview)
        eta = p.eta_seconds or 0.0
        return {
            "progress": p.fraction,
            "eta_relative": eta,
            "state": state,
            "current_image": image,
            "textinfo": p.textinfo,
        }

    def interrupt(self) -> dict[str, Any]:
        """Stop the running job now; its caller gets the finished images and the current batch as far as it got."""
        job = self.services.generation.current
        return {"done": self.services.generation.interrupt(), "job": job.id if job else ""}

    def skip(self) -> dict[str, Any]:
        """Drop the running job's current batch and go on with the next one."""
        job = self.services.generation.current
        return {"done": self.services.generation.skip(), "job": job.id if job else ""}

    # -- options and lists ----------------------------------------------------------------------
    def get_options(self) -> dict[str, Any]:
        return views.get_options(self.services, self.state)

    def set_options(self, values: Annotated[dict[str, Any], Body(examples=[{"sd_model_checkpoint": "x.safetensors"}])]):
        """Set options; ``sd_model_checkpoint`` loads that model (after the jobs already queued)."""
        return views.set_options(self.services, self.state, values)

    def sd_models(self) -> list[dict[str, Any]]:
        return views.sd_models(self.services)

    def sd_vae(self) -> list[dict[str, Any]]:
        return views.sd_vaes(self.services)

    def loras(self) -> list[dict[str, Any]]:
        return views.loras(self.services)

    def samplers(self) -> list[dict[str, Any]]:
        return views.samplers(self.services)

    def schedulers(self) -> list[dict[str, Any]]:
        return views.schedulers(self.services)

    def upscalers(self) -> list[dict[str, Any]]:
        return views.upscalers()

    def latent_upscale_modes(self) -> list[dict[str, str]]:
        return views.latent_upscale_modes()

    def refresh_checkpoints(self) -> dict[str, int]:
        return views.refresh(self.services, "checkpoint")

    def refresh_loras(self) -> dict[str, int]:
        return views.refresh(self.services, "lora")

    def refresh_vae(self) -> dict[str, int]:
        return views.refresh(self.services, "vae")

    def unload_checkpoint(self) -> dict[str, Any]:
        """Free the loaded model (after the jobs already queued)."""
        views.on_worker(self.services, self.services.manager.unload, "unloading the checkpoint")
        return {}

    def png_info(self, body: PngInfoRequest) -> dict[str, Any]:
        """The infotext of an image, raw and parsed, plus its other text chunks."""
        from webui.outputs.infotext import parse_infotext
        from webui.outputs.writer import read_infotext

        if not body.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        image = convert.decode_image(body.image, "image")
        text = read_infotext(image) or ""
        items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(v, (str, int, float))}
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}


def _exists(catalog: Any, name: str, kind: str) -> bool:
    try:
        catalog.find(name, kind=kind)
    except KeyError:
        return False
    return True


def _failure(job: Any) -> ApiError:
    """A failed job as an answer: 422 for a bad request field, else 500 with the job's message."""
    from webui.generation.samplers import SamplerError

    if job.error_field:
        message = getattr(job.exception, "message", None) or job.error
        valid = listed_choices(job.exception) if job.exception is not None else None
        return ApiError(422, "RequestError", message, job.error_field, list(valid) if valid else None)
    if isinstance(job.exception, SamplerError):
        valid = listed_choices(job.exception)
        return ApiError(422, "RequestError", str(job.exception), "sampler_name", list(valid) if valid else None)
    return ApiError(500, "GenerationFailed", job.error or "the job failed; see the server log")


def build_sdapi_router(services: Any) -> APIRouter:
    """All ``/sdapi/v1`` routes over ``services`` (catalog, manager, hashes, generation, samplers, writer)."""
    api = SdApi(services)
    router = APIRouter(
        prefix="/sdapi/v1", tags=["sdapi"], route_class=ApiRoute, default_response_class=SafeJSONResponse
    )
    gen_errors = error_responses(400, 404, 413, 422, 500, 503)
    router.add_api_route(
        "/txt2img", api.txt2img, methods=["POST"], response_model=GenerationResponse, responses=gen_errors
    )
    router.add_api_route(
        "/img2img", api.img2img, methods=["POST"], response_model=GenerationResponse, responses=gen_errors
    )
    router.add_api_route("/progress", api.progress, methods=["GET"], response_model=ProgressResponse)
    router.add_api_route("/interrupt", api.interrupt, methods=["POST"], response_model=ControlResponse)
    router.add_api_route("/skip", api.skip, methods=["POST"], response_model=ControlResponse)
    router.add_api_route("/options", api.get_options, methods=["GET"], response_model=dict[str, Any])
    router.add_api_route(
        "/options",
        api.set_options,
        methods=["POST"],
        response_model=OptionsUpdateResponse,
        responses=error_responses(400, 404, 413, 422, 500),
    )
    lists = [
        ("/sd-models", api.sd_models, list[SdModelItem]),
        ("/sd-vae", api.sd_vae, list[VaeItem]),
        ("/loras", api.loras, list[LoraItem]),
        ("/samplers", api.samplers, list[SamplerItem]),
        ("/schedulers", api.schedulers, list[SchedulerItem]),
        ("/upscalers", api.upscalers, list[UpscalerItem]),
        ("/latent-upscale-modes", api.latent_upscale_modes, list[dict[str, str]]),
    ]
    for path, handler, model in lists:
        router.add_api_route(path, handler, methods=["GET"], response_model=model)
    for path, handler in (
        ("/refresh-checkpoints", api.refresh_checkpoints),
        ("/refresh-loras", api.refresh_loras),
        ("/refresh-vae", api.refresh_vae),
    ):
        router.add_api_route(path, handler, methods=["POST"], response_model=RefreshResponse)
    router.add_api_route("/unload-checkpoint", api.unload_checkpoint, methods=["POST"])
    router.add_api_route(
        "/png-info",
        api.png_info,
        methods=["POST"],
        response_model=PngInfoResponse,
        responses=error_responses(400, 413, 422),
    )
    return router
