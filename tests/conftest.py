"""Shared fixtures. Append new fixtures below; keep this module importable without torch work."""

from __future__ import annotations

import os

# Before anything imports diffusers/huggingface_hub: a test must never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# --- tiny original-layout checkpoints (webui.models.demo + ldm_export) ---------------------------


@dataclass(frozen=True)
class TinyCheckpoint:
    """A tiny model written as an original-layout single file.

    ``pipe`` is the pipeline the file was made from (treat it as read-only: it is shared by the
    session); ``config_dir`` is ``pipe.save_pretrained`` without weight files, the folder
    ``from_single_file(path, config=config_dir)`` needs.
    """

    family: str
    inpaint: bool
    path: Path
    config_dir: Path
    pipe: object
    include: tuple[str, ...] | None = None


def write_config_folder(pipe, dest: Path) -> Path:
    """``pipe.save_pretrained(dest)`` with the weight files deleted: configs and tokenizers only."""
    pipe.save_pretrained(dest)
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.ckpt"):
        for weights in dest.rglob(pattern):
            weights.unlink()
    return dest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(family, inpaint=False, include=None) -> TinyCheckpoint``, built once per session.

    ``include`` picks the parts written to the file (``("transformer", "vae")`` for an SD3 file
    without text encoders, ``("unet",)`` for a UNet-only file); None writes all of them.
    """
    from webui.models.demo import build_tiny_pipeline
    from webui.models.ldm_export import save_original

    root = tmp_path_factory.mktemp("tiny_checkpoints")
    made: dict[tuple, TinyCheckpoint] = {}
    pipes: dict[tuple[str, bool], tuple[object, Path]] = {}

    def get(family: str, inpaint: bool = False, include: tuple[str, ...] | None = None) -> TinyCheckpoint:
        key = (family, inpaint, tuple(include) if include is not None else None)
        if key not in made:
            if (family, inpaint) not in pipes:
                pipe = build_tiny_pipeline(family, seed=0, inpaint=inpaint)
                stem = f"{family}{'-inpaint' if inpaint else ''}"
                pipes[(family, inpaint)] = (pipe, write_config_folder(pipe, root / f"{stem}-config"))
            pipe, config_dir = pipes[(family, inpaint)]
            name = "-".join([family, *(["inpaint"] if inpaint else []), *(key[2] or ["full"])])
            path = save_original(pipe, family, root / f"{name}.safetensors", include=include)
            made[key] = TinyCheckpoint(family, inpaint, path, config_dir, pipe, key[2])
        return made[key]

    return get


# --- fresh tiny pipelines per test (LoRA / VAE tests mutate their modules) ----------------------


@pytest.fixture(scope="session")
def _pristine_tiny_pipes():
    return {}


@pytest.fixture
def fresh_tiny_pipe(_pristine_tiny_pipes):
    """``fresh_tiny_pipe(family, seed=0) -> pipeline``: a private copy of a session-built tiny pipeline.

    The modules are deep copies (safe to attach LoRAs or swap the VAE); the tokenizers are shared.
    """
    import copy

    def get(family: str, seed: int = 0):
        from webui.models.demo import build_tiny_pipeline

        key = (family, seed)
        if key not in _pristine_tiny_pipes:
            pipe = build_tiny_pipeline(family, seed=seed)
            pipe.set_progress_bar_config(disable=True)
            _pristine_tiny_pipes[key] = pipe
        pipe = _pristine_tiny_pipes[key]
        shared = {id(v): v for k, v in pipe.components.items() if k.startswith("tokenizer") and v is not None}
        return copy.deepcopy(pipe, shared)

    return get


# --- loader tests (tests/test_loader.py) ---------------------------------------------------------


@pytest.fixture(scope="session")
def t5_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny stand-in T5 tokenizer (demo/test models only), built once."""
    from webui.models.tokenizers import write_tiny_t5_tokenizer

    return write_tiny_t5_tokenizer(tmp_path_factory.mktemp("t5") / "t5_tokenizer")
