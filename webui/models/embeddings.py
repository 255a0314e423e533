"""Textual-inversion embeddings: the files in ``models/embeddings``, read without running code.

Folders: ``<models>/embeddings`` (ours and ComfyUI's) and, when ``--models-dir`` is an A1111 ``models``
folder, A1111's ``embeddings`` folder beside it (A1111 keeps them at its root). The file stem is the
trigger word used in prompts (as A1111); sub-folders are read too, the first file of a name wins.

Formats (``read_embedding``):

* A1111 ``.pt``: ``{"string_to_param": {"*": tensor [n, D]}, "name", "step", "sd_checkpoint", ...}``
* kohya-style: ``{"emb_params": tensor [n, D]}``
* diffusers ``learned_embeds.bin`` / ``.safetensors``: one key, ``{token: tensor [D] or [n, D]}``
* SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``

``.safetensors`` are read with safetensors; ``.pt``/``.bin`` with ``torch.load(weights_only=True)``
(a pickle holding code or objects is refused, never run). Which family an embedding fits is a
question for the family adapter (``textual_inversion``, ``text_encoders``) and the loaded text
encoders' widths (``fit``): a wrong-family file is skipped with its reason, as A1111 lists it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FOLDER = "embeddings"
SUFFIXES = (".safetensors", ".pt", ".bin")
MAX_FILE_BYTES = 64 << 20  # an embedding is a few KiB; a larger file is a checkpoint or LoRA in the wrong folder
MAX_VECTORS = 75  # one 75-token chunk
SINGLE = ""  # the part key of a one-encoder file (SD 1.x / SD 2.x)
SDXL_KEYS = ("clip_l", "clip_g")


class EmbeddingError(ValueError):
    """An embedding file that cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class Embedding:
    """One embedding file. ``parts``: text encoder slot id ("clip_l", "clip_g") or ``SINGLE`` -> tensor [n, D]."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    parts: Mapping[str, Any] = field(default_factory=dict)
    vectors: int = 0
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    error: str = ""  # the file could not be read (parts is empty)

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the width of the vectors (SDXL: both encoders' widths added)."""
        return sum(int(t.shape[-1]) for t in self.parts.values())

    def describe(self) -> dict[str, Any]:
        """A1111's entry in ``GET /sdapi/v1/embeddings``."""
        return {
            "step": self.step,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "shape": self.shape,
            "vectors": self.vectors,
        }


# --- reading one file ----------------------------------------------------------------------------


def _load_raw(path: Path) -> Mapping[str, Any]:
    import pickle
    import zipfile

    import torch

    if path.suffix.lower() == ".safetensors":
        import safetensors
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise EmbeddingError(f"cannot read this safetensors file ({exc}); it may be damaged") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        raise EmbeddingError(
            "this file contains code or objects that the safe loader refuses; use the .safetensors version"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise EmbeddingError(f"cannot read this PyTorch file ({str(exc).splitlines()[0]}); it may be damaged") from None
    if not isinstance(data, Mapping):
        raise EmbeddingError("this file holds no embedding (not a dict of tensors)")
    return data


def _as_matrix(value: Any, where: str) -> Any:
    import torch

    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise EmbeddingError(f"{where} is not a tensor of floats")
    matrix = value.detach().reshape(1, -1) if value.ndim == 1 else value.detach()
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise EmbeddingError(f"{where} has the shape {tuple(value.shape)}; an embedding is [vectors, width]")
    if not bool(torch.isfinite(matrix).all()):
        raise EmbeddingError(f"{where} holds NaN or infinite values; the file is damaged")
    return matrix.float().contiguous()


def _parts(data: Mapping[str, Any]) -> dict[str, Any]:
    """The vectors of each format, by part key (module docstring)."""
    import torch

    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingError("string_to_param must hold exactly one tensor (A1111 format)")
        return {SINGLE: _as_matrix(next(iter(params.values())), "string_to_param")}
    if "clip_l" in data or "clip_g" in data:
        missing = [k for k in SDXL_KEYS if k not in data]
        if missing:
            raise EmbeddingError(f"an SDXL embedding needs clip_l and clip_g vectors; {missing[0]} is missing")
        return {k: _as_matrix(data[k], k) for k in SDXL_KEYS}
    if "emb_params" in data:
        return {SINGLE: _as_matrix(data["emb_params"], "emb_params")}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:  # diffusers: {token: tensor}
        return {SINGLE: _as_matrix(tensors[0], f"the tensor {next(iter(data))!r}")}
    keys = ", ".join(sorted(map(str, data))[:6])
    raise EmbeddingError(f"not a textual-inversion embedding (keys: {keys}); is it a LoRA or a checkpoint?")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_embedding(path: Path, name: str | None = None) -> Embedding:
    """The embedding in ``path`` (its stem is the name); an unreadable file gives an entry with ``error``."""
    path = Path(path)
    st = path.stat()
    base = Embedding(name or path.stem, path, st.st_size, st.st_mtime_ns)
    try:
        if st.st_size > MAX_FILE_BYTES:
            raise EmbeddingError(
                f"{st.st_size >> 20} MiB is too large for an embedding; is it a checkpoint or a LoRA? move it"
            )
        data = _load_raw(path)
        parts = _parts(data)
    except EmbeddingError as exc:
        return _failed(base, str(exc))
    counts = {int(t.shape[0]) for t in parts.values()}
    if len(counts) != 1:
        return _failed(base, "its clip_l and clip_g parts have different numbers of vectors")
    vectors = counts.pop()
    if vectors > MAX_VECTORS:
        return _failed(base, f"it has {vectors} vectors; at most {MAX_VECTORS} fit in a prompt chunk")
    step = data.get("step")
    return Embedding(
        base.name,
        path,
        st.st_size,
        st.st_mtime_ns,
        parts,
        vectors,
        step=int(step) if isinstance(step, int) and not isinstance(step, bool) else None,
        sd_checkpoint=_text(data.get("sd_checkpoint")),
        sd_checkpoint_name=_text(data.get("sd_checkpoint_name")),
    )


def _failed(base: Embedding, reason: str) -> Embedding:
    log.warning("embedding %s: %s", base.path, reason)
    return Embedding(base.name, base.path, base.size, base.mtime_ns, error=reason)


# --- which family an embedding fits --------------------------------------------------------------


def text_widths(pipe: Any, family: Any) -> dict[str, int]:
    """The token-embedding width of each text encoder slot the pipeline has (``clip_l`` -> 768 ...)."""
    widths = {}
    for slot, component in family.text_slots().items():
        encoder = getattr(pipe, component, None)
        if encoder is not None and hasattr(encoder, "get_input_embeddings"):
            widths[slot] = int(encoder.get_input_embeddings().embedding_dim)
    return widths


def fit(embedding: Embedding, family: Any, widths: Mapping[str, int] | None = None) -> str:
    """ "" when ``embedding`` can be used with ``family`` (text encoder widths ``widths``, None: the released
    ones), else why not."""
    if embedding.error:
        return embedding.error
    if not family.textual_inversion:
        return f"textual-inversion embeddings are not supported for {family.label} models; remove the name from the prompt"
    if widths is None:
        from webui.families.base import TEXT_ENCODERS

        widths = {slot: TEXT_ENCODERS[slot].hidden_size for slot in family.text_encoders}
    slots = [slot for slot in family.text_encoders if slot in widths]
    parts = embedding.parts
    if set(parts) == {SINGLE}:
        width = int(parts[SINGLE].shape[-1])
        if len(slots) != 1:
            return f"a one-encoder embedding ({width} wide, for SD 1.x/2.x); {family.label} needs clip_l and clip_g vectors"
        if width != widths[slots[0]]:
            return f"its vectors are {width} wide; {family.label}'s text encoder takes {widths[slots[0]]} (made for another model family)"
        return ""
    if set(parts) != set(slots):
        return f"an SDXL embedding (clip_l + clip_g); {family.label} takes {' + '.join(slots) or 'none'}"
    for slot in slots:
        if int(parts[slot].shape[-1]) != widths[slot]:
            return f"its {slot} vectors are {int(parts[slot].shape[-1])} wide; {family.label}'s {slot} takes {widths[slot]}"
    return ""


def vectors_for(embedding: Embedding, slot: str) -> Any:
    """The [n, D] vectors ``embedding`` gives the text encoder slot ``slot`` (one that ``fit`` accepted)."""
    return embedding.parts.get(slot, embedding.parts.get(SINGLE))


@dataclass(frozen=True)
class FamilyEmbeddings:
    """The embeddings for one model: ``loaded`` by name, ``skipped`` by name with the reason."""

    loaded: Mapping[str, Embedding]
    skipped: Mapping[str, tuple[Embedding, str]]


# --- the folder -------------------------------------------------------------------------------------


def embedding_folders(models_dir: Path) -> list[Path]:
    """``<models>/embeddings``, and A1111's ``<root>/embeddings`` when ``models_dir`` is A1111's ``models``."""
    models_dir = Path(models_dir)
    folders = [models_dir / FOLDER]
    a1111 = models_dir.parent / FOLDER
    if (models_dir / "Stable-diffusion").is_dir() and a1111.is_dir() and a1111 != folders[0]:
        folders.append(a1111)
    return [f for f in folders if f.is_dir()]


class EmbeddingLibrary:
    """The embedding files, read once per file version; ``refresh`` picks up added, changed, removed files."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._by_path: dict[Path, Embedding] = {}
        self._names: dict[str, Embedding] = {}

    def ensure_folder(self) -> None:
        if not embedding_folders(self.models_dir):
            (self.models_dir / FOLDER).mkdir(parents=True, exist_ok=True)

    def folders(self) -> list[Path]:
        return embedding_folders(self.models_dir)

    def refresh(self) -> None:
        files = [p for root in self.folders() for p in sorted(root.rglob("*")) if _is_embedding_file(p)]
        with self._lock:
            known = dict(self._by_path)
        by_path, names = {}, {}
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            entry = known.get(path)
            if entry is None or (entry.size, entry.mtime_ns) != (st.st_size, st.st_mtime_ns):
                entry = read_embedding(path)
            by_path[path] = entry
            names.setdefault(entry.name, entry)
        with self._lock:
            self._by_path, self._names = by_path, names

    def all(self) -> list[Embedding]:
        """Every embedding, refreshed from disk, sorted by name (A1111 reads the folder before each job too)."""
        self.refresh()
        with self._lock:
            return sorted(self._names.values(), key=lambda e: e.name.lower())

    def for_family(self, family: Any, widths: Mapping[str, int] | None = None) -> FamilyEmbeddings:
        """Which embeddings a model of ``family`` (None: no model loaded, all readable ones) can use."""
        loaded, skipped = {}, {}
        for embedding in self.all():
            reason = embedding.error if family is None else fit(embedding, family, widths)
            if reason:
                skipped[embedding.name] = (embedding, reason)
            else:
                loaded[embedding.name] = embedding
        return FamilyEmbeddings(loaded, skipped)


def _is_embedding_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES and path.is_file() and not any(p.startswith(".") for p in path.parts[-1:])
