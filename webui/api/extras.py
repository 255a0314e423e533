"""A1111's Extras routes: ``POST /sdapi/v1/extra-single-image`` and ``/extra-batch-images``.

The same fields as A1111 (``resize_mode``, ``upscaling_resize``, ``upscaling_resize_w/h``,
``upscaling_crop``, ``upscaler_1``, ``upscaler_2``, ``extras_upscaler_2_visibility``,
``show_extras_results``); the face-restoration fields are accepted and ignored with a warning in
the log. The job runs on the generation worker, so it waits its turn behind generations and
``/interrupt`` stops it between tiles. As A1111's API, nothing is saved unless ``save_images`` is true
(then to ``outputs/extras-images``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from webui.api.errors import ApiError, error_responses
from webui.backend import Backend, QueueFull

log = logging.getLogger(__name__)

POLL_SECONDS = (0.01, 0.1)


class ExtrasBase(BaseModel):
    resize_mode: int = Field(0, description="0: scale by upscaling_resize; 1: scale to upscaling_resize_w x _h")
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False
    save_images: bool = Field(False, description="also save the results to outputs/extras-images (A1111: never)")


class ExtrasSingleRequest(ExtrasBase):
    image: str = Field("", description="base64 PNG, JPEG or WebP")


class FileData(BaseModel):
    data: str = Field(description="base64 image")
    name: str = ""


class ExtrasBatchRequest(ExtrasBase):
    imageList: list[FileData] = Field(default_factory=list)  # A1111 spells it so


class ExtrasSingleResponse(BaseModel):
    html_info: str = ""
    image: str | None = None


class ExtrasBatchResponse(BaseModel):
    html_info: str = ""
    images: list[str] = Field(default_factory=list)


def extras_request(body: ExtrasBase, images: tuple[Any, ...], names: tuple[str, ...]) -> Any:
    from webui.upscale.extras import ExtrasRequest, ignored_warnings

    values = body.model_dump()
    warnings = ignored_warnings(values)
    for warning in warnings:
        log.warning("extras: %s", warning)
    return ExtrasRequest(
        images=images,
        names=names,
        resize_mode=body.resize_mode,
        upscaling_resize=body.upscaling_resize,
        upscaling_resize_w=body.upscaling_resize_w,
        upscaling_resize_h=body.upscaling_resize_h,
        upscaling_crop=body.upscaling_crop,
        upscaler_1=body.upscaler_1,
        upscaler_2=body.upscaler_2,
        extras_upscaler_2_visibility=body.extras_upscaler_2_visibility,
        save=body.save_images,
        warnings=warnings,
    )


class ExtrasApi:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def single(self, body: ExtrasSingleRequest, request: Request) -> dict[str, Any]:
        """Upscale one image; answers when its job ends with the result as base64 PNG."""
        from webui.api.convert import decode_image

        image = await run_in_threadpool(decode_image, body.image, "image")
        images, info = await self._run(extras_request(body, (image,), ("",)), body.show_extras_results)
        return {"html_info": info, "image": images[0] if images else None}

    async def batch(self, body: ExtrasBatchRequest, request: Request) -> dict[str, Any]:
        """Upscale each image of ``imageList``; the results in order."""
        from webui.api.convert import decode_image

        decoded = [await run_in_threadpool(decode_image, f.data, "imageList") for f in body.imageList]
        names = tuple(f.name for f in body.imageList)
        images, info = await self._run(extras_request(body, tuple(decoded), names), body.show_extras_results)
        return {"html_info": info, "images": images}

    async def _run(self, req: Any, show: bool) -> tuple[list[str], str]:
        from webui.api.convert import image_to_base64

        try:
            job = await run_in_threadpool(self.backend.submit_extras, req, "api")
        except QueueFull as exc:
            raise ApiError(503, "QueueFull", str(exc)) from None
        delay = POLL_SECONDS[0]
        while not (job := self.backend.job(job.id)).finished:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_SECONDS[1])
        if job.state == "failed":
            raise ApiError(500, "ExtrasFailed", job.error or "the upscale failed; see the server log")
        assert job.result is not None
        info = str(job.result.info.get("html_info", ""))
        if not show:
            return [], info
        images = await run_in_threadpool(lambda: [image_to_base64(im) for im in job.result.images])
        return images, info


def add_extras_routes(router: APIRouter, backend: Backend) -> None:
    api = ExtrasApi(backend)
    errors = error_responses(400, 413, 422, 500, 503)
    router.add_api_route(
        "/extra-single-image", api.single, methods=["POST"], response_model=ExtrasSingleResponse, responses=errors
    )
    router.add_api_route(
        "/extra-batch-images", api.batch, methods=["POST"], response_model=ExtrasBatchResponse, responses=errors
    )
