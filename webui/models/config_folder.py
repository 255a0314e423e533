"""The weight-less diffusers folder that ``Pipeline.from_single_file(path, config=folder)`` needs.

Built from the configs ``ldm_config.infer_configs`` reads off a checkpoint's shapes, plus
the CLIP tokenizers (bundled vocabulary) and, when found, the user's T5 tokenizer. Folders
are cached by content hash and written atomically (temp folder + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from webui.families.base import TEXT_ENCODERS, FamilyAdapter
from webui.models.ldm_config import Shapes, infer_configs

# Bump when the folder layout or the config rules change, so stale cached folders are not reused.
FOLDER_FORMAT = 1
T5_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "added_tokens.json",
)



def model_index(record: Any, family: FamilyAdapter, configs: Mapping[str, dict], *, with_t5_tokenizer: bool) -> dict:
    """``model_index.json`` of the config folder: the family's pipeline class, flags and components.

    Components the pipeline class accepts but the family never loads (``family.null_components``) are null.
    """
    import diffusers

    index: dict = {"_class_name": family.pipeline_for(record), "_diffusers_version": diffusers.__version__}
    index.update(family.index_flags)
    denoiser = family.denoiser_component
    index[denoiser] = ["diffusers", configs[denoiser]["_class_name"]]
    index["vae"] = ["diffusers", "AutoencoderKL"]
    index["scheduler"] = ["diffusers", configs["scheduler"]["_class_name"]]
    for slot, name in family.text_slots().items():
        tok = name.replace("text_encoder", "tokenizer")
        index[name] = ["transformers", configs[name]["architectures"][0]]
        if slot != "t5xxl":
            index[tok] = ["transformers", "CLIPTokenizer"]
        else:
            index[tok] = ["transformers", "T5TokenizerFast"] if with_t5_tokenizer else [None, None]
    for name in family.null_components:
        index[name] = [None, None]
    return index


def t5_tokenizer_files(t5_tokenizer_dir: Path | None) -> list[Path]:
    """The tokenizer files found in a T5 tokenizer folder (empty if none usable)."""
    if t5_tokenizer_dir is None or not Path(t5_tokenizer_dir).is_dir():
        return []
    files = [Path(t5_tokenizer_dir) / n for n in T5_TOKENIZER_FILES if (Path(t5_tokenizer_dir) / n).is_file()]
    names = {f.name for f in files}
    return files if names & {"tokenizer.json", "spiece.model"} else []


def write_config_folder(
    dest: Path,
    record: Any,
    family: FamilyAdapter,
    shapes: Shapes,
    t5_tokenizer_dir: Path | None,
    *,
    text_encoder_shapes: Mapping[str, Shapes] | None = None,
) -> Path:
    """Write (or reuse) the weight-less diffusers folder for a checkpoint; return its path.

    ``dest`` is the cache directory: the folder is ``dest/<family>-<hash>``, where the hash
    covers the configs and the T5 tokenizer files, so files with the same architecture share
    one folder. Written into a temp folder and renamed, so a reader never sees half a folder.
    ``tokenizer_3`` is filled only when ``t5_tokenizer_dir`` holds usable tokenizer files.
    """
    configs = infer_configs(shapes, record, family, text_encoder_shapes=text_encoder_shapes)
    t5_files = t5_tokenizer_files(t5_tokenizer_dir) if "t5xxl" in family.text_encoders else []
    index = model_index(record, family, configs, with_t5_tokenizer=bool(t5_files))
    digest = hashlib.sha256()
    digest.update(json.dumps([FOLDER_FORMAT, family.id, index, configs], sort_keys=True).encode())
    for f in t5_files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    dest = Path(dest)
    folder = dest / f"{family.id}-{digest.hexdigest()[:20]}"
    if (folder / "model_index.json").is_file():
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{family.id}-", dir=dest))
    try:
        _fill_folder(tmp, family, configs, index, t5_files)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():  # not a lost race with another writer
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _remove_stale_temp_dirs(dest: Path, max_age_s: float = 3600.0) -> None:
    """Temp folders left by a writer that crashed (a live writer finishes in well under an hour)."""
    now = time.time()
    for tmp in dest.glob(".tmp-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _fill_folder(tmp: Path, family: FamilyAdapter, configs: Mapping[str, dict], index: dict, t5_files: list[Path]) -> None:
    from webui.models.tokenizers import write_clip_tokenizer

    for name, config in configs.items():
        (tmp / name).mkdir()
        filename = "scheduler_config.json" if name == "scheduler" else "config.json"
        (tmp / name / filename).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    for slot, name in family.text_slots().items():
        tok = tmp / name.replace("text_encoder", "tokenizer")
        if slot == "t5xxl":
            if t5_files:
                tok.mkdir()
                for f in t5_files:
                    shutil.copyfile(f, tok / f.name)
        else:
            write_clip_tokenizer(tok, TEXT_ENCODERS[slot].pad_token)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8")
