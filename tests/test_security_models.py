"""Untrusted model files: a pickle never runs, a malformed safetensors file is a clear error, serving goes on.

The malicious corpus: 11 payloads (os.system, exec, eval, subprocess x3, shutil, runpy, a nested
``getattr(__import__('os'), 'system')``, the INST and OBJ opcodes) x 3 places in the object (top
level with pickle protocol 0, inside ``state_dict`` with 2, inside a list with 5) x 2 containers (a raw pickle, PyTorch's zip layout with
``archive/data.pkl``), as ``.ckpt``/``.pt``/``.pth``/``.bin``, in every models folder, plus a pickle
named ``.safetensors`` and diffusers folders with pickled weights or custom code. Each payload creates
a canary file; a control test shows every one of them does when unpickled the unsafe way, then the
app scans, lists, hashes, loads and serves them and the canary never appears.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.security_figures import record

SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
REFUSED = "safe loader refuses"


# --- the malicious corpus ---------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint's ``__reduce__`` does."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _opcodes(canary: Path) -> dict[str, bytes]:
    """Payloads written as raw pickle opcodes (no ``__reduce__`` needed)."""
    cmd = f"touch {canary}".encode()
    return {
        "nested-getattr": b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + cmd + b"\ntR.",
        "inst-opcode": b"(V" + cmd + b"\nios\nsystem\n.",
        "obj-opcode": b"(cos\nsystem\nV" + cmd + b"\no.",
    }


def payloads(canary: Path) -> dict[str, object]:
    """name -> an object (or opcode bytes) that creates ``canary`` when unpickled."""
    import builtins
    import os
    import runpy
    import shutil as sh
    import subprocess

    write = f"open({str(canary)!r}, 'w').write('pwned')"
    source = canary.with_name("canary-source.txt")
    source.write_text("pwned")
    objects: dict[str, object] = {
        "os.system": _Reduce(os.system, f"touch {canary}"),
        "exec": _Reduce(builtins.exec, write),
        "eval": _Reduce(builtins.eval, write),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(canary)]),
        "subprocess.run": _Reduce(subprocess.run, ["touch", str(canary)]),
        "subprocess.check_output": _Reduce(subprocess.check_output, ["touch", str(canary)]),
        "shutil.copyfile": _Reduce(sh.copyfile, str(source), str(canary)),
        "runpy.run_code": _Reduce(runpy._run_code, write, {}),
    }
    objects.update(_opcodes(canary))
    return objects


def _embed(obj: object, where: str) -> bytes:
    if isinstance(obj, bytes):  # opcode payloads stand alone
        return obj
    wrapped = {"top": obj, "state_dict": {"state_dict": {"model.diffusion_model.x": obj}}, "list": [1, obj]}[where]
    protocol = {"top": 0, "state_dict": 2, "list": 5}[where]  # old opcodes, GLOBAL, STACK_GLOBAL + FRAME
    return pickle.dumps(wrapped, protocol=protocol)


def torch_zip(data_pkl: bytes) -> bytes:
    """PyTorch's zip checkpoint layout around a pickle (what ``torch.save`` writes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def malicious_files(canary: Path) -> dict[str, bytes]:
    """file name -> bytes; every file creates ``canary`` when loaded without ``weights_only``."""
    files = {}
    for index, (name, obj) in enumerate(sorted(payloads(canary).items(), key=lambda kv: kv[0])):
        for where in ("top", "state_dict", "list") if not isinstance(obj, bytes) else ("top",):
            blob = _embed(obj, where)
            suffix = SUFFIXES[(index + len(files)) % len(SUFFIXES)]
            files[f"{name}-{where}-raw{suffix}"] = blob
            files[f"{name}-{where}-zip{suffix}"] = torch_zip(blob)
    return files


def fire(blob: bytes) -> None:
    """The unsafe way (``torch.load(weights_only=False)``): runs the payload. Control only."""
    import torch

    with contextlib.suppress(Exception):  # the payload ran (or not); the canary tells
        torch.load(io.BytesIO(blob), weights_only=False)


def test_every_payload_of_the_corpus_runs_code_when_unpickled_unsafely(tmp_path):
    """The control: without it, a canary that never appears would prove nothing."""
    canary = tmp_path / "canary"
    files = malicious_files(canary)
    assert len(files) >= 50
    dead = []
    for name, blob in files.items():
        fire(blob)
        if not canary.exists():
            dead.append(name)
        canary.unlink(missing_ok=True)
    record("model_files", inputs=len(files), malicious_pickles=len(files), live_payloads=len(files) - len(dead))
    assert not dead, f"payloads that did not run: {dead}"


def test_weights_only_loader_refuses_every_payload(tmp_path):
    from webui.models.loader import ModelLoadError, _safe_torch_load

    canary = tmp_path / "canary"
    for name, blob in malicious_files(canary).items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(ModelLoadError, match=REFUSED):
            _safe_torch_load(path)
        record("model_files", app_operations=1, code_executions=int(canary.exists()))
        assert not canary.exists(), name


# --- the app over a models folder full of them -------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_checkpoint):
    """Services and a running server over a models folder with the corpus in every sub-folder."""
    from webui.app import build_server

    root = tmp_path_factory.mktemp("pickles")
    canary = root / "canary"
    models = root / "models"
    folders = {"checkpoint": "Stable-diffusion", "lora": "Lora", "vae": "VAE", "text_encoder": "text_encoder"}
    files = malicious_files(canary)
    for i, (name, blob) in enumerate(files.items()):
        kind = "checkpoint" if i % 3 else list(folders)[i % 4]
        target = models / folders[kind] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    (models / "Stable-diffusion" / "pickle-named.safetensors").write_bytes(next(iter(files.values())))
    shutil.copy(tiny_checkpoint("sd15").path, models / "Stable-diffusion" / "good.safetensors")
    services = tmp_services(root)  # scans the folders
    assert not canary.exists()
    services.generation.start()
    try:
        with serve_api(services, app=build_server(services)) as url:
            yield {"services": services, "url": url, "canary": canary, "root": root}
    finally:
        services.generation.stop()


def test_scanning_listing_and_hashing_run_no_pickle(planted):
    from webui.models.hashes import legacy_model_hash
    from webui.ui.models_tab import model_rows

    services, canary = planted["services"], planted["canary"]
    services.catalog.refresh()
    entries = [e for kind in ("checkpoint", "lora", "vae", "text_encoder") for e in services.catalog.entries(kind)]
    pickled = [e for e in entries if e.format == "ckpt"]
    assert len(pickled) >= 50
    model_rows(services.backend)
    for entry in pickled:
        assert len(services.hashes.get(entry.path)) == 64
        legacy_model_hash(entry.path)
    bad = services.catalog.find("pickle-named.safetensors")
    assert "pickle" in (bad.error or "")  # a pickle named .safetensors is refused by its header, with a hint
    record("model_files", app_operations=3 * len(pickled) + 2, code_executions=int(canary.exists()))
    assert not canary.exists()


def test_loading_each_pickled_checkpoint_is_refused_in_words(planted):
    services, canary = planted["services"], planted["canary"]
    checkpoints = [e for e in services.catalog.entries("checkpoint") if e.format == "ckpt"]
    assert len(checkpoints) >= 30
    for entry in checkpoints[::3]:  # every payload reaches the loader alone in the test above; here the manager
        with pytest.raises(ValueError, match=REFUSED):
            services.manager.load(entry)
        record("model_files", app_operations=1, code_executions=int(canary.exists()))
        assert not canary.exists(), entry.name
    assert services.manager.current_entry is None


def test_the_api_lists_and_refuses_them_and_keeps_serving(planted):
    services, canary = planted["services"], planted["canary"]
    evil_ckpt = next(e.name for e in services.catalog.entries("checkpoint") if e.format == "ckpt")
    evil_lora = next(e.stem for e in services.catalog.entries("lora") if e.format == "ckpt")
    evil_vae = next(e.name for e in services.catalog.entries("vae") if e.format == "ckpt")
    base = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "seed": 1}
    with httpx.Client(base_url=planted["url"], timeout=120) as client:
        for path in ("/sdapi/v1/sd-models", "/sdapi/v1/sd-vae", "/sdapi/v1/loras"):
            assert client.get(path).status_code == 200
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": evil_ckpt})
        assert r.status_code >= 400 and REFUSED in r.json()["detail"]
        r = client.post("/sdapi/v1/txt2img", json={**base, "override_settings": {"sd_model_checkpoint": evil_ckpt}})
        assert r.status_code >= 400 and REFUSED in r.json()["detail"]
        good = {**base, "override_settings": {"sd_model_checkpoint": "good.safetensors"}}
        r = client.post("/sdapi/v1/txt2img", json={**good, "prompt": f"a <lora:{evil_lora}:1>"})
        assert r.status_code >= 400 and r.json()["detail"]
        assert client.post("/sdapi/v1/txt2img", json=good).status_code == 200  # still serving, still generating
        r = client.post("/sdapi/v1/options", json={"sd_vae": evil_vae})
        assert r.status_code >= 400 and r.json()["detail"]
        client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"})
    record("model_files", app_operations=10, code_executions=int(canary.exists()))
    assert not canary.exists()


def test_diffusers_folders_with_pickled_weights_or_custom_code_run_nothing(tmp_path, fresh_tiny_pipe):
    canary = tmp_path / "canary"
    blob = torch_zip(_embed(payloads(canary)["os.system"], "top"))
    folder = tmp_path / "models" / "Stable-diffusion" / "pickled-folder"
    pipe = fresh_tiny_pipe("sd15")
    pipe.save_pretrained(folder, safe_serialization=False)
    for weights in [*folder.glob("unet/*.bin"), *folder.glob("text_encoder/*.bin")]:
        weights.write_bytes(blob)
    code = tmp_path / "models" / "Stable-diffusion" / "custom-code-folder"
    shutil.copytree(folder, code)
    evil = f"open({str(canary)!r}, 'w').write('pwned')\nclass EvilUNet:\n    pass\n"
    (code / "unet" / "evil_unet.py").write_text(evil)
    (code / "evil_unet.py").write_text(evil)
    index = json.loads((code / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (code / "model_index.json").write_text(json.dumps(index))
    services = tmp_services(tmp_path)
    for name, reason in (("pickled-folder", "Unable to load weights"), ("custom-code-folder", "custom code")):
        entry = services.catalog.find(name)
        assert entry.error is None  # the folder looks fine until diffusers reads it
        with pytest.raises(ValueError, match=reason):
            services.manager.load(entry)
        record("model_files", app_operations=1, code_executions=int(canary.exists()))
        assert not canary.exists(), name
    fire(blob)  # control: the planted weights are live
    assert canary.exists()


# --- malformed safetensors through the loader ----------------------------------------------------------


def _rewrite_header(src: Path, dst: Path, edit) -> Path:
    """``dst`` = ``src`` with its header JSON changed by ``edit(doc)`` (data block kept)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    doc = json.loads(raw[8 : 8 + n])
    edit(doc)
    head = json.dumps(doc).encode()
    dst.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])
    return dst


def _first(doc: dict, pred=lambda k, v: True) -> str:
    return next(k for k, v in doc.items() if k != "__metadata__" and pred(k, v))


def _swap_dims(doc: dict) -> None:
    key = _first(doc, lambda k, v: len(v["shape"]) == 2 and v["shape"][0] != v["shape"][1])
    doc[key]["shape"] = doc[key]["shape"][::-1]


def _nan_weights(src: Path, dst: Path) -> Path:
    import numpy as np

    raw = bytearray(src.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    doc = json.loads(raw[8 : 8 + n])
    key = _first(doc, lambda k, v: v["dtype"] in ("F32", "F16") and "diffusion_model" in k and v["shape"])
    start, end = (8 + n + o for o in doc[key]["data_offsets"])
    dtype = np.float32 if doc[key]["dtype"] == "F32" else np.float16
    raw[start:end] = np.full((end - start) // np.dtype(dtype).itemsize, np.nan, dtype).tobytes()
    dst.write_bytes(bytes(raw))
    return dst


def _corrupt_checkpoints(good: Path, out: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the refusal must contain)."""
    out.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])

    def cut(name: str, size: int) -> Path:
        (out / name).write_bytes(raw[:size])
        return out / name

    def edit(name: str, fn) -> Path:
        return _rewrite_header(good, out / name, fn)

    def dtype_of(doc: dict, dtype: str) -> None:
        doc[_first(doc)]["dtype"] = dtype

    def offsets(doc: dict, value) -> None:
        doc[_first(doc)]["data_offsets"] = value

    def overlap(doc: dict) -> None:
        keys = [k for k in doc if k != "__metadata__"]
        doc[keys[1]]["data_offsets"] = list(doc[keys[0]]["data_offsets"])

    return {
        "truncated-header": (cut("truncated-header.safetensors", n // 2), "does not fit"),
        "truncated-data": (cut("truncated-data.safetensors", len(raw) - 1000), "truncated"),
        "length-too-big": (out / "len.safetensors", "does not fit"),
        "unknown-dtype": (edit("dtype.safetensors", lambda d: dtype_of(d, "Q7")), "unknown dtype"),
        "out-of-range": (edit("range.safetensors", lambda d: offsets(d, [0, len(raw)])), "truncated"),
        "overlap": (edit("overlap.safetensors", overlap), "overlap"),
        "wrong-shape": (edit("shape.safetensors", _swap_dims), "do not match"),
        "nan-weights": (_nan_weights(good, out / "nan.safetensors"), "NaN"),
    }


def test_malformed_checkpoints_are_refused_with_the_reason_and_loading_goes_on(tmp_path, tiny_checkpoint):
    good = tiny_checkpoint("sd15").path
    cases = _corrupt_checkpoints(good, tmp_path / "models" / "Stable-diffusion")
    raw = good.read_bytes()
    (tmp_path / "models" / "Stable-diffusion" / "len.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    shutil.copy(good, tmp_path / "models" / "Stable-diffusion" / "good.safetensors")
    services = tmp_services(tmp_path)
    for name, (path, reason) in cases.items():
        entry = services.catalog.find(path.name)
        with pytest.raises(ValueError, match=reason):
            services.manager.load(entry)
        record("model_files", inputs=1, malformed_checkpoints_refused=1)
        assert services.manager.current_entry is None, name
    assert services.manager.load("good.safetensors").family == "sd15"  # the app loads the next one fine


def test_nonfinite_weights_names_the_parameters_and_ignores_buffers():
    import torch

    from webui.security.weights import nonfinite_message, nonfinite_weights

    clean = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    clean.register_buffer("mask", torch.full((2, 2), float("-inf")))  # -inf masks are legitimate buffers
    damaged = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        damaged[0].weight[1, 2] = float("nan")
        damaged[1].bias[0] = float("inf")
    on_meta = torch.nn.Linear(4, 4, device="meta")
    found = nonfinite_weights({"unet": clean, "vae": damaged, "text_encoder": on_meta, "tokenizer": object()})
    assert found == ["vae.0.weight", "vae.1.bias"]
    assert nonfinite_weights({"unet": clean}) == []
    assert "NaN or infinite" in nonfinite_message(found) and "vae.0.weight" in nonfinite_message(found)
