"""The built-in extension "controlnet": ControlNet, T2I-Adapter and IP-Adapter units on every job.

It owns A1111's ``alwayson_scripts["controlnet"]`` (``webui_script_args``: ``parse_units``), loads each
enabled unit's model beside the checkpoint (``webui_job_models``: the family is checked, the preprocessor
runs once), prepares each pass (``webui_stage_arguments``: the map fitted to the pass; IP-Adapter image
embeddings), follows the steps (``webui_step_callbacks``: the guidance window) and writes A1111's infotext
(``ControlNet 0: "Module: canny, Model: ..."``). How the units reach the denoiser is ``webui.control.apply``.

Models come from a *library* (``CatalogLibrary``: the app's catalog, kind ``control`` and ``clip_vision``,
loaded by ``webui.control.files``); the constructor takes another for tests.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from webui.hooks import JobRefused, ModelAddition, SettingSpec

log = logging.getLogger(__name__)

SCRIPT = "controlnet"
FIELD = "alwayson_scripts"
MMDIT = "mmdit"  # the variant of a ControlNet for a transformer denoiser (SD3ControlNetModel)


def family_label(family: str | None) -> str:
    if not family:
        return "another model family"
    try:
        from webui.families.registry import default_families

        return default_families().get(family).label
    except Exception:  # noqa: BLE001 - an unknown id is shown as it is
        return str(family)


class CatalogLibrary:
    """Control models from the app's catalog (kind ``control``: ``models/ControlNet``, ``models/controlnet``, ...),
    loaded by ``webui.control.files``; CLIP vision encoders from ``models/clip_vision`` (kind ``clip_vision``)."""

    def __init__(self, catalog: Any, models_dir: Path) -> None:
        from webui.control.loading import ControlCache

        self.catalog = catalog
        self.models_dir = Path(models_dir)
        self.cache = ControlCache()  # the loaded control models and image encoders (bounded, least recent out)

    def find(self, name: str) -> Any:
        if self.catalog is None:
            raise KeyError("no model catalog: ControlNet models cannot be looked up")
        try:
            return self.catalog.find(name, kind="control")
        except KeyError:
            self.catalog.refresh()  # a file put in models/ControlNet since the last scan
            return self.catalog.find(name, kind="control")

    def label(self, entry: Any, name: str) -> str:
        """The model as the infotext names it: ``"stem [hash8]"``, as ``/controlnet/model_list`` lists it."""
        from webui.control.api import model_title

        return name if name.endswith("]") else model_title(entry)

    def load(self, entry: Any, device: Any, dtype: Any) -> Any:
        from webui.control.loading import load_control

        return load_control(entry, device, dtype, cache=self.cache)

    def image_encoder(self, entry: Any, loaded: Any, module: str, device: Any, dtype: Any) -> Any:
        """The CLIP vision encoder the IP-Adapter ``entry`` reads (the module's ViT-H / bigG hint first)."""
        from webui.control.files import find_image_encoder
        from webui.control.loading import load_image_encoder

        encoders = [e for e in self.catalog.entries("clip_vision") if e.usable] if self.catalog is not None else []
        hint = _encoder_hint(module)
        if hint:
            encoders.sort(key=lambda e: not any(h in e.name.lower() for h in hint))
        chosen = find_image_encoder(entry, encoders)  # ModelLoadError naming the file and folder when none fits
        return load_image_encoder(chosen, device, dtype, cache=self.cache)


def _encoder_hint(module: str) -> tuple[str, ...]:
    if module in ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl_plus_vith"):
        return ("vit-h", "clip_h", "vith")
    if module == "ip-adapter_clip_sdxl":
        return ("bigg", "clip_g", "vit-g", "vitg")
    return ()


class ControlExtension:
    """The hook implementations (registered with ``host.register_builtin("controlnet", ...)``)."""

    def __init__(self, models_dir: str | Path | None = None, catalog: Any = None, library: Any = None) -> None:
        from webui.control.depth import CACHE_ENTRIES
        from webui.control.loading import ControlCache

        self.models_dir = Path(models_dir or "models")
        self.library = library if library is not None else CatalogLibrary(catalog, self.models_dir)
        self.preprocessor_cache = ControlCache(CACHE_ENTRIES)  # the depth models of the model-based preprocessors
        self._jobs: dict[str, Any] = {}  # job id -> JobControl (until the job's models are undone)
        self._labels: OrderedDict[str, list[str]] = OrderedDict()  # job id -> model label per enabled unit

    # --- settings and the request ---------------------------------------------------------------
    def webui_settings(self) -> list[SettingSpec]:
        return [SettingSpec("control_net_unit_count", 3, "ControlNet units shown in the UI", section="ControlNet")]

    def webui_script_args(self, name: str, args: Any, request: Any) -> Any:
        if name != SCRIPT:
            return None
        from webui.control.units import parse_units

        return [unit.as_args() for unit in parse_units(args)]  # plain data: it may cross the backend

    def webui_app_started(self, app: Any, webui: Any, options: Mapping[str, Any]) -> None:
        try:
            from webui.control.api import register_routes
        except ImportError:  # the API module is not part of this build
            return
        register_routes(app, webui.backend, unit_count=lambda: int(webui.options.get("control_net_unit_count", 3)))

    # --- the job --------------------------------------------------------------------------------
    def _units(self, request: Any) -> list[Any]:
        from webui.control.units import parse_units

        scripts = getattr(request, "alwayson_scripts", None) or {}
        return [u for u in parse_units(scripts.get(SCRIPT)) if u.enabled]

    def webui_job_models(self, event: Any) -> Any:
        try:
            return self._job_models(event)
        except JobRefused:
            raise
        except Exception as exc:  # fail the job in words rather than run it without its units
            log.exception("controlnet: preparing the units failed")
            raise JobRefused(
                f"ControlNet could not prepare its units: {type(exc).__name__}: {exc}", field=FIELD
            ) from None

    def _job_models(self, event: Any) -> Any:
        units = self._units(event.request)
        if not units:
            return None
        from webui.control.apply import JobControl

        labels, prepared = [], []
        for index, unit in enumerate(units):
            if unit.model in ("None", ""):
                raise JobRefused(
                    f"ControlNet unit {index}: no model is selected; pick a ControlNet, T2I-Adapter or IP-Adapter "
                    f"model, or disable the unit",
                    field=FIELD,
                )
            entry = self._find(index, unit)
            labels.append(self.library.label(entry, unit.model))
            if float(unit.weight) == 0.0:
                continue  # weight 0: exactly the image without the unit (nothing is loaded or run)
            prepared.append(self._prepare(index, unit, entry, event))
        self._remember(event.job_id, labels)
        if not prepared:
            return None
        job = JobControl(event.job_id, event.family, prepared, event.device, event.dtype)
        self._jobs[event.job_id] = job

        def patch(pipeline: Any) -> Any:
            undo = job.patch(pipeline)

            def undo_all() -> None:
                try:
                    undo()
                finally:
                    self._jobs.pop(event.job_id, None)

            return undo_all

        return ModelAddition("controlnet", patch=patch)

    def _remember(self, job_id: str, labels: list[str]) -> None:
        self._labels[job_id] = labels
        while len(self._labels) > 64:
            self._labels.popitem(last=False)

    def _find(self, index: int, unit: Any) -> Any:
        try:
            return self.library.find(unit.model)
        except KeyError as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise JobRefused(f"ControlNet unit {index}: {message}", field=FIELD) from None

    def _prepare(self, index: int, unit: Any, entry: Any, event: Any) -> Any:
        from webui.control.apply import Unit

        error = getattr(entry, "error", None)
        if error:
            raise JobRefused(f"ControlNet unit {index}: the model {unit.model} cannot be used: {error}", field=FIELD)
        try:
            loaded = self.library.load(entry, event.device, event.dtype)
        except JobRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - a file that does not load is the user's to fix: say so
            raise JobRefused(
                f"ControlNet unit {index}: the model {unit.model} does not load: {type(exc).__name__}: {exc}",
                field=FIELD,
            ) from None
        kind = loaded.kind
        self._check_family(index, unit, loaded, event)
        if kind == "controlnet" and str(loaded.variant) == "inpaint":
            raise JobRefused(
                f"ControlNet unit {index}: {unit.model} is an SD3 inpainting ControlNet (image + mask); this app runs "
                f"the other SD3 ControlNets only",
                field=FIELD,
            )
        u = Unit(index, unit, kind, loaded.model, variant=self._variant(loaded, event))
        if kind == "ip_adapter":
            self._prepare_ip(u, entry, loaded, event)
            return u
        self._prepare_map(u, event)
        if u.variant == MMDIT and getattr(u.model.config, "use_pos_embed", True) is False:
            u.model = _with_transformer_pos_embed(u.model, event.pipeline.transformer)
        if u.variant == "union":
            u.union_index = self._union_index(index, unit, loaded)
        return u

    def _variant(self, loaded: Any, event: Any) -> str:
        if loaded.kind == "controlnet":
            name = type(loaded.model).__name__
            if "Union" in name or str(loaded.variant).lower() in ("union", "promax"):
                return "union"
            if name.startswith("SD3") or getattr(event.pipeline, "unet", None) is None:
                return MMDIT
        return str(loaded.variant or "")

    # family: the file's own family and the shapes against the loaded denoiser
    def _check_family(self, index: int, unit: Any, loaded: Any, event: Any) -> None:
        from webui.control.files import family_mismatch, shape_mismatch

        problem = None
        if loaded.family and not _same_family(loaded.family, event.family):
            problem = family_mismatch(loaded, event.family)
        if problem is None:
            denoiser = getattr(event.pipeline, "unet", None) or event.pipeline.transformer
            problem = shape_mismatch(loaded, denoiser)
        if problem:
            raise JobRefused(f"ControlNet unit {index}: {problem}", field=FIELD)

    def _union_index(self, index: int, unit: Any, loaded: Any) -> int:
        from webui.control.preprocessors import get_module
        from webui.control.units import UNION_CONTROL_TYPES

        name = unit.union_control_type
        if name == "Unknown":
            name = get_module(unit.module).union_type
        if name == "Unknown":
            raise JobRefused(
                f"ControlNet unit {index}: {unit.model} is a ControlNet-Union model; set union_control_type to one "
                f"of {', '.join(UNION_CONTROL_TYPES)} (the preprocessor {unit.module} does not tell which)",
                field=FIELD,
            )
        idx = UNION_CONTROL_TYPES.index(name)
        count = int(getattr(loaded.model.config, "num_control_type", len(UNION_CONTROL_TYPES)))
        if idx >= count:
            raise JobRefused(
                f"ControlNet unit {index}: {unit.model} knows {count} control types; {name} needs ControlNet-Union "
                f"ProMax",
                field=FIELD,
            )
        return idx

    def _input_image(self, index: int, unit: Any, event: Any) -> tuple[Any, Any, str]:
        """The unit's image and mask, or the img2img image and mask (A1111), and the resize mode to use."""
        request = event.request
        modes = ("Just Resize", "Crop and Resize", "Resize and Fill", "Just Resize")
        image, mask, resize = unit.image, unit.mask, unit.resize_mode
        if image is None and event.task in ("img2img", "inpaint") and request.init_image is not None:
            image = request.init_image
            resize = modes[int(getattr(request, "resize_mode", 0) or 0) % 4]
            if mask is None and event.task == "inpaint":
                mask = request.mask
        if mask is None and event.task == "inpaint" and request.mask is not None:
            mask = request.mask
        if image is None:
            raise JobRefused(
                f"ControlNet unit {index} is enabled but has no image; give it an image (or disable it)",
                field=FIELD,
            )
        return image, mask, resize

    def _prepare_map(self, u: Any, event: Any) -> None:
        from webui.control.preprocessors import PreprocessorError, pixel_perfect_resolution, run_preprocessor

        unit = u.unit
        image, mask, resize = self._input_image(u.index, unit, event)
        request = event.request
        width, height = int(request.width), int(request.height)
        if event.task in ("img2img", "inpaint") and request.init_image is not None and not (width and height):
            width, height = request.init_image.size
        res = unit.processor_res
        if unit.pixel_perfect:
            res = pixel_perfect_resolution(image, width, height, resize)
        seed = int(getattr(request, "seed", 0) or 0) & 0xFFFFFFFF

        def preprocess(picture: Any, region: Any, resolution: int = res) -> Any:
            try:
                return run_preprocessor(
                    unit.module,
                    picture,
                    resolution,
                    unit.threshold_a,
                    unit.threshold_b,
                    self.models_dir,
                    mask=region,
                    seed=seed,
                    cache=self.preprocessor_cache,
                )
            except PreprocessorError as exc:
                raise JobRefused(f"ControlNet unit {u.index}: {exc}", field=FIELD) from None

        u.control_map = preprocess(image, mask)  # now: a preprocessor that cannot run refuses the job at once
        u.resize_mode = resize
        if unit.image is None and event.task in ("img2img", "inpaint"):

            def remap(picture: Any, region: Any) -> Any:
                resolution = pixel_perfect_resolution(picture, *picture.size) if unit.pixel_perfect else res
                return preprocess(picture, region if region is not None else mask, resolution)

            u.remap = remap

    def _prepare_ip(self, u: Any, entry: Any, loaded: Any, event: Any) -> None:
        from webui.control.apply import encode_ip_image, ip_wants_hidden_states

        unit = u.unit
        if getattr(event.pipeline, "unet", None) is None:
            raise JobRefused(
                f"ControlNet unit {u.index}: IP-Adapters run on SD 1.5 and SDXL checkpoints here, not "
                f"{family_label(event.family)}",
                field=FIELD,
            )
        image = unit.image
        if image is None and event.task in ("img2img", "inpaint"):
            image = event.request.init_image
        if image is None:
            raise JobRefused(f"ControlNet unit {u.index}: the IP-Adapter needs an image", field=FIELD)
        u.encoder = self._encoder(u.index, unit, entry, loaded, event)
        u.embeds = encode_ip_image(image, u.encoder, ip_wants_hidden_states(u.model))

    def _encoder(self, index: int, unit: Any, entry: Any, loaded: Any, event: Any) -> Any:
        try:
            return self.library.image_encoder(entry, loaded, unit.module, event.device, event.dtype)
        except JobRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - ModelLoadError: which encoder to put where
            raise JobRefused(f"ControlNet unit {index}: {exc}", field=FIELD) from None

    # --- the passes --------------------------------------------------------------------------------
    def webui_stage_arguments(self, event: Any) -> Any:
        job = self._jobs.get(event.job_id)
        if job is None:
            return None
        if not job.patched:
            self._jobs.pop(event.job_id, None)
            raise JobRefused(
                f"ControlNet could not be applied to the checkpoint: {job.patch_error or 'the patch did not run'}",
                field=FIELD,
            )
        try:
            return job.begin_pass(event) or None
        except JobRefused:
            raise
        except Exception as exc:  # fail the job in words rather than run it without its units
            log.exception("controlnet: preparing the %s pass failed", event.stage)
            raise JobRefused(
                f"ControlNet could not prepare the {event.stage} pass: {type(exc).__name__}: {exc}", field=FIELD
            ) from None

    def webui_step_callbacks(self, event: Any) -> Any:
        job = self._jobs.get(event.job_id)
        if job is None or job.current is None or job.current.pipe is not event.pipeline:
            return None

        def follow(pipeline: Any, step_index: int, timestep: Any, tensors: Mapping[str, Any]) -> dict:
            job.after_step(step_index)
            return {}

        follow.tensor_inputs = ["latents"]  # type: ignore[attr-defined]
        return follow

    # --- infotext ----------------------------------------------------------------------------------
    def webui_before_save(self, event: Any) -> Any:
        from webui.control.units import unit_infotext

        try:
            units = self._units(event.request)
        except JobRefused:
            return None
        if not units:
            return None
        labels = self._labels.get(event.job_id) or []
        return {
            f"ControlNet {i}": unit_infotext(unit, labels[i] if i < len(labels) else unit.model)
            for i, unit in enumerate(units)
        }

    def webui_infotext_pasted(self, text: str, fields: dict) -> None:
        from webui.control.units import units_from_infotext

        for i, unit in enumerate(units_from_infotext(fields)):
            for key, value in unit.items():
                fields.setdefault(f"ControlNet {i} {key}", value)


def _same_family(a: str, b: str) -> bool:
    """Whether a control model made for family ``a`` runs on a checkpoint of family ``b``: the same family, or
    families of one architecture (the adapters say so as for LoRAs: SD3 Medium's models on SD3.5 Medium); the
    shapes are checked against the loaded denoiser after this."""
    if a == b:
        return True
    from webui.families.registry import BUILTIN

    adapters = {f.id: f for f in BUILTIN}
    fa, fb = adapters.get(a), adapters.get(b)
    if fa is None or fb is None:
        return False
    return fb.accepts_lora_group(fa.lora_group) or fa.accepts_lora_group(fb.lora_group)  # then the shapes decide


def _with_transformer_pos_embed(model: Any, transformer: Any) -> Any:
    """SD3.5 Large ControlNets share the transformer's positional embedding (the diffusers pipeline attaches it in
    its constructor); the loaded model is shared by the cache, so a shallow copy gets it."""
    import copy

    twin = copy.copy(model)  # shares every weight; only the attribute below differs
    twin._modules = dict(model._modules)
    twin.pos_embed = model._get_pos_embed_from_transformer(transformer).to(model.device, model.dtype)
    return twin


__all__: Sequence[str] = ("CatalogLibrary", "ControlExtension")
