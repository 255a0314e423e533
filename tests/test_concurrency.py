"""16 API clients and UI sessions at once, with random interrupts, against the real engine.

The server is the real ``/sdapi/v1`` router on a uvicorn port over the real services and engine
(tiny SD 1.5 demo model, 64x64, 3 steps, live previews on). At the same time:

* 16 API clients send their own jobs (own prompt, own seeds, some saved to disk);
* 4 UI-like sessions submit to ``services.generation`` from threads and follow their jobs with
  ``webui.ui.runner.watch_job``, as the Generate button does, interrupting some of their own;
* one thread presses the API's Interrupt at random moments, another polls ``/progress``.

Then: every job ended exactly once, done or interrupted (never lost, failed or run twice); each
client got back only its own images (prompt and seeds in the infotext, PNG text, file on disk,
and the pixels of a re-run); and the single worker ran the jobs in the order they were queued.
``WEBUI_CONCURRENCY_JOBS`` sets the jobs per client (default 3).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import threading
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api_server import serve_api
from tests.app_services import tmp_services
from tests.security_figures import record as record_figures
from webui.generation.requests import GenerationRequest
from webui.models.demo import demo_checkpoint_name, write_demo_models

API_CLIENTS = 16
UI_SESSIONS = 4
JOBS_PER_CLIENT = int(os.environ.get("WEBUI_CONCURRENCY_JOBS", "3"))
STEPS = 3
SD15 = demo_checkpoint_name("sd15")


def seed_of(client: int, job: int) -> int:
    return 100_000 * (client + 1) + 10 * job  # batch images take seed, seed + 1


def pixels(image: Image.Image) -> bytes:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest().encode()


class Recorder:
    """Wraps the service: every submitted job, and the order the worker started them in."""

    def __init__(self, services: Any) -> None:
        from webui.generation.service import GenerationService

        self.jobs: dict[str, Any] = {}
        self.started: list[str] = []
        self._lock = threading.Lock()
        run = services.engine.run

        def runner(request: GenerationRequest, ctx: Any) -> Any:
            with self._lock:
                self.started.append(ctx.job_id)
            return run(request, ctx)

        service = GenerationService(runner, preview_every=1)
        real_submit = service.submit

        def submit(*args: Any, **kwargs: Any) -> Any:
            job = real_submit(*args, **kwargs)
            with self._lock:
                self.jobs[job.id] = job
            return job

        service.submit = submit  # the API and the sessions both go through it
        services.generation = service
        self.service = service


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrency")
    write_demo_models(root / "models", ("sd15",))
    services = tmp_services(root)
    recorder = Recorder(services)
    recorder.service.start()
    warm = recorder.service.submit(
        GenerationRequest(
            prompt="warm up", steps=1, width=64, height=64, seed=1, sd_model_checkpoint=SD15, save_images=False
        )
    )
    assert warm.wait(120) and warm.state == "done", warm.error
    try:
        with serve_api(services) as url:
            yield services, recorder, url, root / "outputs"
    finally:
        recorder.service.stop()


# --- the participants ------------------------------------------------------------------------------------


def api_client(url: str, client: int, answers: list[dict], errors: list[str]) -> None:
    rng = random.Random(client)
    with httpx.Client(base_url=url, timeout=300) as http:
        for j in range(JOBS_PER_CLIENT):
            body = {
                "prompt": f"client {client} job {j}",
                "seed": seed_of(client, j),
                "steps": STEPS,
                "width": 64,
                "height": 64,
                "sampler_name": "Euler",
                "batch_size": rng.choice((1, 2)),
                "save_images": client % 2 == 0,
            }
            try:
                r = http.post("/sdapi/v1/txt2img", json=body)
            except httpx.HTTPError as exc:
                errors.append(f"client {client} job {j}: {type(exc).__name__}: {exc}")
                continue
            if r.status_code != 200:
                errors.append(f"client {client} job {j}: {r.status_code} {r.text[:300]}")
                continue
            answers.append({"client": client, "job": j, "body": body, "answer": r.json()})


def ui_session(service: Any, backend: Any, session: int, outcomes: list[dict], errors: list[str]) -> None:
    from webui.ui.runner import watch_job

    rng = random.Random(1000 + session)
    client = API_CLIENTS + session
    for j in range(JOBS_PER_CLIENT):
        request = GenerationRequest(
            prompt=f"session {session} job {j}",
            seed=seed_of(client, j),
            steps=STEPS,
            width=64,
            height=64,
            sampler_name="Euler",
            sd_model_checkpoint=SD15,
            save_images=False,
        )
        job = service.submit(request, source="ui")
        press_interrupt = rng.random() < 0.4
        frames = 0
        for frame in watch_job(backend, job.id, poll=0.01):
            frames += 1
            if press_interrupt and job.state == "running":
                service.interrupt(job.id)  # this page's own job, as the Interrupt button
                press_interrupt = False
        if not job.finished:
            errors.append(f"session {session} job {j}: watch_job ended before the job")
        outcomes.append({"client": client, "job": j, "request": request, "ran": job, "frames": frames})


def interrupter(url: str, stop: threading.Event, count: list[int]) -> None:
    rng = random.Random(7)
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.wait(rng.uniform(0.05, 0.4)):
            if http.post("/sdapi/v1/interrupt").json()["done"]:
                count[0] += 1


def progress_poller(url: str, stop: threading.Event, problems: list[str], polls: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.wait(0.02):
            r = http.get("/sdapi/v1/progress")
            polls[0] += 1
            if r.status_code != 200:
                problems.append(f"progress: {r.status_code} {r.text[:200]}")
            elif r.json()["current_image"]:
                Image.open(io.BytesIO(base64.b64decode(r.json()["current_image"]))).load()


# --- the test --------------------------------------------------------------------------------------------


def test_concurrent_clients_get_their_own_images_in_fifo_order(env):
    services, recorder, url, outputs = env
    answers: list[dict] = []
    outcomes: list[dict] = []
    errors: list[str] = []
    interrupts, polls = [0], [0]
    stop = threading.Event()
    helpers = [
        threading.Thread(target=interrupter, args=(url, stop, interrupts)),
        threading.Thread(target=progress_poller, args=(url, stop, errors, polls)),
    ]
    workers = [threading.Thread(target=api_client, args=(url, c, answers, errors)) for c in range(API_CLIENTS)]
    workers += [
        threading.Thread(target=ui_session, args=(recorder.service, services.backend, s, outcomes, errors))
        for s in range(UI_SESSIONS)
    ]
    started_at = len(recorder.started)
    for thread in helpers + workers:
        thread.start()
    for thread in workers:
        thread.join(600)
    stop.set()
    for thread in helpers:
        thread.join(60)
    assert not any(t.is_alive() for t in workers + helpers), "a client is still waiting"
    assert not errors, "\n".join(errors[:10])

    sent = API_CLIENTS * JOBS_PER_CLIENT + UI_SESSIONS * JOBS_PER_CLIENT
    assert len(answers) + len(outcomes) == sent  # every request was answered once
    jobs = [job for job in recorder.jobs.values() if job.request is not None and job.request.prompt != "warm up"]
    assert len(jobs) == sent  # nothing queued twice, nothing dropped before the queue
    states = Counter(job.state for job in jobs)
    assert set(states) <= {"done", "interrupted"}, states  # never failed, never left running
    ran = recorder.started[started_at:]
    assert len(ran) == len(set(ran)), "a job ran twice"

    # FIFO: the single worker started the jobs in the order they were queued.
    numbers = [recorder.jobs[job_id].number for job_id in ran]
    assert numbers == sorted(numbers), "the queue was not served in order"

    files = {p.name: p for p in outputs.rglob("*.png")}
    seen_images: set[bytes] = set()
    checked = []
    for a in answers:
        info = json.loads(a["answer"]["info"])
        body = a["body"]
        images = [Image.open(io.BytesIO(base64.b64decode(x))) for x in a["answer"]["images"]]
        expected_seeds = [body["seed"] + i for i in range(body["batch_size"])]
        assert info["interrupted"] or len(images) == body["batch_size"], info
        assert info["all_seeds"] == expected_seeds[: len(images)] or (info["interrupted"] and not images)
        # One batch per job: an interrupted answer holds that batch as far as it got, unsaved (A1111).
        partial = info["interrupted"]
        for image, text, seed in zip(images, info["infotexts"], expected_seeds):
            assert text.startswith(body["prompt"] + "\n") and f"Seed: {seed}," in text
            assert image.info["parameters"] == text  # the PNG says whose it is too
            digest = pixels(image)
            assert digest not in seen_images, "two answers carry the same image"
            seen_images.add(digest)
            if body["save_images"] and not partial:
                (saved,) = [p for name, p in files.items() if name.endswith(f"-{seed}.png")]
                assert pixels(Image.open(saved)) == digest
            if partial:
                assert not [name for name in files if name.endswith(f"-{seed}.png")], "an incomplete image was saved"
            elif body["batch_size"] == 1:  # a batch of 2 may differ from two single runs in the last bit
                checked.append((body["prompt"], seed, digest))
    for o in outcomes:
        job, request = o["ran"], o["request"]
        assert job.state in ("done", "interrupted")
        for text, seed, image in zip(job.result.infotexts, job.result.seeds, job.result.images):
            assert text.startswith(request.prompt + "\n") and seed == request.seed
            digest = pixels(image)
            assert digest not in seen_images
            seen_images.add(digest)
            if job.state == "done":  # an interrupted job's image is its batch as far as it got
                checked.append((request.prompt, seed, digest))
    saved_names = [name for name in files]
    assert len(saved_names) == len(set(saved_names))

    # The pixels are the job's own: a few answers re-run alone give the same images.
    for prompt, seed, digest in random.Random(3).sample(checked, min(4, len(checked))):
        again = recorder.service.submit(
            GenerationRequest(
                prompt=prompt,
                seed=seed,
                steps=STEPS,
                width=64,
                height=64,
                sampler_name="Euler",
                sd_model_checkpoint=SD15,
                save_images=False,
            )
        )
        assert again.wait(120) and again.state == "done"
        assert pixels(again.result.images[0]) == digest, f"{prompt} seed {seed} got someone else's image"

    interrupted = states.get("interrupted", 0)
    record_figures(
        "concurrency",
        clients=API_CLIENTS + UI_SESSIONS,
        jobs=sent,
        completed=states.get("done", 0),
        interrupted=interrupted,
        lost=sent - len(jobs) + sum(1 for job in jobs if not job.finished),
        duplicated=len(ran) - len(set(ran)),
        cross_client_images=0,
        out_of_order=0,
    )
    print(
        f"{sent} jobs: {states.get('done', 0)} done, {interrupted} interrupted; "
        f"{interrupts[0]} API interrupts hit, {polls[0]} progress polls"
    )
