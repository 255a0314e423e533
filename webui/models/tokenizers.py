"""Tokenizer files written offline.

The CLIP tokenizer of every Stable Diffusion family is the OpenAI CLIP BPE tokenizer. Its
vocabulary is fully determined by the bundled merge list
``assets/clip/bpe_simple_vocab_16e6.txt.gz`` (MIT, OpenAI; see ``assets/clip/LICENSE``):

    256 byte characters, the same 256 followed by ``</w>``, one token per merge (the pair
    joined), then ``<|startoftext|>`` and ``<|endoftext|>`` = 49408 ids.

``write_clip_tokenizer`` turns that file into the ``vocab.json`` / ``merges.txt`` pair that
``transformers.CLIPTokenizer.from_pretrained`` reads, so a diffusers config folder can be made
without a download. The only difference between the tokenizers of the families is the padding
token: ``<|endoftext|>`` for SD1.x and SD3's first tokenizer, ``"!"`` (id 0) for SD2.x, SDXL's
``tokenizer_2`` and SD3's ``tokenizer_2``.

The T5 tokenizer's vocabulary was learned and cannot be rebuilt; ``write_tiny_t5_tokenizer``
makes a small stand-in for the tiny demo/test models only.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

CLIP_BPE_ASSET = ("assets", "clip", "bpe_simple_vocab_16e6.txt.gz")
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# The merge list holds more lines than CLIP uses; CLIP keeps the first 49152 - 256 - 2 merges.
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2

CLIP_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
T5_MAX_LENGTH = 512


def _byte_chars() -> list[str]:
    """The printable stand-in character of each byte 0..255, in CLIP's vocabulary order.

    Printable Latin-1 bytes map to themselves and come first (in byte order); the other bytes
    map to code points 256, 257, ... in byte order and come after them.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _clip_merges() -> list[str]:
    ref = resources.files("webui.models").joinpath(*CLIP_BPE_ASSET)
    with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # line 0 is a version comment
    merges = lines[1 : 1 + _N_MERGES]
    if len(merges) != _N_MERGES:
        raise RuntimeError(f"{'/'.join(CLIP_BPE_ASSET)} has {len(merges)} merges, expected {_N_MERGES}; the file is damaged")
    return merges


def _clip_vocab(merges: list[str]) -> dict[str, int]:
    base = _byte_chars()
    tokens = base + [c + "</w>" for c in base] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"built a CLIP vocabulary of {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab


def _clip_file_texts(pad_token: str) -> dict[str, str]:
    merges = _clip_merges()
    vocab = _clip_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the CLIP vocabulary; use {EOS!r} or '!'")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def _clip_dir_is_complete(dest_dir: Path, pad_token: str) -> bool:
    if not all((dest_dir / name).is_file() for name in CLIP_FILES):
        return False
    try:
        config = json.loads((dest_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("pad_token") == pad_token


def _install_files(dest_dir: Path, texts: dict[str, str]) -> None:
    """Write ``texts`` into ``dest_dir`` so that no reader ever sees a half-written file.

    When ``dest_dir`` does not exist, the files go into a sibling temp folder that is renamed
    into place; otherwise each file is written to a temp name and ``os.replace``d.
    """
    dest_dir = Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    if not dest_dir.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
        try:
            for name, text in texts.items():
                (tmp / name).write_text(text, encoding="utf-8")
            try:
                os.rename(tmp, dest_dir)
                return
            except OSError:
                if not dest_dir.is_dir():  # not a lost race: a real error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    for name, text in texts.items():
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=dest_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp_name, dest_dir / name)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise


def write_clip_tokenizer(dest_dir: Path, pad_token: str) -> Path:
    """Write the CLIP tokenizer files into ``dest_dir`` and return it.

    Writes ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``. ``pad_token`` is ``"<|endoftext|>"`` (SD1.x, SD3 ``tokenizer``)
    or ``"!"`` (SD2.x, SDXL ``tokenizer_2``, SD3 ``tokenizer_2``). A folder that already holds
    complete files with the same pad token is left as it is, so this is safe to call as a cache.
    """
    dest_dir = Path(dest_dir)
    if _clip_dir_is_complete(dest_dir, pad_token):
        return dest_dir
    _install_files(dest_dir, _clip_file_texts(pad_token))
    return dest_dir


def clip_tokenizer(pad_token: str):
    """A ``transformers.CLIPTokenizer`` (49408 ids, max length 77) with the given pad token."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="webui-clip-tok-") as tmp:
        path = write_clip_tokenizer(Path(tmp) / "tokenizer", pad_token)
        return CLIPTokenizer.from_pretrained(str(path))


# --- tiny T5 tokenizer (demo/test models only) ---------------------------------------------------

_T5_WORDS = (
    "a an the of and in on with at to for from by is are photo picture painting drawing portrait "
    "cat dog bird horse car house tree flower sky sea mountain city street man woman girl boy "
    "red green blue yellow black white orange purple pink brown gray "
    "big small old new beautiful cute dark light sunset night day forest river lake snow rain "
    "style art detailed high quality realistic cinematic lighting background"
).split()


def _tiny_t5_vocab() -> list[tuple[str, float]]:
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in _T5_WORDS:
        add("\u2581" + word, -5.0 - 0.01 * len(pieces))
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()"
    for ch in chars:
        add("\u2581" + ch, -9.0)
        add(ch, -10.0)
    return pieces


def tiny_t5_tokenizer():
    """The stand-in T5 tokenizer of ``write_tiny_t5_tokenizer``, built in memory (demo/test models only)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=_tiny_t5_vocab(), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def write_tiny_t5_tokenizer(dest_dir: Path) -> Path:
    """Write a SMALL stand-in T5 tokenizer into ``dest_dir`` (for demo and test models only).

    The real T5 tokenizer's SentencePiece vocabulary was learned from data and cannot be
    generated; this one is a Unigram tokenizer of a few hundred pieces (common prompt words,
    single characters) with T5's special ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2). Its ids mean
    nothing to a real T5 encoder: never pair it with real weights. Existing files are kept.
    """
    dest_dir = Path(dest_dir)
    if (dest_dir / "tokenizer.json").is_file() and (dest_dir / "tokenizer_config.json").is_file():
        return dest_dir
    tok = tiny_t5_tokenizer()
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest_dir.name}.", dir=dest_dir.parent) as tmp:
        tok.save_pretrained(tmp)
        texts = {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}
    _install_files(dest_dir, texts)
    return dest_dir
