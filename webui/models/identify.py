"""Identify once: what a model file or diffusers folder is, as a typed ``ModelRecord``.

One detector for everything under ``models/``: single files are read from their safetensors header alone
(keys and shapes, no tensor data), diffusers folders from ``model_index.json`` and the denoiser's
``config.json``. Which family a checkpoint belongs to is asked of every family adapter
(``FamilyAdapter.match_file`` / ``match_folder``); the one that recognises it most specifically reads
its parts. The catalog stores the record in its entry and the manager hands that record to the loader,
so what the checkpoint list shows is what loads.

``identify(path)`` never raises for a bad file: the record's ``error`` says why it cannot be used.
``identify_checkpoint`` / ``identify_header`` / ``identify_folder`` raise ``UnsupportedModelError``.
Pickle files (``.ckpt``) are never opened here; the loader identifies them from their tensors once it has
read them with the weights-only unpickler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from webui.families.base import VAE_PREFIX, UnsupportedModelError
from webui.families.registry import best_match
from webui.models.demo import DEMO_METADATA_KEY
from webui.models.safetensors_header import ModelFileError, SafetensorsHeader, read_header

log = logging.getLogger(__name__)

__all__ = [
    "ModelRecord",
    "UnsupportedModelError",
    "identify",
    "identify_checkpoint",
    "identify_folder",
    "identify_header",
]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_NOTE = "pickle-based file: loaded with a safe loader that refuses code; safetensors is preferred"
# Components of a diffusers folder the app does not use, and what to do about them.
IGNORED_COMPONENTS: Mapping[str, str] = {
    "controlnet": "the folder's controlnet is not used: its checkpoint loads without it",
}


@dataclass(frozen=True)
class ModelRecord:
    """What one model file or folder is. Frozen: made once by ``identify``, then only read."""

    path: Path
    # "checkpoint", "lora", "vae", "text_encoder", or (webui.control.files) "controlnet", "t2i_adapter",
    # "ip_adapter", "clip_vision" ("unknown" / the catalog kind when it could not be read)
    kind: str
    format: str  # "safetensors" or "ckpt" (single files), "diffusers" (a folder)
    family: str | None = None  # FamilyAdapter id (checkpoints; None for a .ckpt not read yet)
    # Parts a checkpoint carries: "unet"/"transformer", "vae", and text encoder slot ids.
    components: frozenset[str] = frozenset()
    in_channels: int = 0
    denoiser_prefix: str = ""  # key prefix of the denoiser in a single file ("" in folders and bare files)
    variant: str = ""  # "", "inpaint", "v_pred"
    notes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # folder components the app does not load (a ControlNet pipeline's controlnet)
    # LoRAs: nothing yet; VAEs: latent_channels; text encoders: slot; .ckpt files: a note.
    info: Mapping[str, object] = field(default_factory=dict)
    demo: bool = False  # a tiny demo model of ours (safetensors metadata webui.demo)
    error: str | None = None  # why it cannot be used ("name: reason")
    # (size, mtime_ns) of the file (of model_index.json for a folder) when it was identified; None if unknown
    stamp: tuple[int, int] | None = None

    @property
    def inpaint(self) -> bool:
        return self.in_channels == 9

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def single_file(self) -> bool:
        return self.format != "diffusers"

    @property
    def reason(self) -> str:
        """The error without the leading file name."""
        text = self.error or ""
        head = f"{self.path.name}: "
        return text.removeprefix(head)

    def missing_text_encoders(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(te for te in wanted if te not in self.components)


def _format(path: Path) -> str:
    return "ckpt" if path.suffix.lower() in PICKLE_SUFFIXES else "safetensors"


def stamp_of(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or of a folder's model_index.json (a one-model folder in a control model folder:
    of its weights); None when there is none."""
    if path.is_dir() and not (path / "model_index.json").is_file():
        from webui.control.files import folder_weights

        path = folder_weights(path) or path / "model_index.json"
    try:
        st = (path / "model_index.json").stat() if path.is_dir() else path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def is_current(record: ModelRecord) -> bool:
    """The file is as it was when ``record`` was made (a record without a stamp is taken as current)."""
    return record.stamp is None or stamp_of(record.path) == record.stamp


def identify(path: Path | str, expect: str | None = None, families: Any = None) -> ModelRecord:
    """The record of a file or diffusers folder; never raises for a bad one (``record.error`` says why).

    ``expect="checkpoint"``: only a checkpoint will do, and the error says what else the file looks like.
    Otherwise the file is sorted into a kind (checkpoint, lora, vae, text_encoder).
    """
    path = Path(path)
    fmt = "diffusers" if path.is_dir() else _format(path)
    if expect in CONTROL_CATALOG_KINDS:
        return _identify_control(path, fmt, expect, families)
    stamp = stamp_of(path)
    try:
        if fmt == "diffusers":
            record = identify_folder(path, families)
        elif fmt == "ckpt":  # never unpickled while scanning
            record = ModelRecord(path, expect or "checkpoint", fmt, info={"note": PICKLE_NOTE})
        elif expect == "checkpoint":
            record = identify_checkpoint(read_header(path), families)
        else:
            record = identify_header(read_header(path), families)
        return replace(record, stamp=stamp)
    except ModelFileError as exc:
        return ModelRecord(path, expect or "unknown", fmt, error=str(exc))
    except OSError as exc:
        return ModelRecord(path, expect or "unknown", fmt, error=f"{path.name}: cannot be read ({exc.strerror or exc})")
    except Exception as exc:  # identifying must never stop a scan
        log.exception("unexpected error reading %s", path)
        return ModelRecord(
            path, expect or "unknown", fmt, error=f"{path.name}: cannot be read ({type(exc).__name__}: {exc})"
        )


# Catalog kinds of control models (webui.control.files): their files are identified there.
CONTROL_CATALOG_KINDS = ("control", "clip_vision")


def _identify_control(path: Path, fmt: str, expect: str, families: Any) -> ModelRecord:
    """A file or model folder in a ControlNet / IP-Adapter / clip_vision folder (never raises; pickles never opened)."""
    from webui.control import files

    if fmt == "ckpt":
        return files.pickle_record(path, expect)
    try:
        if fmt == "diffusers":
            record = files.identify_control_folder(path, expect, families)
        else:
            header = read_header(path)
            try:
                record = files.identify_control_file(header, expect, families)
            except UnsupportedModelError:
                record = _other_record(header, families)  # a checkpoint, LoRA ...: the catalog says where it goes
                if record is None:
                    raise
        return replace(record, stamp=files.stamp(path))
    except ModelFileError as exc:
        return ModelRecord(path, expect, fmt, error=str(exc))
    except OSError as exc:
        return ModelRecord(path, expect, fmt, error=f"{path.name}: cannot be read ({exc.strerror or exc})")
    except Exception as exc:  # identifying must never stop a scan
        log.exception("unexpected error reading %s", path)
        return ModelRecord(path, expect, fmt, error=f"{path.name}: cannot be read ({type(exc).__name__}: {exc})")


def _other_record(header: SafetensorsHeader, families: Any) -> ModelRecord | None:
    """What a file that is not a control model is instead (a checkpoint, LoRA, VAE, text encoder), or None."""
    try:
        return identify_header(header, families)
    except UnsupportedModelError:
        return None


# --- single files ---------------------------------------------------------------------------------


def identify_checkpoint(header: SafetensorsHeader, families: Any = None) -> ModelRecord:
    """The record of a single-file checkpoint; ``UnsupportedModelError`` with what it seems to be otherwise."""
    family = best_match(lambda f: f.match_file(header), families)
    if family is None:
        what = _what_else(header)
        if what:
            raise UnsupportedModelError(header.path, f"not a checkpoint: this looks like {what}")
        raise UnsupportedModelError(
            header.path,
            "not a Stable Diffusion checkpoint this app knows (no SD1/SD2/SDXL UNet or SD3 MMDiT keys found)",
        )
    facts = family.read_file(header)
    return ModelRecord(
        path=header.path,
        kind="checkpoint",
        format=_format(header.path),
        family=family.id,
        components=facts.components,
        in_channels=facts.in_channels,
        denoiser_prefix=facts.denoiser_prefix,
        variant=facts.variant,
        notes=facts.notes,
        demo=_demo(header),
    )


def identify_header(header: SafetensorsHeader, families: Any = None) -> ModelRecord:
    """Sort a file into checkpoint / lora / vae / text_encoder, or raise ``UnsupportedModelError``."""
    try:
        return identify_checkpoint(header, families)
    except UnsupportedModelError:
        pass
    kind, info = _other_kind(header)
    if kind is None:
        control = _control_record(header, families)
        if control is not None:
            return control
        identify_checkpoint(header, families)  # raises with the best description
        raise AssertionError("unreachable")
    return ModelRecord(header.path, kind, _format(header.path), info=info, demo=_demo(header))


def _control_record(header: SafetensorsHeader, families: Any) -> ModelRecord | None:
    """A ControlNet / T2I-Adapter / IP-Adapter / CLIP vision file found where another kind was expected."""
    from webui.control import files

    try:
        found = files.detect(header)
    except UnsupportedModelError:
        return None
    if found is None:
        return None
    try:
        return files.identify_control_file(header, families=families)
    except UnsupportedModelError:
        return None


def _demo(header: SafetensorsHeader) -> bool:
    return header.metadata.get(DEMO_METADATA_KEY) == "true"


def _other_kind(header: SafetensorsHeader) -> tuple[str | None, dict]:
    keys = list(header.keys())
    if any(k.startswith(("lora_", "lycoris_")) or ".lora" in k or ".hada_" in k or ".lokr_" in k for k in keys):
        return "lora", {}
    channels = _vae_latent_channels(header)
    if channels:
        return "vae", {"latent_channels": channels}
    slot = _text_encoder_slot(header)
    if slot:
        return "text_encoder", {"slot": slot}
    return None, {}


def _what_else(header: SafetensorsHeader) -> str | None:
    """A description of a file that is not a checkpoint we support, or None if unknown."""
    keys = list(header.keys())
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        return "a Flux model, which this app does not support"
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) or ".lora_" in k or ".lora." in k for k in keys):
        return "a LoRA; put it in models/Lora and use it with <lora:name:weight> in the prompt"
    if _vae_latent_channels(header):
        return "a VAE; put it in models/VAE"
    if _text_encoder_slot(header):
        return "a text encoder; put it in models/text_encoder"
    if any("control_model" in k or k.startswith("controlnet") for k in keys):
        return "a ControlNet model, which is not supported yet"
    if any(k.startswith(("emb_params", "string_to_param")) for k in keys):
        return "a textual-inversion embedding, which is not supported yet"
    if any(k.startswith(("down_blocks.", "transformer_blocks.", "conv_in.")) for k in keys):
        return "a single diffusers component (not a whole checkpoint); use the diffusers folder it came from"
    return None


def _vae_latent_channels(header: SafetensorsHeader) -> int | None:
    for prefix in ("", VAE_PREFIX, "vae."):
        conv = header.shape(prefix + "encoder.conv_out.weight")
        dec = header.shape(prefix + "decoder.conv_in.weight")
        if conv and dec and len(dec) == 4:
            return dec[1]
    return None


def _text_encoder_slot(header: SafetensorsHeader) -> str | None:
    keys = header.keys()
    if any(k.startswith(("encoder.block.0.layer.0.SelfAttention", "shared.")) for k in keys):
        return "t5xxl"
    emb = None
    for k in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
        emb = emb or header.shape(k)
    if emb and len(emb) == 2:
        has_proj = any(k.endswith("text_projection.weight") for k in keys)
        return "clip_g" if has_proj and emb[1] != 768 else "clip_l"
    return None


# --- diffusers folders ------------------------------------------------------------------------------


class FolderView:
    """What a family adapter may read of a diffusers folder: the index, and component configs (read once)."""

    def __init__(self, path: Path, index: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.index = index
        cls = index.get("_class_name", "")
        self.class_name = cls if isinstance(cls, str) else ""
        self._configs: dict[str, dict] = {}

    def present(self, name: str) -> bool:
        """The index lists component ``name`` with a library (``[null, null]`` is absent)."""
        value = self.index.get(name)
        return isinstance(value, list) and bool(value) and value[0] is not None

    def config(self, component: str) -> dict:
        """``<component>/config.json`` ({} when there is none)."""
        if component not in self._configs:
            self._configs[component] = _read_json(self.path, f"{component}/config.json")
        return self._configs[component]

    def in_channels(self, component: str, default: int) -> int:
        value = self.config(component).get("in_channels", default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 64:
            raise UnsupportedModelError(
                self.path, f"{component}/config.json has no valid in_channels ({str(value)[:40]})"
            )
        return value


def _read_json(folder: Path, name: str, required: bool = False) -> dict:
    path = folder / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise UnsupportedModelError(folder, f"not a diffusers model folder: no {name}") from None
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(folder, f"cannot read {name}: {exc}") from None
    return data if isinstance(data, dict) else {}


def identify_folder(folder: Path | str, families: Any = None) -> ModelRecord:
    """The record of a diffusers folder, from ``model_index.json`` and the component configs."""
    folder = Path(folder)
    view = FolderView(folder, _read_json(folder, "model_index.json", required=True))
    family = best_match(lambda f: f.match_folder(view), families)
    if family is None:
        shown = view.class_name or "(unnamed)"
        raise UnsupportedModelError(folder, f"diffusers pipeline {shown[:80]} is not supported")
    facts = family.read_folder(view)
    ignored = tuple(name for name in IGNORED_COMPONENTS if view.present(name))
    return ModelRecord(
        path=folder,
        kind="checkpoint",
        format="diffusers",
        family=family.id,
        components=facts.components,
        in_channels=facts.in_channels,
        denoiser_prefix=facts.denoiser_prefix,
        variant=facts.variant,
        notes=(*facts.notes, *(IGNORED_COMPONENTS[name] for name in ignored)),
        ignored=ignored,
    )


def with_error(record: ModelRecord, reason: str) -> ModelRecord:
    """The record marked unusable, with ``reason`` (the catalog's "move it to ..." messages)."""
    return replace(record, error=str(ModelFileError(record.path, reason)))
