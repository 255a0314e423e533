"""The Extras job: upscale images (one, a batch of uploads, or a folder) and save them to outputs/extras-images.

A1111's fields: ``resize_mode`` 0 scales by ``upscaling_resize``, 1 resizes to
``upscaling_resize_w`` x ``upscaling_resize_h`` (the factor that covers that size; with
``upscaling_crop`` the result is centre-cropped to it exactly); ``upscaler_2`` is blended over
``upscaler_1``'s result at ``extras_upscaler_2_visibility``. The infotext is A1111's
(``Postprocess upscale by: 2, Postprocess upscaler: ...``), appended to the source image's own
parameters where it has them, so PNG Info still reads the generation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.generation.requests import RequestError
from webui.upscale.run import TileOptions, Upscalers, blend, centre_crop, scale_to_fit

log = logging.getLogger(__name__)

MAX_SCALE = 8.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what webui.security.images opens
IGNORED_FIELDS = ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight")


@dataclass(frozen=True)
class ExtrasRequest:
    images: tuple[Any, ...] = ()  # PIL images
    names: tuple[str, ...] = ()  # their file names ("" when none), for the batch's output names
    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    save: bool = True
    output_dir: str = ""  # a folder inside the outputs folder to save into ("": outputs/extras-images)
    tiles: TileOptions | None = None  # None: the settings' (Upscalers.tiles)
    warnings: tuple[str, ...] = field(default=())


def ignored_warnings(values: dict[str, Any]) -> tuple[str, ...]:
    """Warnings for the face-restoration fields A1111 has and this app does not (accepted, not applied)."""
    return tuple(
        f"{name} is accepted and ignored: face restoration (GFPGAN, CodeFormer) is not part of this app"
        for name in IGNORED_FIELDS
        if values.get(name)
    )


def check_extras(req: ExtrasRequest, upscalers: Upscalers) -> ExtrasRequest:
    """The request with its upscaler names as installed; ``RequestError`` for the first bad field."""
    from dataclasses import replace

    if not req.images:
        raise RequestError("image", "no image to upscale; upload one (or a batch)")
    if req.resize_mode not in (0, 1):
        raise RequestError("resize_mode", f"0 (scale by) or 1 (scale to), got {req.resize_mode}")
    if req.resize_mode == 0 and not 1.0 <= req.upscaling_resize <= MAX_SCALE:
        raise RequestError("upscaling_resize", f"between 1 and {MAX_SCALE:g}, got {req.upscaling_resize}")
    if req.resize_mode == 1 and not (1 <= req.upscaling_resize_w <= 8192 and 1 <= req.upscaling_resize_h <= 8192):
        raise RequestError(
            "upscaling_resize_w", "upscaling_resize_w and upscaling_resize_h must each be between 1 and 8192 pixels"
        )
    if not 0.0 <= req.extras_upscaler_2_visibility <= 1.0:
        raise RequestError("extras_upscaler_2_visibility", "must be between 0 and 1")
    first = _name(upscalers, req.upscaler_1, "upscaler_1")
    second = _name(upscalers, req.upscaler_2, "upscaler_2")
    return replace(req, upscaler_1=first, upscaler_2=second)


def _name(upscalers: Upscalers, name: str, field_name: str) -> str:
    try:
        return upscalers.find(name or "None").name
    except KeyError as exc:
        names = [e.name for e in upscalers.entries()]
        raise RequestError(field_name, str(exc.args[0]), names) from None


def factor_for(req: ExtrasRequest, image: Any) -> float:
    if req.resize_mode == 1:
        return scale_to_fit(image.width, image.height, req.upscaling_resize_w, req.upscaling_resize_h)
    return float(req.upscaling_resize)


def _number(value: float) -> str:
    return f"{value:g}"


def infotext_params(req: ExtrasRequest, image: Any) -> dict[str, str]:
    """A1111's postprocessing keys for one image, in its order."""
    params: dict[str, str] = {}
    if req.resize_mode == 1:
        params["Postprocess upscale to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
        if req.upscaling_crop:
            params["Postprocess crop to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
    else:
        params["Postprocess upscale by"] = _number(factor_for(req, image))
    params["Postprocess upscaler"] = req.upscaler_1
    if req.upscaler_2 != "None" and req.extras_upscaler_2_visibility > 0:
        params["Postprocess upscaler 2"] = req.upscaler_2
    return params


def postprocess_line(params: dict[str, str]) -> str:
    from webui.outputs.infotext import format_params

    return format_params(params)


def infotext_for(line: str, source: Any) -> str:
    """The saved infotext: the source's own parameters (when it has them) with the postprocess keys after."""
    from webui.outputs.writer import read_infotext

    try:
        existing = (read_infotext(source) or "").rstrip()
    except Exception:  # noqa: BLE001 - a source without readable metadata is an image all the same
        existing = ""
    return f"{existing}, {line}" if existing else line


def upscale_one(req: ExtrasRequest, image: Any, upscalers: Upscalers, between: Any = None) -> Any:
    """One image through upscaler 1 (and 2, blended), then cropped when ``resize to`` asks for it."""
    factor = factor_for(req, image)
    out = upscalers.upscale(image, factor, req.upscaler_1, req.tiles, between)
    if req.upscaler_2 != "None" and req.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale(image, factor, req.upscaler_2, req.tiles, between)
        out = blend(out, second, req.extras_upscaler_2_visibility)
    if req.resize_mode == 1 and req.upscaling_crop:
        out = centre_crop(out, req.upscaling_resize_w, req.upscaling_resize_h)
    return out


def folder_images(folder: Path, roots: list[Path]) -> list[tuple[Any, str]]:
    """The images of a batch folder (not descended into), refused unless it lies inside one of ``roots``."""
    from webui.security.images import NotAnImage, open_image

    check_folder(folder, roots, "input_dir")
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            try:
                found.append((open_image(path), path.name))
            except NotAnImage:
                log.warning("extras: %s is not an image it can read; skipped", path.name)
    if not found:
        raise RequestError("input_dir", f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def check_folder(folder: Path, roots: list[Path], field_name: str) -> Path:
    from webui.security.files import is_inside

    if not any(is_inside(Path(folder), Path(root)) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise RequestError(field_name, f"{folder} is not inside a folder batches may use ({allowed}); move it there")
    if not Path(folder).is_dir():
        raise RequestError(field_name, f"{folder} is not a folder")
    return Path(folder)


def check_output_folder(folder: Path, roots: list[Path]) -> Path:
    """A batch's output folder: inside one of ``roots`` (created when missing); ``RequestError`` otherwise."""
    from webui.security.files import is_inside

    if not any(is_inside(Path(folder), Path(root)) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise RequestError(
            "output_dir", f"{folder} is not inside a folder batches may use ({allowed}); choose one there"
        )
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)
