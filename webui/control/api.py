"""The A1111 ControlNet extension's API (sd-webui-controlnet ``scripts/api.py``), so its clients work unchanged.

Routes (added by the built-in ``controlnet`` extension from ``webui_app_started``, through the facade):

* ``GET /controlnet/version`` -> ``{"version": 3}``;
* ``GET /controlnet/model_list?update=true`` -> ``{"model_list": ["control_v11p_sd15_canny [d14c016b]", ...]}``:
  every ControlNet, T2I-Adapter and IP-Adapter file (``update`` rescans the models folder first); the
  name is the file stem (a diffusers folder: its name) and A1111's 8-hex legacy hash;
* ``GET /controlnet/module_list?alias_names=false`` -> ``{"module_list": [...], "module_detail": {...}}``;
* ``GET /controlnet/control_types`` -> ``{"control_types": {"Canny": {"module_list", "model_list", "default_option",
  "default_model"}, ...}}`` (A1111's tabs; modules and models matched by name, as A1111 does);
* ``GET /controlnet/settings`` -> ``{"control_net_unit_count": 3}``;
* ``POST /controlnet/detect`` with ``controlnet_module``, ``controlnet_input_images`` (base64, also
  ``controlnet_images``, which webuiapi sends), ``controlnet_processor_res``, ``controlnet_threshold_a``,
  ``controlnet_threshold_b`` -> ``{"images": [base64 PNG], "info": "Success"}``.

Errors have the ``/sdapi/v1`` shape (``webui.api.errors``: ``{"error", "detail", "field", "valid"}``) and the
same body guard (size, NaN, bad text): the routes use its ``ApiRoute``. Images are decoded by
``webui.security.images`` only (PNG, JPEG, WebP). ``detect_images`` is also what the page's preview button
runs, so both answer the same way.

Everything goes through the backend (``models("control")``, ``refresh_models``, ``folders``): nothing here
loads a checkpoint or a ControlNet. The model-based preprocessors (depth) load their model in this process on
first use and keep it in the routes' own cache (``ControlNetApi.cache``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

API_VERSION = 3
UNIT_COUNT = 3  # A1111's default ``control_net_unit_count``
CONTROL_KIND = "control"
MAX_DETECT_IMAGES = 8
NO_MODEL = "None"


class DetectRequest(BaseModel):
    """The body of ``POST /controlnet/detect`` (A1111's names; unknown fields are ignored, as there)."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # webuiapi's name for the same list
    controlnet_masks: list[str] = Field(default_factory=list)
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False


class DetectError(ValueError):
    """A detect request that cannot run: ``field`` names the body field, the message says what to send."""

    def __init__(self, field: str, message: str, valid: list[str] | None = None) -> None:
        super().__init__(message)
        self.field, self.message, self.valid = field, message, valid


# --- model list --------------------------------------------------------------------------------


def legacy_hash(path: str | Path) -> str:
    """A1111's 8-hex ``model_hash`` of a control model: of the file, or of a model folder's weights (the file
    that loads, ``files.folder_weights``); "" when there is none or it cannot be read."""
    from webui.control.files import folder_weights
    from webui.models.hashes import legacy_model_hash

    path = Path(path)
    target = path if path.is_file() else folder_weights(path) if path.is_dir() else None
    if target is None:
        return ""
    try:
        return legacy_model_hash(target)
    except OSError:
        return ""


def model_title(info: Any) -> str:
    """``"stem [hash8]"`` as A1111's ControlNet lists a model (the stem alone when the file cannot be hashed)."""
    stem = Path(str(info.stem or info.name)).name
    digest = legacy_hash(info.path)  # 64 KiB read per file: cheap enough to read each time, never stale
    return f"{stem} [{digest}]" if digest else stem


def control_models(backend: Any, update: bool = False) -> list[Any]:
    """The usable control models (``ModelInfo``) the backend lists; [] when the catalog has no such kind."""
    if update:
        backend.refresh_models()
    try:
        return list(backend.models(CONTROL_KIND))
    except (KeyError, ValueError):  # a catalog without the control kind
        return []


def model_list(backend: Any, update: bool = False) -> list[str]:
    return [model_title(info) for info in control_models(backend, update)]


# --- modules -----------------------------------------------------------------------------------


def preprocessor_module() -> Any:
    """The preprocessors module (imported when first asked: numpy and scipy)."""
    from webui.control import preprocessors

    return preprocessors


def module_label(name: str) -> str:
    detail = module_info(name)
    return str(detail.get("label") or name)


def module_info(name: str) -> dict[str, Any]:
    """A module's detail (label, sliders) as module_list shows it; {} for an unknown module."""
    try:
        return dict(preprocessor_module().module_detail(name) or {})
    except (KeyError, ValueError):
        return {}


def module_list(alias_names: bool = False) -> dict[str, Any]:
    """A1111's ``module_list`` answer: names (or labels), and per module ``model_free`` and its sliders."""
    names = list(preprocessor_module().module_names())
    listed, detail = [], {}
    for name in names:
        info = module_info(name)
        key = str(info.get("label") or name) if alias_names else name
        listed.append(key)
        detail[key] = {"model_free": bool(info.get("model_free", False)), "sliders": list(info.get("sliders", []))}
    return {"module_list": listed, "module_detail": detail}


def resolve_module(module: str) -> str:
    """A module name from a name or label (A1111 accepts both); ``DetectError`` for an unknown one."""
    names = list(preprocessor_module().module_names())
    wanted = (module or "none").strip()
    if wanted in names:
        return wanted
    lowered = wanted.lower()
    for name in names:
        if name.lower() == lowered or module_label(name).lower() == lowered:
            return name
    raise DetectError(
        "controlnet_module", f"Module not available: {wanted!r} is not a preprocessor this app has", valid=names
    )


# --- control types -------------------------------------------------------------------------------

# A1111's control-type tabs: (tag, keywords a module's name/label or a model's name contains, preferred module).
CONTROL_TYPES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("All", (), "none"),
    ("Canny", ("canny",), "canny"),
    ("Depth", ("depth",), "depth"),
    ("NormalMap", ("normal",), "normal_bae"),
    ("OpenPose", ("openpose", "pose"), "openpose_full"),
    ("MLSD", ("mlsd",), "mlsd"),
    ("Lineart", ("lineart",), "lineart"),
    ("SoftEdge", ("softedge", "hed", "pidi"), "pidinet"),
    ("Segmentation", ("seg",), "segmentation"),
    ("Shuffle", ("shuffle",), "shuffle"),
    ("Tile/Blur", ("tile", "blur"), "tile_resample"),
    ("Inpaint", ("inpaint",), "inpaint_only"),
    ("T2I-Adapter", ("t2i", "t2ia", "adapter"), "none"),
    ("IP-Adapter", ("ip-adapter", "ip_adapter", "ipadapter"), "ip-adapter-auto"),
)


def _matches(text: str, keywords: Sequence[str]) -> bool:
    lowered = text.lower()
    return not keywords or any(word in lowered for word in keywords)


def control_types(backend: Any) -> dict[str, Any]:
    """A1111's ``/controlnet/control_types``: per tag the modules and models it offers and the defaults."""
    modules = list(preprocessor_module().module_names())
    models = model_list(backend)
    out: dict[str, Any] = {}
    for tag, keywords, preferred in CONTROL_TYPES:
        mine = [m for m in modules if m != "none" and (_matches(m, keywords) or _matches(module_label(m), keywords))]
        if tag == "IP-Adapter":  # an IP-Adapter file is named ip-adapter_*, its modules ip-adapter_clip_*
            mine = [m for m in modules if m.startswith("ip-adapter")]
        listed = [m for m in models if _matches(m.rsplit(" [", 1)[0], keywords)]
        if tag == "T2I-Adapter":
            listed = [m for m in listed if "ip-adapter" not in m.lower() and "ip_adapter" not in m.lower()]
        default = preferred if preferred in mine or preferred == "none" else (mine[0] if mine else "none")
        out[tag] = {
            "module_list": ["none", *mine],
            "model_list": [NO_MODEL, *listed],
            "default_option": default,
            "default_model": listed[0] if listed and tag != "All" else NO_MODEL,
        }
    return {"control_types": out}


# --- detect ------------------------------------------------------------------------------------


def _models_dir(backend: Any) -> Path | None:
    try:
        return Path(backend.folders().models)
    except Exception:  # noqa: BLE001 - a backend without folders: the preprocessor's own default
        return None


def detect_images(
    backend: Any,
    module: str,
    images: Sequence[Any],
    processor_res: float = -1,
    threshold_a: float = -1,
    threshold_b: float = -1,
    masks: Sequence[Any] | None = None,
    cache: Any = None,
) -> list[Any]:
    """Run the preprocessor ``module`` on each PIL image (with the mask of the same index, if any);
    ``DetectError`` in words for what cannot run. ``cache``: where model-based preprocessors keep their model."""
    pre = preprocessor_module()
    name = resolve_module(module)
    if not images:
        raise DetectError("controlnet_input_images", "No image selected: send at least one base64 image")
    res = int(processor_res) if processor_res and processor_res > 0 else 512
    out = []
    masks = list(masks or [])
    for i, image in enumerate(images):
        extra = {"mask": masks[i]} if i < len(masks) and masks[i] is not None else {}
        try:
            out.append(
                pre.run_preprocessor(
                    name,
                    image,
                    resolution=res,
                    threshold_a=threshold_a,
                    threshold_b=threshold_b,
                    models_dir=_models_dir(backend),
                    cache=cache,
                    **extra,
                )
            )
        except pre.PreprocessorError as exc:
            raise DetectError("controlnet_module", str(exc)) from None
    return out


def _decode(values: Sequence[str], field: str) -> list[Any]:
    from webui.api.convert import decode_image
    from webui.generation.requests import RequestError

    if len(values) > MAX_DETECT_IMAGES:
        raise DetectError(field, f"{len(values)} images; send at most {MAX_DETECT_IMAGES} per request")
    out = []
    for i, value in enumerate(values):
        try:
            out.append(decode_image(value, f"{field}[{i}]"))
        except RequestError as exc:
            raise DetectError(exc.field, exc.message) from None
    return out


# --- routes ------------------------------------------------------------------------------------


class ControlNetApi:
    """The route handlers over one backend (plain data in and out)."""

    def __init__(self, backend: Any, unit_count: Callable[[], int] | None = None) -> None:
        from webui.control.depth import CACHE_ENTRIES
        from webui.control.loading import ControlCache

        self.backend = backend
        self.unit_count = unit_count or (lambda: UNIT_COUNT)
        self.cache = ControlCache(CACHE_ENTRIES)  # the depth models /controlnet/detect loaded

    def version(self) -> dict[str, int]:
        return {"version": API_VERSION}

    def model_list(self, update: bool = True) -> dict[str, list[str]]:
        return {"model_list": model_list(self.backend, update)}

    def module_list(self, alias_names: bool = False) -> dict[str, Any]:
        return module_list(alias_names)

    def control_types(self) -> dict[str, Any]:
        return control_types(self.backend)

    def settings(self) -> dict[str, int]:
        return {"control_net_unit_count": int(self.unit_count())}

    def detect(self, body: DetectRequest) -> dict[str, Any]:
        from webui.api.convert import image_to_base64
        from webui.api.errors import ApiError

        field = "controlnet_input_images" if body.controlnet_input_images else "controlnet_images"
        try:
            resolve_module(body.controlnet_module)  # an unknown module is named before any image is decoded
            images = _decode(body.controlnet_input_images or body.controlnet_images, field)
            masks = _decode(body.controlnet_masks, "controlnet_masks") if body.controlnet_masks else None
            results = detect_images(
                self.backend,
                body.controlnet_module,
                images,
                body.controlnet_processor_res,
                body.controlnet_threshold_a,
                body.controlnet_threshold_b,
                masks=masks,
                cache=self.cache,
            )
        except DetectError as exc:
            raise ApiError(422, "RequestError", exc.message, exc.field, exc.valid) from None
        return {"images": [image_to_base64(image) for image in results], "info": "Success"}


def build_router(backend: Any, unit_count: Callable[[], int] | None = None) -> Any:
    """The ``/controlnet/*`` routes as an ``APIRouter`` whose errors have the ``/sdapi/v1`` shape."""
    from fastapi import APIRouter

    from webui.api.errors import ApiRoute, SafeJSONResponse, error_responses

    api = ControlNetApi(backend, unit_count)
    router = APIRouter(
        prefix="/controlnet", tags=["controlnet"], route_class=ApiRoute, default_response_class=SafeJSONResponse
    )
    router.add_api_route("/version", api.version, methods=["GET"])
    router.add_api_route("/model_list", api.model_list, methods=["GET"])
    router.add_api_route("/module_list", api.module_list, methods=["GET"])
    router.add_api_route("/control_types", api.control_types, methods=["GET"])
    router.add_api_route("/settings", api.settings, methods=["GET"])
    router.add_api_route("/detect", api.detect, methods=["POST"], responses=error_responses(400, 413, 422))
    return router


def register_routes(app: Any, backend: Any, unit_count: Callable[[], int] | None = None) -> None:
    """Add the ``/controlnet/*`` routes to the FastAPI ``app`` (from ``webui_app_started(app, webui)``:
    ``register_routes(app, webui.backend)``), before the page is mounted at ``/``."""
    app.include_router(build_router(backend, unit_count))
