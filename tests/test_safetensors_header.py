"""Malformed files are refused with a reason that names the file, before torch sees them."""

from __future__ import annotations

import json
import struct

import pytest

from tests import headers as H
from webui.models.safetensors_header import ModelFileError, read_header


def _write(path, header: dict, data_len: int, n_override: int | None = None):
    raw = json.dumps(header).encode()
    n = len(raw) if n_override is None else n_override
    path.write_bytes(struct.pack("<Q", n) + raw + b"\0" * data_len)
    return path


def test_valid_file_round_trips(tmp_path):
    path = H.write_safetensors(tmp_path / "ok.safetensors", H.SD15, metadata={"a": "b"})
    header = read_header(path)
    assert header.shape(H.DM + "input_blocks.0.0.weight") == (320, 4, 3, 3)
    assert header.metadata == {"a": "b"}


BAD = [
    ("empty", lambda p: p.write_bytes(b""), "too small"),
    ("short", lambda p: p.write_bytes(b"\x01\x02"), "too small"),
    ("pickle", lambda p: p.write_bytes(b"\x80\x02" + b"x" * 100), "pickle"),
    ("zip", lambda p: p.write_bytes(b"PK\x03\x04" + b"x" * 100), "zip"),
    ("html", lambda p: p.write_bytes(b"<html>not found</html>" + b" " * 50), "HTML"),
    ("header too long", lambda p: _write(p, {}, 0, n_override=10_000), "truncated"),
    ("not json", lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
    ("json list", lambda p: _write(p, [], 0), "not a JSON object"),
    (
        "unknown dtype",
        lambda p: _write(p, {"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, 4),
        "unknown dtype",
    ),
    (
        "out of range",
        lambda p: _write(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8),
        "truncated",
    ),
    (
        "wrong size",
        lambda p: _write(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 16),
        "needs",
    ),
    (
        "negative shape",
        lambda p: _write(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4),
        "invalid shape",
    ),
    (
        "overlap",
        lambda p: _write(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            12,
        ),
        "overlap",
    ),
]


@pytest.mark.parametrize("label,make,reason", BAD, ids=[b[0] for b in BAD])
def test_malformed_files_are_refused(tmp_path, label, make, reason):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(ModelFileError) as err:
        read_header(path)
    assert reason.lower() in str(err.value).lower()
    assert "bad.safetensors" in str(err.value)


def test_truncated_real_file(tmp_path):
    path = H.write_safetensors(tmp_path / "cut.safetensors", H.SD15)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        read_header(path)
