"""Faults: out of memory, NaN images, a full or unwritable outputs folder, a process killed mid-save.

Each fault must fail only the job it hits, with a message a user can act on, leave no partial or
black image behind, and the next job must run as if nothing happened. The generation tests use
the real engine on the tiny SD 1.5 demo model at 64x64 with 2 steps; the kill test runs the real
``OutputWriter`` in a child process and SIGKILLs it at random moments.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.app_services import tmp_services
from tests.security_figures import record as record_figures
from webui.generation.requests import GenerationRequest
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.outputs.writer import OutputError, OutputWriter

IMAGE_SUFFIXES = (".png", ".jpg", ".webp")
KILLS = int(os.environ.get("WEBUI_FAULT_KILLS", "12"))


def request(prompt: str, seed: int = 11, **changes: Any) -> GenerationRequest:
    values: dict[str, Any] = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": seed}
    values.update(changes)
    return GenerationRequest(prompt=prompt, sd_model_checkpoint=demo_checkpoint_name("sd15"), **values)


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in IMAGE_SUFFIXES)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_demo_models(root / "models", ("sd15",))
    services = tmp_services(root, preview_every=0)
    services.generation.start()
    try:
        first = services.generation.submit(request("reference", save_images=False))
        assert first.wait(120) and first.state == "done", first.error
        yield SimpleNamespace(services=services, outputs=root / "outputs", reference=np.asarray(first.result.images[0]))
    finally:
        services.generation.stop()


def run(env: Any, req: GenerationRequest) -> Any:
    job = env.services.generation.submit(req)
    assert job.wait(120), "the job did not finish"
    return job


# --- out of memory -------------------------------------------------------------------------------------------


def test_out_of_memory_fails_that_job_alone(env, monkeypatch):
    from webui.generation import plan

    real = plan.run_stages

    def run_stages(stages: Any, job: Any, batch: Any, ctx: Any) -> Any:
        if "oom" in job.req.prompt:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(stages, job, batch, ctx)

    monkeypatch.setattr(plan, "run_stages", run_stages)
    before = all_files(env.outputs)
    jobs = [env.services.generation.submit(r) for r in (request("reference"), request("oom"), request("reference"))]
    assert all(job.wait(120) for job in jobs)
    assert [job.state for job in jobs] == ["done", "failed", "done"]
    assert "out of" in jobs[1].error.lower() and "memory" in jobs[1].error.lower()
    assert "keeps running" in jobs[1].error and jobs[1].error_field == ""
    for job in (jobs[0], jobs[2]):  # the jobs around it are untouched, bit for bit
        assert np.array_equal(np.asarray(job.result.images[0]), env.reference)
    assert len(set(all_files(env.outputs)) - set(before)) == 2  # the two good jobs saved, the failed one nothing
    record_figures("faults", injected=1, jobs_failed_alone=1)


# --- NaN in the decoded image -----------------------------------------------------------------------------------


def _nan_decoder(vae: Any, when: Any) -> Any:
    """A forward hook on the VAE decoder that turns its output to NaN when ``when(output)`` is true."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        return torch.full_like(output, float("nan")) if when(output) else output

    return vae.decoder.register_forward_hook(hook)


def test_nan_decode_is_never_saved_as_a_black_image(env):
    before = all_files(env.outputs)
    pipe = env.services.manager.loaded.pipeline
    handle = _nan_decoder(pipe.vae, lambda output: True)
    try:
        job = run(env, request("nan everywhere"))
    finally:
        handle.remove()
    assert job.state == "failed" and ("NaN" in job.error or "nan" in job.error), (job.state, job.error)
    assert all_files(env.outputs) == before
    after = run(env, request("reference", save_images=False))
    assert np.array_equal(np.asarray(after.result.images[0]), env.reference)


@pytest.mark.parametrize(("dtype", "precision_hint"), [("float32", False), ("float16", True), ("bfloat16", True)])
def test_a_nan_from_the_sampler_names_precision_only_when_it_can_be_the_cause(dtype, precision_hint):
    """Issue 12: an overflowing prompt failed as "Try fp32 or bf16 precision" although the run was fp32."""
    from types import SimpleNamespace

    from webui.generation.passes import nan_message

    pipe = SimpleNamespace(unet=SimpleNamespace(dtype=getattr(torch, dtype)))
    message = nan_message(pipe)
    assert "NaN" in message and "weights" in message
    assert ("--precision" in message) is precision_hint


def test_nan_decode_in_half_precision_is_retried_in_fp32(env):
    pipe = env.services.manager.loaded.pipeline
    pipe.vae.to(torch.float16)
    handle = _nan_decoder(pipe.vae, lambda output: output.dtype == torch.float16)
    try:
        job = run(env, request("half vae", save_images=True))
    finally:
        handle.remove()
        pipe.vae.to(torch.float32)
    assert job.state == "done", job.error
    image = np.asarray(job.result.images[0])
    assert image.std() > 0 and image.max() > 0  # not black
    assert np.array_equal(np.asarray(Image.open(job.result.paths[0]).convert("RGB")), image)


# --- a full or unwritable outputs folder ------------------------------------------------------------------


class FullDisk:
    """A file object that takes ``room`` bytes, then raises ENOSPC (as write(2) on a full disk)."""

    def __init__(self, real: Any, room: int) -> None:
        self.real, self.room = real, room

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            self.real.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> FullDisk:  # noqa: PYI034 - a test double, never subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


def _full_disk_at(monkeypatch: pytest.MonkeyPatch, stage: str, room: int = 100) -> None:
    """Make the next saves fail with ENOSPC at ``stage``: writing the data, fsync, or the final name."""
    import webui.outputs.writer as writer_module

    real_fdopen = os.fdopen

    def no_space(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if stage == "write":
        monkeypatch.setattr(writer_module.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode), room))
    elif stage == "fsync":
        monkeypatch.setattr(writer_module.os, "fsync", no_space)
    elif stage == "link":
        monkeypatch.setattr(writer_module.os, "link", no_space)
    elif stage == "dev-full":  # the kernel's own ENOSPC: the temp file is /dev/full
        real_open = os.open
        monkeypatch.setattr(
            writer_module.os,
            "open",
            lambda path, flags, *a: (
                real_open("/dev/full", os.O_WRONLY) if flags & os.O_CREAT else real_open(path, flags, *a)
            ),
        )


@pytest.mark.parametrize("stage", ["write", "fsync", "link", "dev-full"])
@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, stage, fmt):
    if stage == "dev-full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    writer = OutputWriter(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    _full_disk_at(monkeypatch, stage)
    with pytest.raises(OutputError, match="the disk is full; free some space"):
        writer.save(image, category="txt2img", infotext="cat\nSteps: 2", seed=1, fmt=fmt)
    assert all_files(tmp_path) == []  # no image, no temp file
    monkeypatch.undo()
    path = writer.save(image, category="txt2img", infotext="cat\nSteps: 2", seed=1, fmt=fmt)
    assert path.name == "00001-1." + ("jpg" if fmt == "jpg" else fmt)  # the failed save took no number
    record_figures("faults", injected=1)


def test_full_disk_fails_the_job_with_the_reason_and_the_next_job_saves(env, monkeypatch):
    before = all_files(env.outputs)
    _full_disk_at(monkeypatch, "write", room=2000)
    job = run(env, request("disk full", save_images=True))
    assert job.state == "failed" and "the disk is full" in job.error, job.error
    assert all_files(env.outputs) == before
    monkeypatch.undo()
    job = run(env, request("reference", save_images=True))
    assert job.state == "done" and len(all_files(env.outputs)) == len(before) + 1
    record_figures("faults", injected=1, jobs_failed_alone=1)


def test_full_disk_through_the_api_is_an_error_answer(env, monkeypatch):
    from fastapi.testclient import TestClient

    from tests.api_server import build_api_app

    before = all_files(env.outputs)
    _full_disk_at(monkeypatch, "fsync")
    with TestClient(build_api_app(env.services)) as client:
        body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "save_images": True}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 500 and "the disk is full" in r.json()["detail"], r.text
        assert all_files(env.outputs) == before
        monkeypatch.undo()
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    record_figures("faults", injected=1)


def test_read_only_disk_and_a_file_in_place_of_the_folder_give_clear_errors(tmp_path, monkeypatch):
    import webui.outputs.writer as writer_module

    image = Image.new("RGB", (64, 64), "red")
    blocked = OutputWriter(tmp_path / "blocked")
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "txt2img-images").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        blocked.save(image, category="txt2img", infotext="x", seed=1)

    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(writer_module.os, "open", read_only)
    ro = OutputWriter(tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    with pytest.raises(OutputError, match="the disk is read-only; choose an outputs folder on a writable disk"):
        ro.save(image, category="txt2img", infotext="x", seed=1)
    assert [p for p in all_files(tmp_path / "ro")] == []
    record_figures("faults", injected=2)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_gives_a_clear_error(tmp_path):
    folder = tmp_path / "txt2img-images"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied; make the folder writable"):
            OutputWriter(tmp_path, date_format="").save(
                Image.new("RGB", (8, 8)), category="txt2img", infotext="x", seed=1
            )
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# --- killed during a save -----------------------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys, numpy as np
    from pathlib import Path
    from PIL import Image
    from webui.outputs.writer import OutputWriter

    writer = OutputWriter(Path(sys.argv[1]), date_format="")
    rng = np.random.default_rng(int(sys.argv[2]))
    print("ready", flush=True)
    for i in range(10**9):
        image = Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8))
        writer.save(image, category="txt2img", infotext=f"saved {i}\\nSteps: 2", seed=i, fmt=("png", "jpg", "webp")[i % 3])
    """
)


def test_a_process_killed_while_saving_leaves_no_corrupt_image(tmp_path):
    from webui.outputs.writer import read_infotext

    rng = random.Random(int(os.environ.get("WEBUI_FUZZ_SEED") or time.time_ns()))
    root = Path(__file__).resolve().parents[1]
    for k in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path), str(k)], cwd=root, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    images = image_files(tmp_path)
    assert len(images) > KILLS // 2, "the child saved almost nothing; the test proves little"
    for path in images:
        with Image.open(path) as im:
            im.verify()  # structure and checksums
        with Image.open(path) as im:
            im.load()  # every byte of pixel data present
        assert read_infotext(path).startswith("saved ")
    leftovers = [p for p in all_files(tmp_path) if p.suffix == ".tmp"]
    assert all(p.name.startswith(".") for p in leftovers)  # hidden, never counted as images
    assert OutputWriter(tmp_path).clean_temp_files() == len(leftovers)  # at the next start, not an hour later
    assert [p for p in all_files(tmp_path) if p.suffix == ".tmp"] == []
    record_figures("faults", kills=KILLS, images_checked=len(images), corrupt_images=0, temp_files_left=len(leftovers))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


def test_clean_temp_files_removes_what_dead_writers_left_and_keeps_the_rest(tmp_path):
    writer = OutputWriter(tmp_path)
    folder = tmp_path / "txt2img-images"
    folder.mkdir()
    killed = folder / f".{_dead_pid()}-0123456789abcdef.png.tmp"  # fresh, but its writer is gone
    running = folder / f".{os.getppid()}-fedcba9876543210.webp.tmp"  # another live process is saving it
    old = folder / ".0123456789abcdef.png.tmp"  # an older version's name (no pid): by age
    fresh = folder / ".fedcba9876543210.webp.tmp"
    other = folder / ".notes.tmp"
    for path in (killed, running, old, fresh, other):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert writer.clean_temp_files() == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted([running.name, fresh.name, other.name])
