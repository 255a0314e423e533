#!/usr/bin/env python3
"""Trace one tiny txt2img through ``POST /sdapi/v1/txt2img`` and count the app files it passes.

It writes a tiny SD 1.5 demo model to a temporary folder, builds the app's services (CPU, fp32) and
the ``/sdapi/v1`` router, sends one txt2img to warm up (the model load is not part of a request's
path), then traces a second one with a profile function on every thread (the web server's and the
generation worker's) and prints:

* files: the distinct ``webui/`` files whose code ran for the request;
* hops: the calls from one ``webui/`` file into another, each counted (a call that goes through a
  library, diffusers calling our step callback or FastAPI calling a route, counts from the nearest
  ``webui/`` frame on the stack; a coroutine counts once, not at every resume). The API handler polls
  the job while it runs, so this figure moves by a few between runs;
* edges: the distinct (caller file, callee file) pairs among those hops;
* repeats: how many times the request's checks ran (issue 14 counted ``validate_request`` twice,
  ``SamplerTable.check`` four times, ``extract_loras`` six times, ``catalog.find`` three times per
  request): each of ``WATCHED`` by name, wherever it lives.

    .venv/bin/python scripts/request_path.py            # the two figures
    .venv/bin/python scripts/request_path.py --list     # and the files and edges
    .venv/bin/python scripts/request_path.py --names    # a request that names its checkpoint and a LoRA

``docs/REQUEST_PATH.md`` describes the path these figures measure.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PACKAGE = str(ROOT / "webui") + os.sep
RESUMABLE = inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
# The checks issue 14 found repeated, by function name (the file they live in changed over the issue).
WATCHED = (
    "validate_request",
    "check_request",
    "extract_loras",
    "ModelCatalog.find",
    "SamplerTable.check",
    "SamplerTable.choose",
    "SamplerTable.resolve",
)
BODY = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 1, "save_images": True}


class Tracer:
    """Records the webui files entered and the file-to-file edges while ``on`` is set."""

    def __init__(self) -> None:
        self.on = False
        self.files: set[str] = set()
        self.edges: dict[tuple[str, str], int] = {}  # (caller file, callee file) -> hops
        self.calls = 0  # the hops: file-to-file calls, each counted
        self.watched: dict[str, int] = dict.fromkeys(WATCHED, 0)
        self._lock = threading.Lock()
        self._resumable: dict[int, object] = {}

    def profile(self, frame, event, arg):  # sys.setprofile signature
        if event != "call" or not self.on:
            return
        callee = frame.f_code.co_filename
        if not callee.startswith(PACKAGE):
            return
        if frame.f_code.co_flags & RESUMABLE:  # a coroutine or generator: count its first entry, not each resume
            if id(frame) in self._resumable:
                return
            self._resumable[id(frame)] = frame  # kept alive so that its id is not reused
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(PACKAGE):
            caller = caller.f_back
        name = frame.f_code.co_qualname
        with self._lock:
            if name in self.watched:
                self.watched[name] += 1
            self.files.add(callee)
            if caller is not None and caller.f_code.co_filename != callee:
                edge = (caller.f_code.co_filename, callee)
                self.edges[edge] = self.edges.get(edge, 0) + 1
                self.calls += 1


def _relative(path: str) -> str:
    return str(Path(path).relative_to(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the files and edges too")
    parser.add_argument(
        "--names", action="store_true", help="trace a request naming its checkpoint (override_settings) and a LoRA"
    )
    args = parser.parse_args(argv)

    tracer = Tracer()
    threading.setprofile(tracer.profile)  # threads started from here on: the worker, the client's portal
    sys.setprofile(tracer.profile)

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.api.sdapi import build_sdapi_router
    from webui.app import build_services
    from webui.config import Settings
    from webui.models.demo import demo_checkpoint_name, write_demo_models

    with tempfile.TemporaryDirectory(prefix="request-path-") as tmp:
        root = Path(tmp)
        write_demo_models(root / "models", ("sd15",), loras=args.names)
        settings = Settings.under(
            root,
            device="cpu",
            precision="fp32",
            channels_last="off",
            default_model=demo_checkpoint_name("sd15"),
            preview_every=1,
        )
        services = build_services(settings, base=root)
        app = FastAPI()
        app.include_router(build_sdapi_router(services.backend))
        services.generation.start()
        try:
            with TestClient(app) as client:
                body = dict(BODY)
                if args.names:
                    body["prompt"] += " <lora:demo-sd15-lora:0.5>"
                    body["override_settings"] = {"sd_model_checkpoint": demo_checkpoint_name("sd15")}
                warm = client.post("/sdapi/v1/txt2img", json=body)
                assert warm.status_code == 200, warm.text
                tracer.on = True
                answer = client.post("/sdapi/v1/txt2img", json={**body, "seed": 2})
                tracer.on = False
                assert answer.status_code == 200, answer.text
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            services.generation.stop()

    print(f"files: {len(tracer.files)}")
    print(f"hops: {tracer.calls}")
    print(f"edges: {len(tracer.edges)}")
    print("repeats: " + ", ".join(f"{name} {count}" for name, count in tracer.watched.items()))
    if args.list:
        print("\nfiles:")
        for path in sorted(tracer.files):
            print(f"  {_relative(path)}")
        print("\nhops:")
        for (caller, callee), count in sorted(tracer.edges.items()):
            print(f"  {_relative(caller)} -> {_relative(callee)}  {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
