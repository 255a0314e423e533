"""ModelCatalog: find the user's checkpoints, LoRAs, VAEs, text encoders and control models.

Reads A1111 (``Stable-diffusion``, ``Lora``, ``VAE``) and ComfyUI
(``checkpoints``, ``loras``, ``vae``, ``text_encoders``/``clip``) folder names,
so ``--models-dir`` can point at an existing installation. Only headers are
read; unchanged files are not read again on refresh. Each entry holds the
``ModelRecord`` of ``webui.models.identify`` (the one detector): the manager
hands it to the loader, so what the list shows is what loads. A file that
cannot be used becomes an entry with an ``error`` that says why; scanning never
raises for a bad file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from webui.control.files import CATALOG_KINDS as CONTROL_RECORD_KINDS
from webui.control.files import folder_weights, is_model_folder, label
from webui.models.identify import PICKLE_SUFFIXES, ModelRecord, identify, with_error

if TYPE_CHECKING:
    from webui.models.record_store import RecordStore

log = logging.getLogger(__name__)

# kind -> folder names, the first is the one we create.
FOLDERS: Mapping[str, tuple[str, ...]] = {
    "checkpoint": ("Stable-diffusion", "checkpoints", "diffusers"),
    "lora": ("Lora", "loras", "LyCORIS"),
    "vae": ("VAE", "vae"),
    "text_encoder": ("text_encoder", "text_encoders", "clip"),
    # ControlNet, T2I-Adapter and IP-Adapter files (webui.control.files): A1111 keeps all three in ControlNet/
    "control": ("ControlNet", "controlnet", "t2i_adapter", "ipadapter"),
    "clip_vision": ("clip_vision",),
}
# Catalog kind -> the ModelRecord kinds listed under it (default: the kind itself).
RECORD_KINDS: Mapping[str, tuple[str, ...]] = CONTROL_RECORD_KINDS
# Kinds whose folders hold one-model folders (config.json + weights) listed as one entry.
MODEL_FOLDER_KINDS = tuple(CONTROL_RECORD_KINDS)
SAFE_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class CatalogEntry:
    """One model file or folder. ``name`` is its path relative to its kind's folder."""

    name: str
    path: Path
    kind: str
    format: str  # "safetensors", "diffusers" or "ckpt"
    size: int
    mtime_ns: int
    record: ModelRecord

    @property
    def family(self) -> str | None:
        return self.record.family

    @property
    def info(self) -> Mapping[str, object]:
        return self.record.info

    @property
    def error(self) -> str | None:
        return self.record.error

    @property
    def demo(self) -> bool:
        return self.record.demo

    @property
    def detection(self) -> ModelRecord:
        """The old name of ``record``."""
        return self.record

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if self.format != "diffusers" else self.name

    def title(self, short_hash: str | None = None) -> str:
        """A1111's checkpoint title: ``name.safetensors [abcdef1234]``."""
        return f"{self.name} [{short_hash}]" if short_hash else self.name


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _folder_stat(path: Path) -> tuple[int, int]:
    index = path / "model_index.json"
    if not index.is_file():  # a one-model folder of a control kind: its weights
        index = folder_weights(path) or path / "config.json"
    st = index.stat()
    return st.st_size, st.st_mtime_ns


def _catalog_kind(record_kind: str) -> str:
    return next((kind for kind, kinds in RECORD_KINDS.items() if record_kind in kinds), record_kind)


def _label(kind: str) -> str:
    return label(kind)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'AEIOU' else 'a'} {noun}"


class ModelCatalog:
    """Scans ``models_dir``; ``refresh()`` picks up new, changed and removed files."""

    def __init__(
        self,
        models_dir: Path,
        hash_of: Callable[[Path], str | None] | None = None,
        families: Any = None,
        records: RecordStore | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self._hash_of = hash_of
        self.families = families  # the family registry the detector asks (None: the built-in families)
        self._records = records  # records kept between starts (cache/model_records.json); None: identify each start
        self._lock = threading.Lock()
        self._entries: dict[str, list[CatalogEntry]] = {kind: [] for kind in FOLDERS}
        self._seen: dict[tuple[str, Path], tuple[tuple[int, int], CatalogEntry]] = {}

    # -- folders ---------------------------------------------------------------
    def ensure_folders(self) -> None:
        """Create our sub-folders where neither an A1111 nor a ComfyUI one exists."""
        for names in FOLDERS.values():
            if not any((self.models_dir / n).is_dir() for n in names):
                (self.models_dir / names[0]).mkdir(parents=True, exist_ok=True)

    def folders(self, kind: str) -> list[Path]:
        return [self.models_dir / n for n in FOLDERS[kind] if (self.models_dir / n).is_dir()]

    def primary_folder(self, kind: str) -> Path:
        existing = self.folders(kind)
        return existing[0] if existing else self.models_dir / FOLDERS[kind][0]

    # -- scanning --------------------------------------------------------------
    def refresh(self) -> None:
        found: dict[str, list[CatalogEntry]] = {}
        seen: dict[tuple[str, Path], tuple[tuple[int, int], CatalogEntry]] = {}
        for kind in FOLDERS:
            entries = []
            for root in self.folders(kind):
                for item, fmt in _walk(root, model_folders=kind in MODEL_FOLDER_KINDS):
                    entry = self._entry(kind, root, item, fmt, seen)
                    if entry is not None:
                        entries.append(entry)
            entries.sort(key=lambda e: e.name.lower())
            found[kind] = entries
        with self._lock:
            self._entries = found
            self._seen = seen
        if self._records is not None:
            self._records.save(seen)

    def _entry(self, kind, root, item, fmt, seen) -> CatalogEntry | None:
        try:
            key = _folder_stat(item) if fmt == "diffusers" else _stat_key(item)
        except OSError:
            return None  # vanished while scanning
        cached = self._seen.get((kind, item))
        if cached and cached[0] == key:
            entry = cached[1]
        else:
            kept = self._records.get(kind, item, key) if self._records is not None else None
            entry = _describe(kind, root, item, fmt, key, self.families, kept)
            if kept is None and self._records is not None:
                self._records.put(kind, item, key, entry.record)
            if entry.error:
                log.warning("%s", entry.error)
        seen[(kind, item)] = (key, entry)
        return entry

    # -- queries ---------------------------------------------------------------
    def entries(self, kind: str = "checkpoint") -> list[CatalogEntry]:
        with self._lock:
            return list(self._entries[kind])

    def usable(self, kind: str = "checkpoint") -> list[CatalogEntry]:
        return [e for e in self.entries(kind) if e.usable]

    def find(self, name: str, kind: str = "checkpoint") -> CatalogEntry:
        """An entry by name, stem, A1111 title (``name [hash]``) or short hash."""
        wanted = name.strip()
        base = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        entries = self.entries(kind)
        for e in entries:
            if wanted in (e.name, e.stem) or base in (e.name, e.stem):
                return e
        for e in entries:  # a bare file name from another folder layout
            if Path(base).name in (Path(e.name).name, Path(e.stem).name):
                return e
        if self._hash_of is not None and len(wanted) in (8, 10) and all(c in "0123456789abcdef" for c in wanted):
            for e in entries:
                if e.format != "diffusers" and (self._hash_of(e.path) or "").startswith(wanted):
                    return e
        valid = ", ".join(e.name for e in entries) or f"none; put files in {self.primary_folder(kind)}"
        raise KeyError(f"no {kind} named {name!r}; available: {valid}")


def _walk(root: Path, model_folders: bool = False) -> Iterable[tuple[Path, str]]:
    """Model files and diffusers folders below root (a diffusers folder is not descended into); with
    ``model_folders``, also one-model folders (config.json + weights: a diffusers ControlNet, a CLIP vision model)."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            children = sorted(folder.iterdir())
        except OSError:
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if (child / "model_index.json").is_file() or (model_folders and is_model_folder(child)):
                    yield child, "diffusers"
                else:
                    stack.append(child)
            elif child.suffix.lower() in SAFE_SUFFIXES:
                yield child, "safetensors"
            elif child.suffix.lower() in PICKLE_SUFFIXES:
                yield child, "ckpt"


def _describe(
    kind: str, root: Path, item: Path, fmt: str, key: tuple[int, int], families: Any, record: ModelRecord | None = None
) -> CatalogEntry:
    """The entry of one file or folder; ``record``: kept from an earlier start (else it is identified now)."""
    name = item.relative_to(root).as_posix()
    if record is not None:
        return CatalogEntry(name=name, path=item, kind=kind, format=fmt, size=key[0], mtime_ns=key[1], record=record)
    if fmt == "diffusers" and kind != "checkpoint" and (item / "model_index.json").is_file():
        record = with_error(
            ModelRecord(item, kind, fmt), f"a diffusers pipeline folder belongs in {FOLDERS['checkpoint'][0]}"
        )
    else:
        record = identify(item, expect=kind, families=families)
    if record.usable and record.kind not in RECORD_KINDS.get(kind, (kind,)):
        record = with_error(
            record,
            f"this is {_a(_label(record.kind))}, not {_a(_label(kind))}; move it to"
            f" models/{FOLDERS[_catalog_kind(record.kind)][0]}",
        )
    return CatalogEntry(name=name, path=item, kind=kind, format=fmt, size=key[0], mtime_ns=key[1], record=record)
