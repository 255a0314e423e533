"""The A1111-compatible REST API: ``/sdapi/v1/*`` on the app's own port.

Every request goes through the app's backend (``webui.backend.Backend``: plain data in and out);
generations go through its job queue, so API jobs and UI jobs take turns on the one worker that owns the device. ``txt2img``/``img2img`` answer when
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

from webui.api import convert, styles_api, views
from webui.api.errors import ApiError, ApiRoute, SafeJSONResponse, error_responses, not_enough_memory
from webui.api.schemas import (
    ControlResponse,
    EmbeddingsResponse,
    GenerationResponse,
    Img2ImgRequest,
    LoraItem,
    OptionsUpdateResponse,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    RefreshResponse,
    SamplerItem,
    SchedulerItem,
    SdModelItem,
    Txt2ImgRequest,
    UpscalerItem,
    VaeItem,
)
from webui.backend import Backend, JobSnapshot, NotFound, QueueFull
from webui.generation.requests import Limits, RequestError

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
    """The route handlers, bound to one backend and the API's own option state."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.state = views.ApiState(
            defaults=convert.ApiDefaults(), checkpoints_limit=backend.settings().ram_cache_models + 1
        )
        self.version = _version()

    @property
    def limits(self) -> Limits:
        """The limits as they are now (the Settings page replaces them)."""
        return self.backend.limits()

    # -- generation -----------------------------------------------------------------------------
    async def txt2img(self, body: Txt2ImgRequest, request: Request) -> dict[str, Any]:
        """A1111's txt2img: answers when the job is done, with base64 PNGs and the infotexts."""
        return await self._generate(body, "txt2img", request)

    async def img2img(self, body: Img2ImgRequest, request: Request) -> dict[str, Any]:
        """A1111's img2img; with a ``mask`` it inpaints (white = repaint)."""
        return await self._generate(body, "img2img", request)

    async def _generate(self, body: Any, task: str, request: Request) -> dict[str, Any]:
        call = await run_in_threadpool(self._prepare, body, task)
        job = self._submit(call, _owner(request), _task_id(body))
        if not await self._wait(job, call, request):
            return {"images": [], "parameters": {}, "info": "{}"}  # nobody is listening
        return await run_in_threadpool(self._respond, job, call)

    def _prepare(self, body: Any, task: str) -> convert.ApiCall:
        call = convert.request_from_api(body, task, self.state.defaults, self.limits, validate=False)
        styles_api.apply_request_styles(self.backend, call, body.styles)
        self._infotext_model(call, body)
        try:
            call.request = self.backend.validate(call.request)
        except NotFound as exc:  # a checkpoint, VAE, LoRA or sampler that does not exist
            raise ApiError(404, "NotFound", exc.message, exc.field or None, exc.valid) from None
        return call

    def _infotext_model(self, call: convert.ApiCall, body: Any) -> None:
        """An infotext's model that is not installed: the loaded model runs, with a warning (404 when the
        client named it in ``override_settings``; the backend's check answers that)."""
        model = call.request.sd_model_checkpoint
        if not model or "sd_model_checkpoint" in (body.override_settings or {}):
            return
        try:
            self.backend.find_model(model, "checkpoint")
        except NotFound:
            call.warnings.append(f"the infotext's model {model!r} is not installed; the loaded model was used")
            call.request = call.request.replace(sd_model_checkpoint="")

    def _submit(self, call: convert.ApiCall, owner: str = "api", job_id: str | None = None) -> JobSnapshot:
        try:
            return self.backend.submit(call.request, source=owner, job_id=job_id)
        except QueueFull as exc:
            raise ApiError(503, "QueueFull", str(exc)) from None

    async def _wait(self, job: JobSnapshot, call: convert.ApiCall, request: Request) -> bool:
        """True when the job finished, False when the client went away first."""
        delay, last_check = POLL_SECONDS[0], time.monotonic()
        while not self.backend.job(job.id).finished:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_SECONDS[1])
            if time.monotonic() - last_check < DISCONNECT_CHECK_SECONDS:
                continue
            last_check = time.monotonic()
            if await request.is_disconnected():
                if not call.request.save_images:
                    log.info("API client went away; cancelling job %s (nothing would be saved)", job.id)
                    self.backend.interrupt(job.id)
                return False
        return True

    def _respond(self, job: JobSnapshot, call: convert.ApiCall) -> dict[str, Any]:
        job = self.backend.job(job.id)
        if job.state == "failed":
            raise _failure(job)
        if job.stop_reason:  # the app stopped it (the job time budget): the client is told why
            call.warnings.append(job.stop_reason)
        assert job.result is not None
        info = convert.build_info(call, job.result, self.version, self._model_info())
        return convert.build_response(call, job.result, info)

    def _model_info(self) -> dict[str, Any]:
        loaded = self.backend.loaded()
        if loaded is None:
            return {}
        return {"sd_model_name": loaded.model.stem, "sd_model_hash": loaded.model.short_hash}

    # -- progress and control -------------------------------------------------------------------
    def progress(self, skip_current_image: Annotated[bool, Query()] = False) -> dict[str, Any]:
        """The running job: fraction done, ETA, step, and the latest live preview."""
        queue = self.backend.queue(preview=not skip_current_image)
        job, waiting = queue.current, queue.waiting
        if job is None or job.is_task:  # idle, or a task such as a model load
            state = {"queue_size": waiting, "job_count": 0}
            textinfo = job.source if job is not None else ""
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": textinfo}
        p = job.progress
        state = {
            "skipped": job.skip_requested,
            "interrupted": job.interrupt_requested,
            "job": job.id,
            "job_count": job.n_iter,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
            "job_no": min(p.images_done // max(job.batch_size, 1), max(job.n_iter - 1, 0)),
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
        done = self.backend.interrupt()
        return {"done": done.done, "job": done.job_id}

    def skip(self) -> dict[str, Any]:
        """Drop the running job's current batch and go on with the next one."""
        done = self.backend.skip()
        return {"done": done.done, "job": done.job_id}

    # -- options and lists ----------------------------------------------------------------------
    def get_options(self) -> dict[str, Any]:
        return views.get_options(self.backend, self.state)

    def set_options(
        self, values: Annotated[dict[str, Any], Body(examples=[{"sd_model_checkpoint": "x.safetensors"}])], request: Request
    ):
        """Set options; ``sd_model_checkpoint`` loads that model (after the jobs already queued). On the Ray
        backend it becomes this client's default checkpoint instead (jobs that name none run on it)."""
        return views.set_options(self.backend, self.state, values, client=_owner(request))

    def sd_models(self) -> list[dict[str, Any]]:
        return views.sd_models(self.backend)

    def sd_vae(self) -> list[dict[str, Any]]:
        return views.sd_vaes(self.backend)

    def loras(self) -> list[dict[str, Any]]:
        return views.loras(self.backend)

    def samplers(self) -> list[dict[str, Any]]:
        return views.samplers(self.backend)

    def schedulers(self) -> list[dict[str, Any]]:
        return views.schedulers(self.backend)

    def upscalers(self) -> list[dict[str, Any]]:
        """Resampling first (None, Lanczos, Nearest), then the models of models/ESRGAN, upscale_models ..."""
        from dataclasses import asdict

        return [asdict(u) for u in self.backend.upscalers()]

    def prompt_styles(self) -> list[dict[str, Any]]:
        """The styles of styles.csv (A1111's ``[{name, prompt, negative_prompt}]``)."""
        return styles_api.prompt_styles(self.backend)

    def latent_upscale_modes(self) -> list[dict[str, str]]:
        return views.latent_upscale_modes()

    def refresh_checkpoints(self) -> dict[str, int]:
        return views.refresh(self.backend, "checkpoint")

    def embeddings(self) -> dict[str, Any]:
        return views.embeddings(self.backend)

    def refresh_embeddings(self) -> None:
        """Read the embeddings folder again (every listing and every job does too)."""
        views.embeddings(self.backend)

    def refresh_loras(self) -> dict[str, int]:
        return views.refresh(self.backend, "lora")

    def refresh_vae(self) -> dict[str, int]:
        return views.refresh(self.backend, "vae")

    def unload_checkpoint(self) -> dict[str, Any]:
        """Free the loaded model (after the jobs already queued)."""
        views.on_worker("unloading the checkpoint", lambda: self.backend.unload_model(views.MODEL_LOAD_TIMEOUT))
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


def _owner(request: Request) -> str:
    """The queue list's owner of an API job: "api" and the client's address."""
    client = request.client
    return f"api {client.host}" if client is not None and client.host else "api"


TASK_ID_CHARS = 128


def _task_id(body: Any) -> str | None:
    """A1111's ``force_task_id`` (the id ``/progress`` and the queue show for the job); None when not given.
    Printable ASCII of at most 128 characters, else a 422."""
    value = getattr(body, "force_task_id", None)
    if not value:
        return None
    if len(value) > TASK_ID_CHARS or not value.isascii() or not value.isprintable():
        raise RequestError("force_task_id", f"must be printable ASCII of at most {TASK_ID_CHARS} characters")
    return value


def _failure(job: JobSnapshot) -> ApiError:
    """A failed job as an answer: 422 for a request field at fault, else 500 with the job's message."""
    if job.refusal is not None:
        return ApiError(422, "RequestError", job.refusal.message, job.refusal.field, job.refusal.valid)
    if job.memory_refusal:  # its model (or refiner) could not be loaded: not enough RAM or GPU memory
        return not_enough_memory(job.error, job.memory_refusal)
    return ApiError(500, "GenerationFailed", job.error or "the job failed; see the server log")


def build_sdapi_router(backend: Backend) -> APIRouter:
    """All ``/sdapi/v1`` routes over the backend."""
    api = SdApi(backend)
    router = APIRouter(
        prefix="/sdapi/v1", tags=["sdapi"], route_class=ApiRoute, default_response_class=SafeJSONResponse
    )
    gen_errors = error_responses(400, 404, 413, 422, 500, 503, 507)
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
        responses=error_responses(400, 404, 413, 422, 500, 507),
    )
    lists = [
        ("/sd-models", api.sd_models, list[SdModelItem]),
        ("/sd-vae", api.sd_vae, list[VaeItem]),
        ("/loras", api.loras, list[LoraItem]),
        ("/samplers", api.samplers, list[SamplerItem]),
        ("/schedulers", api.schedulers, list[SchedulerItem]),
        ("/upscalers", api.upscalers, list[UpscalerItem]),
        ("/latent-upscale-modes", api.latent_upscale_modes, list[dict[str, str]]),
        ("/prompt-styles", api.prompt_styles, list[PromptStyleItem]),
    ]
    for path, handler, model in lists:
        router.add_api_route(path, handler, methods=["GET"], response_model=model)
    for path, handler in (
        ("/refresh-checkpoints", api.refresh_checkpoints),
        ("/refresh-loras", api.refresh_loras),
        ("/refresh-vae", api.refresh_vae),
    ):
        router.add_api_route(path, handler, methods=["POST"], response_model=RefreshResponse)
    from webui.xyz.api import script_info, scripts

    router.add_api_route("/scripts", scripts, methods=["GET"], response_model=dict[str, list[str]])
    router.add_api_route("/script-info", script_info, methods=["GET"], response_model=list[dict[str, Any]])
    router.add_api_route("/embeddings", api.embeddings, methods=["GET"], response_model=EmbeddingsResponse)
    router.add_api_route("/refresh-embeddings", api.refresh_embeddings, methods=["POST"])
    router.add_api_route("/unload-checkpoint", api.unload_checkpoint, methods=["POST"])
    from webui.api.extras import add_extras_routes

    add_extras_routes(router, backend)
    router.add_api_route(
        "/png-info",
        api.png_info,
        methods=["POST"],
        response_model=PngInfoResponse,
        responses=error_responses(400, 413, 422),
    )
    return router
