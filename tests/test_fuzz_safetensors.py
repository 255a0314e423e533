"""Fuzzing the model-file parsers: the safetensors header, family detection, diffusers folders.

* A fixed corpus of 500+ malformed files (truncations, bit flips, forged lengths, broken JSON,
  bad dtypes/shapes/offsets, overlaps, gaps, garbage) made from a valid file.
* Hypothesis properties on arbitrary bytes and on structured headers, checked against the
  safetensors library itself: ``read_header`` accepts a file exactly when the library would, and
  otherwise raises ``ModelFileError``, never anything else, within 5 s.
* Hypothesis on headers made of real key names with random shapes (``identify_header``,
  ``identify_checkpoint``, ``inspect_lora``, ``inspect_vae``) and on ``model_index.json``/``config.json``
  (``identify_folder``): only ``ModelFileError`` subclasses escape.

``WEBUI_FUZZ_EXAMPLES`` sets the examples per property (default 200, what CI runs); the counts go to
``$WEBUI_SECURITY_FIGURES`` (``tests.security_figures``), which ``scripts/security_report.py`` sets.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import headers as H
from tests.security_figures import record
from webui.models.safetensors_header import DTYPE_BITS, ModelFileError, read_header

EXAMPLES = int(os.environ.get("WEBUI_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),  # a parse that takes longer is a hang
    database=None,  # no .hypothesis folder in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def counts():
    """inputs tried / crashes per suite, recorded for the security report at the end of the module."""
    table: dict[str, dict[str, float]] = {}
    yield table
    for group, row in table.items():
        figures = {f"{group}_{key}": value for key, value in row.items() if key != "max_seconds"}
        slowest = int(1000 * row.get("max_seconds", 0))
        record("fuzz_models", inputs=row["inputs"], crashes=row["crashes"], max_parse_ms=slowest, **figures)


def _count(table: dict, suite: str, key: str, amount: float = 1) -> None:
    row = table.setdefault(suite, {"inputs": 0, "accepted": 0, "refused": 0, "crashes": 0})
    row[key] = max(row.get(key, 0.0), amount) if key == "max_seconds" else row[key] + amount


def _library_view(path: Path) -> tuple | None:
    """What the safetensors library reads from ``path`` (keys, dtypes, shapes, metadata); None if it refuses."""
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            tensors = {}
            for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                part = f.get_slice(key)
                tensors[key] = (part.get_dtype(), tuple(part.get_shape()))
            return tensors, f.metadata() or {}
    except Exception:  # noqa: BLE001 - any refusal by the library
        return None


def check_file(path: Path, table: dict, suite: str) -> None:
    """The property: accepted exactly when the library accepts, with the same view; else ModelFileError."""
    started = time.perf_counter()
    try:
        header = read_header(path)
    except ModelFileError as exc:
        header = None
        assert path.name in str(exc) and exc.reason
    except Exception:
        _count(table, suite, "crashes")
        raise
    finally:
        _count(table, suite, "inputs")
        _count(table, suite, "max_seconds", time.perf_counter() - started)
    library = _library_view(path)
    if header is None:
        _count(table, suite, "refused")
        assert library is None, f"refused a file the safetensors library reads: {path.read_bytes()[:300]!r}"
        return
    _count(table, suite, "accepted")
    ours = {k: (t.dtype, t.shape) for k, t in header.tensors.items()}
    assert library is not None, f"accepted a file the safetensors library refuses: {path.read_bytes()[:300]!r}"
    assert library == (ours, dict(header.metadata))


# --- a fixed corpus of malformed files ------------------------------------------------------------------


def _valid_file() -> bytes:
    """A small valid file with several dtypes and metadata, written by the safetensors library."""
    import safetensors.torch
    import torch

    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(8, generator=g).half(),
        "first_stage_model.decoder.conv_in.weight": torch.randn(4, 4, 1, 1, generator=g).bfloat16(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(7).unsqueeze(0),
        "flags": torch.tensor([1, 0, 1], dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
    }
    return safetensors.torch.save(tensors, metadata={"format": "pt", "note": "fuzz base"})


def _edits(doc: dict) -> list:
    """Header edits, each a function of a deep copy of the JSON document."""
    keys = [k for k in doc if k != "__metadata__"]
    first, second = keys[0], keys[1]

    def set_field(key, field, value):
        return lambda d: d[key].__setitem__(field, value)

    edits = []
    for value in ["F99", "f32", "", 7, None, ["F32"], {"a": 1}, True]:
        edits.append(set_field(first, "dtype", value))
    for value in [
        [-1, 4],
        [8.0, 4, 3, 3],
        [True, 4, 3, 3],
        "8x4",
        [2**70],
        [0, 4, 3, 3],
        [8, 4, 3],
        [4, 8, 3, 3],
        None,
    ]:
        edits.append(set_field(first, "shape", value))
    end = doc[first]["data_offsets"][1]
    for value in [[0], [0, end, 1], [-4, end], [end, 0], [0, 10**12], [0.0, end], [False, end], "0,4", [1, end + 1]]:
        edits.append(set_field(first, "data_offsets", value))
    edits += [
        lambda d: d[second].__setitem__("data_offsets", list(d[first]["data_offsets"])),  # overlap
        lambda d: d[second].__setitem__(
            "data_offsets", [d[second]["data_offsets"][0] + 2, d[second]["data_offsets"][1] + 2]
        ),
        lambda d: d.__setitem__("__metadata__", {"a": 1}),
        lambda d: d.__setitem__("__metadata__", []),
        lambda d: d.__setitem__("__metadata__", "x"),
        lambda d: d.__setitem__("__metadata__", {"a": {"b": "c"}}),
        lambda d: d.__setitem__(first, 5),
        lambda d: d.__setitem__(first, []),
        lambda d: d[first].pop("dtype"),
        lambda d: d[first].pop("data_offsets"),
        lambda d: d.pop(first),  # leaves a gap in the data block
    ]
    return edits


def _with_header(data: bytes, head: bytes) -> bytes:
    return struct.pack("<Q", len(head)) + head + data


def malformed_corpus(base: bytes, seed: int = 0) -> dict[str, bytes]:
    """name -> bytes: 500+ damaged variants of ``base`` (and a few valid ones, as controls)."""
    rng = random.Random(seed)
    (n,) = struct.unpack("<Q", base[:8])
    head, data = base[8 : 8 + n], base[8 + n :]
    doc = json.loads(head)
    out: dict[str, bytes] = {"valid": base, "valid-padded": _with_header(data, head + b"   ")}
    for size in sorted({0, 1, 7, 8, 9, n // 2, n + 7, n + 8, n + 9, len(base) - 1} | set(range(0, len(base), 11))):
        out[f"truncated-{size}"] = base[:size]
    for i in range(260):
        flipped = bytearray(base)
        position = rng.randrange(0, 8 + n) if i % 4 else rng.randrange(0, len(base))
        flipped[position] ^= 1 << rng.randrange(8)
        out[f"bitflip-{i}-at-{position}"] = bytes(flipped)
    for value in (0, 1, n - 1, n + 1, len(base), 2**63, 2**64 - 1, 100_000_001, 10**8):
        out[f"length-{value}"] = struct.pack("<Q", value) + base[8:]
    for i, edit in enumerate(_edits(doc)):
        changed = json.loads(head)
        edit(changed)
        out[f"edit-{i}"] = _with_header(data, json.dumps(changed).encode())
    for name, text in {
        "not-json": b"{{{{",
        "json-list": b"[]",
        "nan-literal": b'{"__metadata__": {"a": NaN}}',
        "deep-nesting": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "huge-int": b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 1]}}',
        "bad-utf8": b'{"\xff\xfe": 1}',
        "nul-after": head + b"\0",
        "leading-space": b" " + head,
    }.items():
        out[f"text-{name}"] = _with_header(data, text)
    for magic in (b"PK\x03\x04", b"\x80\x02", b"<html>", b"GGUF", b"\x89PNG\r\n\x1a\n"):
        out[f"other-format-{magic[:4]!r}"] = magic + bytes(rng.randrange(256) for _ in range(200))
    for i in range(60):
        out[f"garbage-{i}"] = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
    return out


def test_malformed_corpus_is_refused_cleanly_and_scanned_without_error(tmp_path, counts):
    from webui.models.catalog import ModelCatalog

    corpus = malformed_corpus(_valid_file())
    assert len(corpus) >= 500
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for i, (name, blob) in enumerate(corpus.items()):
        path = folder / f"{i:04d}-{name.replace('/', '_')[:60]}.safetensors"
        path.write_bytes(blob)
        check_file(path, counts, "corpus")
    assert counts["corpus"]["accepted"] >= 2 and counts["corpus"]["refused"] >= 400
    catalog = ModelCatalog(tmp_path / "models")
    catalog.refresh()  # never raises; a file that cannot be used is an entry with the reason
    entries = catalog.entries("checkpoint")
    assert len(entries) == len(corpus)
    assert all(e.error or e.family for e in entries)
    assert not any("cannot be read (" in (e.error or "") for e in entries)  # no unexpected exception inside


# --- hypothesis: bytes and structured headers ------------------------------------------------------------

_ANY = st.one_of(
    st.integers(-3, 70),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
)
_DTYPES = st.one_of(st.sampled_from(sorted(DTYPE_BITS) + ["F99", "f32", ""]), _ANY, st.lists(st.integers(), max_size=2))
_ENTRY = st.fixed_dictionaries(
    {
        "dtype": _DTYPES,
        "shape": st.one_of(st.lists(_ANY, max_size=4), _ANY),
        "data_offsets": st.one_of(st.lists(_ANY, max_size=3), _ANY),
    }
)


@st.composite
def _mostly_valid(draw) -> bytes:
    """A header that tiles its data block, then nudged: gaps, overlaps, odd sizes, spare bytes, bad metadata."""
    doc, offset = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "BOOL", "F4", "F8_E4M3", "F6_E2M3", "C64"]))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = math.prod(shape) * DTYPE_BITS[dtype]
        size = size // 8 + draw(st.sampled_from([0, 0, 0, 1])) * (size % 8 != 0)
        start = max(0, offset + draw(st.sampled_from([0, 0, 0, 0, 1, -1])))
        doc[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [start, start + size]}
        offset = start + size
    if draw(st.booleans()):
        doc["__metadata__"] = draw(
            st.one_of(
                st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
                st.dictionaries(st.text(max_size=3), st.integers()),
                st.integers(),
                st.none(),
            )
        )
    data = max(0, offset + draw(st.sampled_from([0, 0, 0, 1, -1])))
    return _header_file(draw, doc, data)


@st.composite
def _wild(draw) -> bytes:
    doc = draw(st.dictionaries(st.text(max_size=4), st.one_of(_ENTRY, _ANY), max_size=4))
    return _header_file(draw, doc, draw(st.integers(0, 64)))


def _header_file(draw, doc: dict, data: int) -> bytes:
    raw = json.dumps(doc).encode() + b" " * draw(st.integers(0, 8))
    length = max(0, len(raw) + draw(st.sampled_from([0, 0, 0, 0, 1, -1])))
    return struct.pack("<Q", length) + raw + b"\0" * data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "f.safetensors"


@FUZZ
@given(blob=st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(scratch, counts, blob):
    scratch.write_bytes(blob)
    check_file(scratch, counts, "bytes")


@FUZZ
@given(blob=st.one_of(_mostly_valid(), _wild()))
def test_fuzz_structured_headers(scratch, counts, blob):
    scratch.write_bytes(blob)
    check_file(scratch, counts, "headers")


# --- hypothesis: detection from key names and shapes ------------------------------------------------------

_FILES = (H.SD15, H.SD2, H.SDXL, H.REFINER, H.SD3_INCL_CLIPS_T5, H.SD35_LARGE, H.SD35_MEDIUM, H.SD3_BARE, H.FLUX)
_FILES += (H.KOHYA_LORA, H.VAE, H.CLIP_L_FILE, H.T5_FILE)
_VOCAB = sorted({k for shapes in _FILES for k in shapes}) + [
    H.DM + "label_emb.0.0.weight",
    "v_pred",
    "edm_mean",
    "embeddings.token_embedding.weight",
    "text_projection.weight",
    H.DM + "joint_blocks.99999999999.x_block.attn.qkv.weight",
    H.DM + "joint_blocks." + "9" * 5000 + ".x",
    "joint_blocks.\u0661\u0662.x_block.attn.qkv.weight",
    "lora_unet_x.lora_down.weight",
    "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
    "vae.decoder.conv_in.weight",
    "vae.encoder.conv_out.weight",
    "decoder.conv_in.weight",
    "encoder.conv_out.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
]


@FUZZ
@given(
    shapes=st.dictionaries(
        st.one_of(st.sampled_from(_VOCAB), st.text(max_size=12)),
        st.lists(st.integers(0, 5000), max_size=5).map(tuple),
        max_size=12,
    ),
    dtype=st.sampled_from(["F16", "F32", "F8_E4M3", "U8"]),
)
def test_fuzz_detection_raises_only_model_file_errors(counts, shapes, dtype):
    from webui.models.identify import identify_checkpoint, identify_header
    from webui.models.lora import inspect_lora
    from webui.models.safetensors_header import SafetensorsHeader, TensorInfo
    from webui.models.vae import inspect_vae

    header = SafetensorsHeader(
        Path("fuzz.safetensors"), {k: TensorInfo(dtype, s, 0, 0) for k, s in shapes.items()}, {}, 0, 0
    )
    for parse in (identify_header, identify_checkpoint, inspect_lora, inspect_vae):
        _count(counts, "detection", "inputs")
        try:
            parse(header)
            _count(counts, "detection", "accepted")
        except ModelFileError:
            _count(counts, "detection", "refused")
        except Exception:
            _count(counts, "detection", "crashes")
            raise


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 3000), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
_PIPELINES = ["StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline"]
_PART = st.one_of(st.just(["diffusers", "UNet2DConditionModel"]), st.just([None, None]), st.just([]), _JSON)
_INDEX = st.fixed_dictionaries(
    {"_class_name": st.one_of(st.sampled_from(_PIPELINES), _JSON)},
    optional={
        name: _PART for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    },
)
_CONFIG = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "in_channels": st.one_of(st.sampled_from([4, 9, 16]), _JSON),
            "cross_attention_dim": st.one_of(st.sampled_from([768, 1024, 2048]), _JSON),
            "projection_class_embeddings_input_dim": st.one_of(st.sampled_from([2816, 2560]), _JSON),
            "dual_attention_layers": _JSON,
            "qk_norm": _JSON,
        },
    ),
    _JSON,
)


@FUZZ
@given(index=_INDEX, config=_CONFIG, broken=st.booleans())
def test_fuzz_diffusers_folder_detection(tmp_path_factory, counts, index, config, broken):
    from webui.models.identify import identify_folder

    folder = tmp_path_factory.getbasetemp() / "fuzz-folder"
    for part in ("unet", "transformer"):
        (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / part / "config.json").write_text(
            "{broken" if broken and part == "transformer" else json.dumps(config)
        )
    (folder / "model_index.json").write_text(json.dumps(index))
    _count(counts, "diffusers-folder", "inputs")
    try:
        identify_folder(folder)
        _count(counts, "diffusers-folder", "accepted")
    except ModelFileError:
        _count(counts, "diffusers-folder", "refused")
    except Exception:
        _count(counts, "diffusers-folder", "crashes")
        raise
