"""The read-mostly ``/sdapi/v1`` answers: model lists, samplers, upscalers, and the options.

Options (``GET``/``POST /sdapi/v1/options``): we keep no A1111 settings file, so only these
keys exist (see ``schemas.WRITABLE_OPTIONS`` for the ones POST changes):

  sd_model_checkpoint         title of the checkpoint the next job runs on: the loaded one, else the
                              one the first job will load (null only when none is installed);
                              POST loads one (on the generation worker, after the jobs already queued)
  sd_checkpoint_hash          its sha256 when known
  sd_vae                      "Automatic", "None" or a file in models/VAE; POST applies it now to
                              the loaded model and to later API jobs
  CLIP_stop_at_last_layers    clip skip of later API jobs that do not set it
  sd_checkpoints_limit        checkpoints kept in RAM, the active one included
  samples_format              file format of saved images (png, jpg, webp)
  randn_source, sd3_enable_t5 noise source (GPU/CPU) and SD3's T5, for later API jobs
  show_progress_every_n_steps live preview interval (0 = off)
  samples_save, outdir_*, live_previews_enable, eta_noise_seed_delta: read-only facts.

POST with an unknown or read-only key ignores it with a warning in the log and lists it under
``ignored`` (A1111 ignores unknown keys too); a known key with a bad value is a 422, an unknown
model or VAE a 404, and nothing is applied unless every value is good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.api.convert import ApiDefaults
from webui.api.errors import ApiError, not_enough_memory
from webui.api.schemas import WRITABLE_OPTIONS
from webui.backend import VAE_NONE, Backend, Busy, ModelInfo, NotEnoughMemory, NotFound, TaskFailed
from webui.generation.requests import HR_UPSCALERS, RNG_SOURCES, RequestError

log = logging.getLogger(__name__)

SAVE_FORMATS = ("png", "jpg", "jpeg", "webp")
MODEL_LOAD_TIMEOUT = 1800.0  # seconds a POST /options waits for the queue and the load


# --- catalog listings ------------------------------------------------------------------------


def sd_models(backend: Backend) -> list[dict[str, Any]]:
    return [
        {
            "title": m.title,
            "model_name": m.stem,
            "hash": m.short_hash,
            "sha256": m.sha256,
            "filename": m.path,
            "config": None,
            "family": m.family,
        }
        for m in backend.models("checkpoint")
    ]


def sd_vaes(backend: Backend) -> list[dict[str, Any]]:
    return [{"model_name": m.name, "filename": m.path} for m in backend.models("vae")]


def loras(backend: Backend) -> list[dict[str, Any]]:
    """A1111's Lora list; ``name`` is what goes in ``<lora:name:weight>``."""
    out = []
    for m in backend.models("lora"):
        name = Path(m.stem).name
        out.append({"name": name, "alias": name, "path": m.path, "metadata": {}})
    return out


def samplers(backend: Backend) -> list[dict[str, Any]]:
    """The loaded family's samplers, or every sampler when no model is loaded."""
    loaded = backend.loaded()
    family = loaded.family.id if loaded is not None else None
    return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in backend.samplers(family)]


def schedulers(backend: Backend) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) or None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in backend.schedules()
    ]


def upscalers() -> list[dict[str, Any]]:
    """Hires-fix image upscalers (no model files: plain resampling)."""
    return [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": None} for n in _image_up()]


def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": n} for n in HR_UPSCALERS if n.startswith("Latent")]


def _image_up() -> list[str]:
    return [n for n in HR_UPSCALERS if not n.startswith("Latent")]


def refresh(backend: Backend, kind: str) -> dict[str, int]:
    backend.refresh_models()
    return {"count": len(backend.models(kind, usable=False))}


# --- options ---------------------------------------------------------------------------------


@dataclass
class ApiState:
    """What the options change: defaults of later API jobs and the RAM cache size (one per router)."""

    defaults: ApiDefaults
    checkpoints_limit: int = 1


def get_options(backend: Backend, state: ApiState) -> dict[str, Any]:
    entry = backend.next_checkpoint()  # A1111's options always name one; None: none installed
    defaults = state.defaults
    options = backend.options()
    preview_every = options.preview_every
    return {
        "sd_model_checkpoint": entry.title if entry is not None else None,
        "sd_checkpoint_hash": entry.sha256 if entry is not None else None,
        "sd_vae": defaults.sd_vae,
        "CLIP_stop_at_last_layers": defaults.clip_skip,
        "sd_checkpoints_limit": state.checkpoints_limit,
        "samples_save": True,
        "samples_format": defaults.output_format,
        "outdir_samples": "",
        "outdir_txt2img_samples": str(Path(options.outputs_dir) / "txt2img-images"),
        "outdir_img2img_samples": str(Path(options.outputs_dir) / "img2img-images"),
        "randn_source": defaults.rng,
        "sd3_enable_t5": defaults.use_t5,
        "show_progress_every_n_steps": preview_every,
        "live_previews_enable": preview_every > 0,
        "eta_noise_seed_delta": 0,
    }


def _int_in(name: str, low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RequestError(name, f"must be a whole number between {low} and {high}, got {value!r}")
        try:
            number = int(value)
        except (ValueError, OverflowError):  # "x", nan, inf
            raise RequestError(name, f"must be a whole number between {low} and {high}, got {value!r}") from None
        if not low <= number <= high:
            raise RequestError(name, f"must be between {low} and {high}, got {number}")
        return number

    return convert


def _one_of(name: str, valid: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value)
        if text not in valid:
            raise RequestError(name, f"must be one of {', '.join(valid)}, got {value!r}", valid)
        return text

    return convert


def _flag(name: str) -> Callable[[Any], bool]:
    def convert(value: Any) -> bool:
        if not isinstance(value, bool):
            raise RequestError(name, f"must be true or false, got {value!r}")
        return value

    return convert


def _checkpoint(backend: Backend) -> Callable[[Any], ModelInfo]:
    def convert(value: Any) -> ModelInfo:
        try:
            entry = backend.find_model(str(value), "checkpoint")
        except NotFound as exc:
            raise ApiError(404, "NotFound", exc.message, "sd_model_checkpoint", exc.valid) from None
        if entry.error:
            raise RequestError("sd_model_checkpoint", entry.error)
        return entry

    return convert


def _vae(backend: Backend) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value)
        if text in VAE_NONE:
            return text or "Automatic"
        try:
            return backend.find_model(text, "vae").name
        except NotFound as exc:
            valid = ["Automatic", "None", *(exc.valid or [])]
            raise ApiError(404, "NotFound", exc.message, "sd_vae", valid) from None

    return convert


def _converters(backend: Backend) -> dict[str, Callable[[Any], Any]]:
    return {
        "sd_model_checkpoint": _checkpoint(backend),
        "sd_vae": _vae(backend),
        "CLIP_stop_at_last_layers": _int_in("CLIP_stop_at_last_layers", 1, 12),
        "sd_checkpoints_limit": _int_in("sd_checkpoints_limit", 1, 64),
        "samples_format": _one_of("samples_format", SAVE_FORMATS),
        "show_progress_every_n_steps": _int_in("show_progress_every_n_steps", -1, 1000),
        "randn_source": _one_of("randn_source", RNG_SOURCES),
        "sd3_enable_t5": _flag("sd3_enable_t5"),
    }


def set_options(backend: Backend, state: ApiState, values: Mapping[str, Any], client: str = "") -> dict[str, list[str]]:
    """Check every value, load the model if asked, then apply the rest; see the module docstring."""
    converters = _converters(backend)
    checked = {key: converters[key](value) for key, value in values.items() if key in WRITABLE_OPTIONS}
    ignored = [key for key in values if key not in WRITABLE_OPTIONS]
    if ignored:
        log.warning("POST /sdapi/v1/options: ignored %s (not settable here)", ", ".join(ignored))
    if "sd_model_checkpoint" in checked:
        entry = checked["sd_model_checkpoint"]
        what = f"loading {entry.name}"
        load = lambda: backend.load_model(entry.name, MODEL_LOAD_TIMEOUT, source=what, client=client)  # noqa: E731
        on_worker(what, load, "sd_model_checkpoint")
    defaults = state.defaults
    for key, value in checked.items():
        if key == "sd_vae":
            defaults.sd_vae = value
            if backend.loaded() is not None:
                what = f"switching the VAE to {value}"
                on_worker(what, lambda v=value, w=what: backend.set_vae(v, MODEL_LOAD_TIMEOUT, source=w))
        elif key == "CLIP_stop_at_last_layers":
            defaults.clip_skip = value
        elif key == "sd_checkpoints_limit":
            state.checkpoints_limit = value
            backend.set_options({"ram_cache_models": value - 1})
        elif key == "samples_format":
            defaults.output_format = value
        elif key == "show_progress_every_n_steps":
            backend.set_options({"preview_every": max(0, value)})
        elif key == "randn_source":
            defaults.rng = value
        elif key == "sd3_enable_t5":
            defaults.use_t5 = value
    return {"applied": list(checked), "ignored": ignored}


def on_worker(what: str, action: Callable[[], Any], field: str | None = None) -> Any:
    """A backend call that runs on the generation worker (it owns the device); a failure is a 500 with its message,
    a model that cannot fit in memory a 507 (``errors.NOT_ENOUGH_MEMORY``) naming ``field``."""
    try:
        return action()
    except Busy as exc:
        raise ApiError(503, "Busy", f"{what} did not start in time: {exc}") from None
    except NotEnoughMemory as exc:
        raise not_enough_memory(str(exc), field) from None
    except TaskFailed as exc:
        log.error("%s failed: %s: %s", what, exc.kind, exc)
        raise ApiError(500, "ServerError", f"{what} failed: {exc.kind}: {exc}") from None


def embeddings(backend: Backend) -> dict[str, Any]:
    """A1111's embedding lists for the loaded model: ``loaded`` (usable by name in prompts) and ``skipped``."""
    out: dict[str, Any] = {"loaded": {}, "skipped": {}}
    for row in backend.embeddings():
        out["loaded" if row.usable else "skipped"][row.name] = {
            "step": row.step,
            "sd_checkpoint": row.sd_checkpoint,
            "sd_checkpoint_name": row.sd_checkpoint_name,
            "shape": row.shape,
            "vectors": row.vectors,
        }
    return out
