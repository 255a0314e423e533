"""Load a checkpoint (single file or diffusers folder) into a diffusers pipeline, offline.

Single files go through ``Pipeline.from_single_file(path, config=<folder we wrote>)``, so
nothing ever asks the hub for a config. Pickle-based ``.ckpt``/``.pt`` files are read only
with ``torch.load(weights_only=True)`` and converted to a temporary safetensors file, then
take the same path. Every failure becomes a ``ModelLoadError`` that says what to do.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from webui.families.base import TEXT_ENCODERS, FamilyAdapter
from webui.families.registry import default_families
from webui.models.config_folder import t5_tokenizer_files, write_config_folder
from webui.models.identify import PICKLE_SUFFIXES, ModelRecord, identify, identify_checkpoint, is_current
from webui.models.ldm_config import ConfigInferenceError, text_encoder_config
from webui.models.mapped_load import LoadTimes
from webui.models.mapped_pipeline import mapped_pipeline, remember_finite
from webui.models.safetensors_header import ModelFileError, SafetensorsHeader, TensorInfo, read_header

log = logging.getLogger(__name__)

TEXT_ENCODER_DIR = "models/text_encoder"
T5_TOKENIZER_DIR = "models/text_encoder/t5_tokenizer"
_NO_FILES: Mapping[str, Path] = types.MappingProxyType({})


class ModelLoadError(ModelFileError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    pipeline: Any
    family: FamilyAdapter
    record: ModelRecord  # what was loaded, as identified (the catalog's record, or the file's own)
    source: Path
    # user-facing remarks, e.g. that T5 was left out
    notes: list[str] = field(default_factory=list)
    times: LoadTimes = field(default_factory=LoadTimes)  # where the load's time went

    @property
    def detection(self) -> ModelRecord:
        """The old name of ``record``."""
        return self.record


def load_checkpoint(
    path: Path,
    *,
    device: str,
    dtype: Any,
    cache_dir: Path,
    text_encoder_files: Mapping[str, Path] = _NO_FILES,
    t5_tokenizer_dir: Path | None = None,
    families: Any = None,
    load_kwargs: Mapping[str, Any] = _NO_FILES,
    record: ModelRecord | None = None,
    mapped: bool = True,
    copy_budget: int = 0,
) -> LoadedModel:
    """Load ``path`` (``.safetensors``, ``.ckpt``/``.pt``, or a diffusers folder) onto ``device``.

    ``cache_dir`` holds the generated config folders. ``text_encoder_files`` maps a slot
    ("clip_l", "clip_g", "t5xxl") to a separate text encoder file, used for the parts the
    checkpoint lacks. ``t5_tokenizer_dir`` holds the T5 tokenizer files; without them SD3
    runs without T5. ``load_kwargs`` come from the memory plan (``text_encoder_3=None`` drops T5).
    ``record``: what the catalog identified ``path`` as (``webui.models.identify``); the loader trusts it
    and identifies nothing again (unless the file changed since). Without one, ``path`` is identified
    here. ``mapped``: a single file is read through its cached load map (``webui.models.load_map``);
    False takes diffusers' ``from_single_file`` every time. ``copy_budget``: the bytes the converted copies of
    mapped loads may take on disk (``webui.models.converted_copy``; 0 = none kept). Raises ``ModelLoadError``.
    """
    path = Path(path)
    families = default_families() if families is None else families
    ctx = _Context(
        device,
        dtype,
        Path(cache_dir),
        dict(text_encoder_files),
        t5_tokenizer_dir,
        families,
        dict(load_kwargs),
        mapped,
        copy_budget,
    )
    if not path.is_dir() and not path.is_file():
        raise ModelLoadError(path, "file not found")
    suffix = path.suffix.lower()
    if not path.is_dir() and suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(
            path, f"unknown model file type {suffix!r}; use a .safetensors file, a .ckpt, or a diffusers folder"
        )
    if record is not None and not is_current(record):
        log.info("%s changed since it was listed; identifying it again", path.name)
        record = None
    if record is None:
        record = identify(path, expect="checkpoint", families=families)
    if record.error:
        raise ModelLoadError(path, record.reason)
    if record.format == "diffusers":
        from webui.models.loader_folder import load_diffusers_folder

        return load_diffusers_folder(path, record, ctx)
    if record.format == "ckpt":
        return _load_pickle(path, ctx)
    header = guard(path, lambda: read_header(path))
    return _load_single_file(path, path, header, record, ctx)


@dataclass(frozen=True)
class _Context:
    device: str
    dtype: Any
    cache_dir: Path
    text_encoder_files: Mapping[str, Path]
    t5_tokenizer_dir: Path | None
    families: Any
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    mapped: bool = True  # single files through their cached load map (webui.models.load_map)
    copy_budget: int = 0  # bytes the converted copies may take (webui.models.converted_copy)

    @property
    def drop_t5(self) -> bool:
        return "text_encoder_3" in self.load_kwargs and self.load_kwargs["text_encoder_3"] is None

    @property
    def config_dir(self) -> Path:
        return self.cache_dir / "configs"


# --- single files ------------------------------------------------------------------------------


def _load_single_file(
    source: Path, file: Path, header: SafetensorsHeader, record: ModelRecord, ctx: _Context, **extra
) -> LoadedModel:
    """Load ``file`` (``source`` itself, or a safetensors copy of it) with from_single_file."""
    import diffusers

    family = family_of(source, record, ctx.families)
    _require_vae(source, record, family)
    shapes = {k: t.shape for k, t in header.tensors.items()}
    parts = _text_encoder_parts(source, record, family, ctx)
    folder = guard(
        source,
        lambda: write_config_folder(
            ctx.config_dir,
            record,
            family,
            shapes,
            parts.t5_tokenizer_dir,
            text_encoder_shapes=parts.shapes,
        ),
    )
    cls = getattr(diffusers, family.pipeline_for(record))
    kwargs = dict(parts.modules)
    if "safety_checker" in cls._optional_components:
        kwargs.update(safety_checker=None, feature_extractor=None)
    times = LoadTimes()
    mapped = None
    if ctx.mapped and not extra:
        mapped = guard(source, lambda: mapped_pipeline(file, header, folder, cls, kwargs, ctx, times))
    if mapped is not None:
        pipe, loadmap = mapped
        finite = loadmap.finite.get(str(ctx.dtype))
        loaded = finish(pipe, family, record, source, parts.notes, ctx.device, times=times, check_finite=not finite)
        if not finite and _checks_finite(pipe, ctx.device):
            remember_finite(ctx.cache_dir, loadmap, str(ctx.dtype))
        return loaded
    start = time.perf_counter()
    pipe = guard(
        source,
        lambda: cls.from_single_file(
            str(file), config=str(folder), local_files_only=True, dtype=ctx.dtype, **kwargs, **extra
        ),
    )
    times.add("read+convert+cast", time.perf_counter() - start)
    return finish(pipe, family, record, source, parts.notes, ctx.device, times=times)


def family_of(source: Path, record: ModelRecord, families: Any) -> FamilyAdapter:
    if record.family is None or record.family not in families:
        raise ModelLoadError(source, f"this is a {record.family} checkpoint, which this app has no family for")
    return families.get(record.family)


def _require_vae(source: Path, record: ModelRecord, family: FamilyAdapter) -> None:
    if "vae" not in record.components:
        raise ModelLoadError(
            source,
            f"this {family.label} file has no VAE (it holds only the {family.denoiser_label}"
            " and maybe text encoders); use the full checkpoint that includes the VAE",
        )


@dataclass
class _TextParts:
    modules: dict[str, Any] = field(default_factory=dict)  # pipeline kwargs (models or None)
    shapes: dict[str, dict] = field(default_factory=dict)  # slot -> shapes of a separate file
    notes: list[str] = field(default_factory=list)
    t5_tokenizer_dir: Path | None = None


def _text_encoder_parts(source: Path, record: ModelRecord, family: FamilyAdapter, ctx: _Context) -> _TextParts:
    """Which text encoders come from the checkpoint, which from separate files, which are left out."""
    parts = separate_text_encoders(source, record, family, ctx)
    if "t5xxl" in family.text_slots():
        _plan_t5(record, family, ctx, parts)
    return parts


def separate_text_encoders(source: Path, record: ModelRecord, family: FamilyAdapter, ctx: Any) -> _TextParts:
    """The CLIP encoders the checkpoint lacks, from separate files; ``ModelLoadError`` naming what is missing."""
    slots = family.text_slots()
    absent = [s for s in slots if s != "t5xxl" and s not in record.components]
    missing = [s for s in absent if s not in ctx.text_encoder_files]
    if missing:
        labels = " and ".join(TEXT_ENCODERS[s].label for s in missing)
        files = " and ".join(f"{s}.safetensors" for s in missing)
        raise ModelLoadError(
            source,
            f"this {family.label} checkpoint does not include the {labels} text encoder"
            f"{'s' if len(missing) > 1 else ''}; put {files} (from the model's release) in"
            f" {TEXT_ENCODER_DIR} and load it again, or use a checkpoint that includes them",
        )
    parts = _TextParts()
    for slot in absent:
        parts.modules[slots[slot]] = _separate_text_encoder(
            Path(ctx.text_encoder_files[slot]), family, slot, ctx, parts
        )
    return parts


def _plan_t5(record: ModelRecord, family: FamilyAdapter, ctx: _Context, parts: _TextParts) -> None:
    if ctx.drop_t5:
        parts.modules.update(text_encoder_3=None, tokenizer_3=None)
        parts.notes.append(f"T5 left out by the 'Drop T5' memory mode; {family.label} runs on its CLIP encoders")
        return
    in_file = "t5xxl" in record.components
    file = ctx.text_encoder_files.get("t5xxl")
    have_tokenizer = bool(t5_tokenizer_files(ctx.t5_tokenizer_dir))
    reason = None
    if not in_file and file is None:
        reason = f"the checkpoint has no T5 encoder and there is no t5xxl file in {TEXT_ENCODER_DIR}"
    elif not have_tokenizer:
        where = ctx.t5_tokenizer_dir or T5_TOKENIZER_DIR
        reason = f"no T5 tokenizer found in {where} (it needs spiece.model or tokenizer.json)"
    if reason:
        parts.modules.update(text_encoder_3=None, tokenizer_3=None)
        parts.notes.append(f"T5 not loaded: {reason}; {family.label} runs without T5 (weaker prompt following)")
        return
    parts.t5_tokenizer_dir = ctx.t5_tokenizer_dir
    if not in_file:
        parts.modules["text_encoder_3"] = _separate_text_encoder(Path(file), family, "t5xxl", ctx, parts)


def _separate_text_encoder(file: Path, family: FamilyAdapter, slot: str, ctx: Any, parts: _TextParts) -> Any:
    from webui.models.text_encoder_files import load_text_encoder_file, strip_checkpoint_prefix

    header = guard(file, lambda: read_header(file))
    shapes = {strip_checkpoint_prefix(k): t.shape for k, t in header.tensors.items()}
    layout = "t5" if slot == "t5xxl" else "hf"
    config = guard(file, lambda: text_encoder_config(shapes, family, slot, layout=layout))
    if config is None:
        raise ModelLoadError(
            file,
            f"not a {TEXT_ENCODERS[slot].label} text encoder in transformers layout; check the file in {TEXT_ENCODER_DIR}",
        )
    parts.shapes[slot] = shapes
    parts.notes.append(f"{TEXT_ENCODERS[slot].label} loaded from {file.name}")
    return guard(file, lambda: load_text_encoder_file(file, config, family, slot, ctx.dtype))


# --- pickle files ------------------------------------------------------------------------------


def _load_pickle(path: Path, ctx: _Context) -> LoadedModel:
    """A ``.ckpt``/``.pt`` read with the weights-only unpickler, then loaded as safetensors."""
    import safetensors.torch

    state = _safe_torch_load(path)
    # Identified here, from its tensors: the catalog never unpickles (and fails fast on a non-checkpoint).
    record = guard(path, lambda: identify_checkpoint(header_from_state_dict(path, state), ctx.families))
    tensors = _for_safetensors(state, ctx.dtype)
    del state
    header = header_from_state_dict(path, tensors)
    tmp_dir = ctx.cache_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".ckpt-", suffix=".safetensors", dir=tmp_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        guard(path, lambda: safetensors.torch.save_file(tensors, str(tmp)), doing="writing a safetensors copy")
        del tensors
        # disable_mmap: read the copy into memory so that it can be deleted at once (Windows too)
        return _load_single_file(path, tmp, header, record, ctx, disable_mmap=True)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_torch_load(path: Path) -> dict:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        raise ModelLoadError(
            path,
            "this file contains code or objects that a safe loader refuses; convert it to safetensors"
            " with a tool you trust, or download the .safetensors version of the model",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            path, f"cannot read this PyTorch checkpoint ({_first_line(exc)}); it may be damaged: download it again"
        ) from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(path, "this PyTorch file does not hold a state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise ModelLoadError(path, "this PyTorch file holds no tensors")
    return state


_ST_DTYPES = {
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def header_from_state_dict(path: Path, state: Mapping[str, Any]) -> SafetensorsHeader:
    """A ``SafetensorsHeader`` describing an in-memory state dict, so ``identify`` can read it."""
    tensors = {}
    for key, t in state.items():
        dtype = _ST_DTYPES.get(str(t.dtype).removeprefix("torch."), "F32")
        tensors[key] = TensorInfo(dtype=dtype, shape=tuple(t.shape), start=0, end=0)
    return SafetensorsHeader(path=Path(path), tensors=tensors, metadata={}, file_size=0, data_start=0)


_OLD_SD1_CLIP = "cond_stage_model.transformer."


def _for_safetensors(state: Mapping[str, Any], dtype: Any) -> dict:
    """Tensors ready for ``save_file``: no EMA copies, floats cast, no shared storage."""
    out = {}
    seen: set[int] = set()
    old_clip = not any(k.startswith(_OLD_SD1_CLIP + "text_model.") for k in state)
    for key, t in state.items():
        if key.startswith("model_ema."):
            continue
        if old_clip and key.startswith(_OLD_SD1_CLIP):  # transformers < 4.19 saved CLIP without text_model.
            key = _OLD_SD1_CLIP + "text_model." + key[len(_OLD_SD1_CLIP) :]
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous() or t.untyped_storage().nbytes() != t.nbytes:
            t = t.contiguous().clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


# --- common end --------------------------------------------------------------------------------


def finish(
    pipe: Any,
    family: FamilyAdapter,
    record: ModelRecord,
    source: Path,
    notes: list[str],
    device: str,
    *,
    times: LoadTimes | None = None,
    check_finite: bool = True,
) -> LoadedModel:
    """Eval mode, completeness check, move to ``device``, the NaN/inf check (``check_finite``: not known
    to pass already for these bytes at this precision)."""
    import torch

    times = LoadTimes() if times is None else times
    start = time.perf_counter()

    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            module.eval()  # diffusers leaves a single-file T5 in train mode (dropout on)
            _fill_tied(module)
            meta = [n for n, p in module.state_dict().items() if p.is_meta]
            if meta:
                raise ModelLoadError(
                    source,
                    f"the {name} weights are incomplete ({len(meta)} missing, e.g. {meta[0]}); the file may be damaged",
                )
    absent = [n for n in required_components(family) if getattr(pipe, n, None) is None]
    if absent:
        raise ModelLoadError(source, f"the loaded pipeline lacks {', '.join(absent)}; the file is incomplete")
    times.add("check", time.perf_counter() - start)
    start = time.perf_counter()
    guard(source, lambda: pipe.to(device), doing=f"moving the model to {device}")
    times.add("move", time.perf_counter() - start)
    start = time.perf_counter()
    if check_finite:
        _refuse_nonfinite(pipe, source, device)
    times.add("finite check", time.perf_counter() - start)
    return LoadedModel(pipeline=pipe, family=family, record=record, source=source, notes=list(notes), times=times)


def _checks_finite(pipe: Any, device: str) -> bool:
    """Whether ``_refuse_nonfinite`` looks at this pipeline (it skips half precision on the CPU)."""
    import torch

    return not (device == "cpu" and getattr(pipe, "dtype", torch.float32) != torch.float32)


def _refuse_nonfinite(pipe: Any, source: Path, device: str) -> None:
    """A file whose weights hold NaN/inf would paint black images: refuse it at load, with the reason.

    Cheap on a GPU and for fp32 on the CPU (0.04 s per 100 M parameters); half precision on the
    CPU costs ~8x that (10 s for SDXL), so there the decode's NaN guard catches it instead.
    Through a load map it runs once per file and precision (the map remembers a pass).
    """
    from webui.security.weights import nonfinite_message, nonfinite_weights

    if not _checks_finite(pipe, device):
        return
    bad = nonfinite_weights(pipe.components)
    if bad:
        raise ModelLoadError(source, nonfinite_message(bad))


def _fill_tied(module: Any) -> None:
    """Re-tie embeddings that a state-dict load left on the meta device (T5's encoder.embed_tokens)."""
    if hasattr(module, "tie_weights") and any(p.is_meta for p in module.parameters()):
        module.tie_weights()


def required_components(family: FamilyAdapter) -> list[str]:
    names = [family.denoiser_component, "vae", "scheduler"]
    for slot, name in family.text_slots().items():
        if slot != "t5xxl":
            names += [name, name.replace("text_encoder", "tokenizer")]
    return names


def guard(source: Path, fn: Callable[[], Any], doing: str = "loading") -> Any:
    """Run ``fn``; turn any failure into a ``ModelLoadError`` a user can act on."""
    try:
        return fn()
    except ModelLoadError:
        raise
    except ModelFileError as exc:
        raise ModelLoadError(source, exc.reason) from exc
    except ConfigInferenceError as exc:
        raise ModelLoadError(source, f"cannot work out this model's architecture: {exc}") from exc
    except MemoryError as exc:
        raise ModelLoadError(
            source, f"not enough memory while {doing}; close other programs or use a smaller model"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the boundary where library errors become user messages
        log.exception("%s failed for %s", doing, source)
        raise ModelLoadError(source, _explain(exc, doing)) from exc


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _explain(exc: Exception, doing: str) -> str:
    text = str(exc)
    name = type(exc).__name__
    if "out of memory" in text.lower() or name == "OutOfMemoryError":
        return f"not enough device memory while {doing}; try a lower-memory mode or a smaller model"
    if "size mismatch" in text or ("shape" in text.lower() and "mismatch" in text.lower()):
        return (
            "its tensors do not match the architecture read from the file (an unusual variant of the"
            f" model?): {_first_line(exc)}"
        )
    return f"{doing} failed: {name}: {_first_line(exc)}"
