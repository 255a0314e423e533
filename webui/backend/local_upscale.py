"""The backend's Extras part: the upscalers installed, and Extras jobs queued on the generation worker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.backend.records import NotFound, UpscalerInfo

if TYPE_CHECKING:
    from webui.app import Services
    from webui.upscale.extras import ExtrasRequest
    from webui.upscale.run import Upscalers


def upscalers_of(services: Services) -> Upscalers:
    upscalers = getattr(services, "upscalers", None)
    if upscalers is None:
        raise RuntimeError("the app was built without upscalers (webui.app.build_services)")
    return upscalers


def upscaler_list(services: Services, refresh: bool = False) -> list[UpscalerInfo]:
    return [
        UpscalerInfo(
            name=e.name,
            model_name=None if e.path is None else e.kind,
            model_path=None if e.path is None else str(e.path),
            model_url=None,
            scale=None if e.path is None else e.scale,
        )
        for e in upscalers_of(services).entries(refresh=refresh)
    ]


def check(services: Services, request: ExtrasRequest) -> ExtrasRequest:
    """The request as it will run; ``RequestError`` (422) for a bad field or an unknown upscaler."""
    from dataclasses import replace

    from webui.upscale.extras import check_extras, check_output_folder

    checked = check_extras(request, upscalers_of(services))
    if checked.output_dir:
        folder = check_output_folder(batch_folder(services, checked.output_dir), batch_roots(services))
        checked = replace(checked, output_dir=str(folder.resolve()))
    return checked


def work_for(services: Services, request: ExtrasRequest) -> Any:
    """The worker's callable for a checked request (``GenerationService.submit(work=...)``)."""
    from webui.upscale.job import run_extras

    upscalers, writer = upscalers_of(services), services.writer

    def work(ctx: Any) -> Any:
        return run_extras(request, upscalers, writer, ctx)

    return work


def batch_roots(services: Services) -> list[Path]:
    """The folders batch input and output folders must lie in: the outputs folder."""
    return [Path(services.paths.outputs)]


def batch_folder(services: Services, folder: str) -> Path:
    """``folder`` as given, a relative one taken inside the outputs folder."""
    path = Path(folder).expanduser()
    return path if path.is_absolute() else Path(services.paths.outputs) / path


def folder_images(services: Services, folder: str) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    from webui.upscale.extras import folder_images as read

    try:
        found = read(batch_folder(services, folder), batch_roots(services))
    except FileNotFoundError as exc:
        raise NotFound(str(exc), "folder", folder) from None
    return tuple(image for image, _ in found), tuple(name for _, name in found)
