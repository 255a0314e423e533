"""Model records kept between starts: a file unchanged since the last start is not identified again."""

from __future__ import annotations

import json
import os

import pytest

from tests import headers as H
from webui.models.catalog import ModelCatalog
from webui.models.identify import identify
from webui.models.record_store import RecordStore, code_version, from_json, to_json


def _models(tmp_path):
    models = tmp_path / "models"
    H.write_safetensors(models / "Stable-diffusion" / "a.safetensors", H.SD15)
    H.write_safetensors(models / "Stable-diffusion" / "xl.safetensors", H.SDXL)
    H.write_safetensors(models / "Lora" / "l.safetensors", H.KOHYA_LORA)
    (models / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\0" * 3)
    return models


def _scan(models, store_file, version="v1"):
    catalog = ModelCatalog(models, records=RecordStore(store_file, version=version))
    catalog.refresh()
    return catalog


def _garble_keeping_stamp(path):
    """Another header of the same size with the same mtime: only a kept record still says SD 1.5."""
    st = path.stat()
    path.write_bytes(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_second_start_reuses_the_records_of_unchanged_files(tmp_path):
    models, store = _models(tmp_path), tmp_path / "cache" / "model_records.json"
    first = _scan(models, store)
    assert len(json.loads(store.read_text())["records"]) == 4  # the broken file's record (its error) too
    _garble_keeping_stamp(models / "Stable-diffusion" / "a.safetensors")
    second = _scan(models, store)
    assert [e.record for e in second.entries()] == [e.record for e in first.entries()]
    assert second.find("a.safetensors").family == "sd15"  # not read again
    assert second.find("broken.safetensors").error  # a bad file stays reported


@pytest.mark.parametrize("change", ["mtime", "version"])
def test_a_changed_file_or_changed_code_is_identified_again(tmp_path, change):
    models, store = _models(tmp_path), tmp_path / "model_records.json"
    _scan(models, store)
    path = models / "Stable-diffusion" / "a.safetensors"
    _garble_keeping_stamp(path)
    if change == "mtime":
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    again = _scan(models, store, version="v2" if change == "version" else "v1")
    assert again.find("a.safetensors").error  # read now: the garbled header


def test_records_of_removed_files_leave_the_store(tmp_path):
    models, store = _models(tmp_path), tmp_path / "model_records.json"
    _scan(models, store)
    assert any(key.endswith("/Lora/l.safetensors") for key in json.loads(store.read_text())["records"])
    (models / "Lora" / "l.safetensors").unlink()
    _scan(models, store)
    assert not any(key.endswith("/Lora/l.safetensors") for key in json.loads(store.read_text())["records"])


def test_an_unreadable_store_is_ignored(tmp_path):
    models, store = _models(tmp_path), tmp_path / "model_records.json"
    store.write_text("{not json")
    assert _scan(models, store).find("xl.safetensors").family == "sdxl"
    assert json.loads(store.read_text())["version"] == "v1"  # written anew


@pytest.mark.parametrize(
    "shapes, expect",
    [(H.SD15, "checkpoint"), (H.SDXL, "checkpoint"), (H.SD3_MEDIUM, "checkpoint"), (H.KOHYA_LORA, None),
     (H.VAE, None), (H.CLIP_L_FILE, None)],
)  # fmt: skip
def test_records_come_back_from_json_as_they_were(tmp_path, shapes, expect):
    record = identify(H.write_safetensors(tmp_path / "m.safetensors", shapes), expect=expect)
    assert from_json(json.loads(json.dumps(to_json(record)))) == record


def test_the_code_version_follows_the_modules(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    before = code_version(tmp_path)
    assert code_version(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 22\n")
    assert code_version(tmp_path) != before
