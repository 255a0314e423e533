"""The upscalers there are: plain resampling (None, Lanczos, Nearest) and model files in the models folder.

Model files are found in A1111's folders (``ESRGAN``, ``RealESRGAN``, ``SwinIR``, ``DAT``, ``HAT``)
and ComfyUI's ``upscale_models``; each is named by its file stem as A1111 names them, except the files
A1111 ships under names of their own (``RealESRGAN_x4plus`` is "R-ESRGAN 4x+", ``DAT_x4`` "DAT x4"),
so that its infotexts and API clients find them (the stem works too). The scale is read from the name
(``4x_foo``, ``foo_x2``) until the model is loaded (A1111 assumes 4 otherwise).
Listing reads no weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from webui.upscale.loading import SUFFIXES

# folder -> the model family A1111 files it under (its "model_name" in /sdapi/v1/upscalers)
FOLDERS = {
    "ESRGAN": "ESRGAN",
    "RealESRGAN": "RealESRGAN",
    "SwinIR": "SwinIR",
    "DAT": "DAT",
    "HAT": "HAT",
    "upscale_models": "spandrel",
}
CREATED_FOLDER = "ESRGAN"
# file stem -> the name A1111 lists the model under (its built-in Real-ESRGAN, SwinIR and DAT downloads)
A1111_NAMES = {
    "RealESRGAN_x4plus": "R-ESRGAN 4x+",
    "RealESRGAN_x4plus_anime_6B": "R-ESRGAN 4x+ Anime6B",
    "RealESRGAN_x2plus": "R-ESRGAN 2x+",
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN": "SwinIR 4x",
    "DAT_x2": "DAT x2",
    "DAT_x3": "DAT x3",
    "DAT_x4": "DAT x4",
}
# name -> PIL resampling filter name (None: no upscaling, the image is kept as it is)
RESAMPLERS = {"None": None, "Lanczos": "LANCZOS", "Nearest": "NEAREST"}
_SCALE = re.compile(r"(?:^|[^a-z0-9])(?:(\d)x|x(\d))(?:[^a-z0-9]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class UpscalerEntry:
    name: str  # what requests and the page call it
    kind: str  # "resample" or the folder's family ("ESRGAN", "spandrel" ...)
    path: Path | None = None  # the model file (None for resampling)
    scale: float = 4.0

    @property
    def is_model(self) -> bool:
        return self.path is not None


def scale_from_name(stem: str, default: float = 4.0) -> float:
    match = _SCALE.search(stem)
    return float(match.group(1) or match.group(2)) if match else default


def builtin_entries() -> list[UpscalerEntry]:
    return [UpscalerEntry(name, "resample", None, 1.0 if name == "None" else 4.0) for name in RESAMPLERS]


def _files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def scan(models_dir: Path) -> list[UpscalerEntry]:
    """Every upscaler: the resampling ones first (A1111 lists None first), then the model files by name."""
    entries = builtin_entries()
    taken = {e.name for e in entries}
    for folder, family in FOLDERS.items():
        for path in _files(Path(models_dir) / folder):
            name = A1111_NAMES.get(path.stem, path.stem)
            if name in taken:  # the same stem in two folders: the second keeps its folder in its name
                name = f"{folder}/{path.stem}"
            taken.add(name)
            entries.append(UpscalerEntry(name, family, path, scale_from_name(path.stem)))
    return entries


def find(entries: list[UpscalerEntry], name: str) -> UpscalerEntry:
    """An upscaler by name (case-insensitive, a file name with its suffix too); ``KeyError`` lists the valid names."""
    wanted = (name or "None").strip()
    for entry in entries:
        if wanted in (entry.name, *((entry.path.name, entry.path.stem) if entry.path else ())):
            return entry
    lowered = wanted.lower()
    for entry in entries:
        if entry.name.lower() == lowered:
            return entry
    raise KeyError(f"no upscaler named {name!r}; available: {', '.join(e.name for e in entries)}")
