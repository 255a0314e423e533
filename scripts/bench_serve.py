#!/usr/bin/env python3
"""Serving benchmark: the Ray Serve backend with 1 and 2 replicas against the in-process backend, on the same
mixed-model stream (SD 1.5 and SDXL jobs in turn), on this machine.

Each run: the backend starts, one job per model warms it up (one after the other, so that on 2 replicas each
model finds its own home), then ``--jobs`` jobs are submitted at once, alternating the models, and every
job's end is watched. It prints, per run: the wall time of the stream, throughput (jobs/s), p50/p95
latency (submit to end) and the swaps after warm-up:
the model manager's count of active-checkpoint changes (``ModelManager.switches``; each Ray replica reports
its own with its jobs).
Every replica and the in-process worker get ``--threads`` torch threads (default 1: one core each here).
The exit status is 1 when 2 replicas are not at least ``--want`` x the throughput of 1, or swap after warm-up.

    python scripts/bench_serve.py                          # tiny demo models (random weights), 128x128, 20 steps
    python scripts/bench_serve.py --jobs 40 --size 192 --steps 24
    python scripts/bench_serve.py --runs ray2              # only some of: local, ray1, ray2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = ("demo-sd15-noise.safetensors", "demo-sdxl-noise.safetensors")


def settings_for(root: Path, replicas: int, threads: int):
    from webui.config import Settings

    return Settings.under(
        root,
        device="cpu",
        precision="fp32",
        channels_last="off",
        cpu_engine="torch",
        preview_every=0,
        backend="ray" if replicas else "local",
        replicas=replicas,
        replica_threads=threads,
    )


def request(model: str, seed: int, args: argparse.Namespace):
    from webui.generation.requests import GenerationRequest

    return GenerationRequest(
        prompt="a lighthouse on a cliff at dusk", steps=args.steps, width=args.size, height=args.size, seed=seed,
        sd_model_checkpoint=model, save_images=True,
    )


def run_stream(backend, args: argparse.Namespace, after_warm_up=lambda: 0) -> dict:
    """Warm up (a job per model, in turn), then the stream: wall time and each job's latency.
    ``after_warm_up``: what to note once warm (the swap count so far)."""
    for i, model in enumerate(MODELS):
        job = backend.submit(request(model, 1000 + i, args), "bench warm-up")
        done = backend.wait(job.id, 600)
        if done.state != "done":
            raise SystemExit(f"warm-up job failed: {done.error}")
    warm = after_warm_up()
    start = time.time()
    ids = [backend.submit(request(MODELS[i % len(MODELS)], i, args), "bench").id for i in range(args.jobs)]
    for job_id in ids:  # waits on each job's end (no polling: the backend's own events)
        backend.wait(job_id, 3600)
    failed = [j for j in ids if backend.job(j).state != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed: {backend.job(failed[0]).error}")
    ended = {e.id: e for e in backend.queue_list(history=len(ids) + 10).history if e.id in ids}
    latencies = sorted(ended[j].finished - ended[j].created for j in ids)  # the backend's own times
    wall = max(ended[j].finished for j in ids) - start
    runs: dict[str, list[float]] = {}
    for i, job_id in enumerate(ids):
        runs.setdefault(MODELS[i % len(MODELS)], []).append(ended[job_id].finished - ended[job_id].started)
    starts = [ended[j].started for j in ids]  # in submission order
    overtaken = sum(1 for i, t in enumerate(starts) if any(t > later for later in starts[i + 1 :]))
    return {"wall": wall, "latencies": latencies, "ids": ids, "warm": warm, "runs": runs, "overtaken": overtaken}


def local_run(root: Path, args: argparse.Namespace) -> dict:
    import torch

    from webui.app import build_services

    torch.set_num_threads(args.threads)
    services = build_services(settings_for(root, 0, args.threads), base=root)
    services.warm_up.start().get()
    services.generation.start()
    try:
        manager = services.manager
        result = run_stream(services.backend, args, after_warm_up=lambda: manager.switches)
        result["swaps"] = manager.switches - result["warm"]
        return result
    finally:
        services.generation.stop()


def ray_run(root: Path, replicas: int, args: argparse.Namespace) -> dict:
    from webui.app import ROOT as APP_ROOT
    from webui.app import build_services
    from webui.serve.start import build_ray_backend

    services = build_services(settings_for(root, replicas, args.threads), base=root)
    backend = build_ray_backend(services, APP_ROOT)  # as the app starts it
    try:
        t0 = time.monotonic()
        backend._cluster()
        print(f"  ray: {replicas} replica(s) ready in {time.monotonic() - t0:.1f} s", flush=True)
        result = run_stream(backend, args, after_warm_up=lambda: changes(backend))
        result["swaps"] = changes(backend) - result["warm"]
        result["replicas"] = backend.replica_stats()
        return result
    finally:
        backend.close()


def changes(backend) -> int:
    """The replicas' active-checkpoint changes so far, all together."""
    return sum(s["model_changes"] for s in backend.replica_stats().values())


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=24, help="jobs in the stream after warm-up (default 24)")
    p.add_argument("--size", type=int, default=128, help="width and height (default 128)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps per job (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--runs", default="local,ray1,ray2", help="which runs, comma list of local, ray1, ray2")
    p.add_argument("--want", type=float, default=1.7, help="the least 2-replica / 1-replica throughput (1.7)")
    p.add_argument("--root", default="", help="folder for the models and outputs (default: a temporary one)")
    args = p.parse_args(argv)

    from webui.models.demo import write_demo_models

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="webui-bench-serve-"))
    write_demo_models(root / "models", ("sd15", "sdxl"))
    print(f"bench_serve: {args.jobs} jobs ({', '.join(MODELS)} in turn), {args.size}x{args.size}, {args.steps} steps,"
          f" {args.threads} torch thread(s) per worker, {os.cpu_count()} CPU(s); models in {root}", flush=True)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    results: dict[str, dict] = {}
    for name in runs:
        print(f"run {name} ...", flush=True)
        if name == "local":
            results[name] = local_run(root, args)
        elif name in ("ray1", "ray2"):
            results[name] = ray_run(root, int(name[-1]), args)
        else:
            raise SystemExit(f"unknown run {name!r}; use local, ray1, ray2")
    labels = {"local": "in-process backend", "ray1": "Ray Serve, 1 replica", "ray2": "Ray Serve, 2 replicas"}
    print()
    print(f"{'backend':<24} {'wall s':>8} {'jobs/s':>8} {'p50 s':>8} {'p95 s':>8} {'swaps after warm-up':>20}")
    for name, r in results.items():
        lat = r["latencies"]
        print(f"{labels[name]:<24} {r['wall']:>8.2f} {len(lat) / r['wall']:>8.3f} {percentile(lat, 50):>8.2f}"
              f" {percentile(lat, 95):>8.2f} {r['swaps']:>20d}")
    print("\njobs that a job sent after them overtook (started first):")
    for name, r in results.items():
        if name != "ray2":  # on 2 replicas the models run side by side: order is per replica
            print(f"  {labels[name]:<24} {r['overtaken']} of {len(r['ids'])}")
    print("\nmean run of one job (its load included), s:")
    for name, r in results.items():
        print(f"  {labels[name]:<24} " + ", ".join(f"{m.split('-')[1]} {statistics.mean(v):.2f}" for m, v in r["runs"].items()))
    status = 0
    if "ray1" in results and "ray2" in results:
        speedup = results["ray1"]["wall"] / results["ray2"]["wall"]
        print(f"\n2 replicas / 1 replica throughput: {speedup:.2f}x (want >= {args.want})")
        if speedup < args.want or results["ray2"]["swaps"]:
            status = 1
    for name in ("ray2", "ray1"):
        if name in results:
            for tag, info in sorted(results[name]["replicas"].items()):
                print(f"  {labels[name]}: replica {tag} (pid {info['pid']}) holds {info['active']},"
                      f" {info['model_changes']} model change(s) in all")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
