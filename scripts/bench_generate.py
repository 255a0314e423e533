#!/usr/bin/env python3
"""Generation benchmark: our end-to-end request against a bare diffusers call on the same model.

For each family it loads one checkpoint through the app's catalog and manager, then times
  * bare:  ``pipe(prompt=..., negative_prompt=..., generator=...)`` on the very same pipeline
           object with the same sampler, size, steps and CFG (what a diffusers script would do);
  * ours:  a ``GenerationRequest`` submitted to the job queue and waited for: validation, prompt
           parsing and weighting, seeds, progress and previews, the PNG with its infotext written
           atomically to outputs/;
and prints ours / bare as a ratio, plus steady-state steps per second (from two step counts, so
fixed costs such as text encoding, VAE decode and saving drop out).

Then the X/Y/Z plot: a grid of N cells (one queue job; the grid image drawn and saved too) against the
same N cells submitted as N single jobs, alternated over ``--grid-repeats`` rounds; it prints the medians,
their ratio and whether the grid stays within N single jobs + 5% (exit status 1 when it does not).

    python scripts/bench_generate.py                                   # tiny demo models, CPU: overhead view
    python scripts/bench_generate.py --models full --families sd15 --size 256 --steps 10
    python scripts/bench_generate.py --models full --families sdxl,sd3 --size 1024 --steps 30 --device cuda --precision fp16
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
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def _models(kind: str, families: list[str], work: Path) -> Path:
    models = work / "models"
    if kind == "tiny":
        from webui.models.demo import write_demo_models

        write_demo_models(models, tuple(families))
    else:
        from bench_models import build_checkpoint

        for fam in families:
            build_checkpoint(fam, models / "Stable-diffusion" / f"bench-{fam}.safetensors")
    return models


def _checkpoint(kind: str, family: str) -> str:
    from webui.models.demo import demo_checkpoint_name

    return demo_checkpoint_name(family) if kind == "tiny" else f"bench-{family}.safetensors"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (allocations, kernels, caches)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_family(services, args, family: str) -> dict:
    import torch

    from webui.generation.requests import GenerationRequest

    name = _checkpoint(args.models, family)
    services.generation.call(lambda: services.manager.load(name), timeout=3600)
    fam = services.manager.family
    sampler = services.samplers.default_sampler(fam)
    device = services.device.device

    def ours(steps: int) -> float:
        def run():
            req = GenerationRequest(
                prompt=PROMPT, negative_prompt=NEGATIVE, seed=1, steps=steps, cfg_scale=7.0, width=args.size,
                height=args.size, sampler_name=sampler, sd_model_checkpoint=name, save_images=True,
            )
            job = services.generation.submit(req)
            job.wait()
            if job.state != "done":
                raise SystemExit(f"{family}: {job.error}")

        return _time(run, args.repeats, device)

    def bare(steps: int) -> float:
        def run():
            # The same pipeline object and sampler; everything else as a plain diffusers script does it.
            pipe = services.manager.pipeline("txt2img")
            built = services.samplers.build(services.manager.scheduler_config(), fam, "txt2img", sampler, "", steps=steps)
            pipe.scheduler = built.scheduler
            pipe.set_progress_bar_config(disable=True)
            pipe(
                prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0,
                height=args.size, width=args.size, generator=torch.Generator(device).manual_seed(1),
            ).images[0]

        return services.generation.call(lambda: _time(run, args.repeats, device), timeout=3600)

    t_bare, t_ours = bare(args.steps), ours(args.steps)
    t_ours_2 = ours(args.steps * 2)
    return {
        "family": fam.label,
        "bare": t_bare,
        "ours": t_ours,
        "ratio": t_ours / t_bare,
        "steps_per_s": args.steps / max(t_ours_2 - t_ours, 1e-9),
    }


GRID_AXES = ["CFG Scale", "5, 7", [], "Seed", "1, 2", [], "Nothing", "", []]  # 2 x 2 = 4 cells
GRID_LIMIT = 1.05


def bench_grid(services, args, family: str) -> dict:
    """Median seconds of one grid job vs. its cells as single jobs, measured in alternation."""
    from webui.generation.requests import GenerationRequest
    from webui.xyz.grid import cells, from_script_args

    base = GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, seed=1, steps=args.steps, width=args.size, height=args.size,
        sd_model_checkpoint=_checkpoint(args.models, family), save_images=True,
    )  # fmt: skip
    grid = from_script_args(base, [*GRID_AXES, True, True, False, False, False, False, False, 0, False])
    singles = [c.request for c in cells(grid)]

    def wait(job) -> None:
        job.wait()
        if job.state != "done":
            raise SystemExit(f"{family} grid bench: {job.error}")

    def one_grid() -> None:
        wait(services.generation.submit(grid))

    def one_by_one() -> None:
        jobs = [services.generation.submit(r) for r in singles]  # queued together, as a user would
        for job in jobs:
            wait(job)

    one_grid(), one_by_one()  # warm-up
    t_grid, t_singles = [], []
    for i in range(args.grid_repeats):
        for fn, times in ((one_grid, t_grid), (one_by_one, t_singles))[:: 1 if i % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    grid_s, singles_s = statistics.median(t_grid), statistics.median(t_singles)
    return {"cells": len(singles), "grid": grid_s, "singles": singles_s, "ratio": grid_s / singles_s}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=("tiny", "full"), default="tiny")
    p.add_argument("--families", default="sd15,sdxl,sd3")
    p.add_argument("--size", type=int, default=0, help="width and height (default: 64 tiny, 256 full)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--work-dir", default="/tmp/webui-bench-models")
    p.add_argument("--grid-repeats", type=int, default=7, help="rounds of the X/Y/Z grid bench (0: skip it)")
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.models == "tiny" else 256)
    families = args.families.split(",")

    from webui.app import build_services, quiet_libraries
    from webui.config import Settings

    quiet_libraries()
    work = Path(args.work_dir)
    models = _models(args.models, families, work)
    out = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    settings = Settings(
        models_dir=str(models), outputs_dir=str(out), cache_dir=str(work / "cache"),
        extensions_dir=str(out / "ext"), config_file=str(out / "config.json"),
        device=args.device, precision=args.precision, preview_every=5,
    )
    services = build_services(settings, base=out)
    services.generation.start()
    print(f"device {args.device}, {args.precision}, {args.models} models, {args.size}x{args.size}, {args.steps} steps, "
          f"median of {args.repeats}", flush=True)
    print("| family | bare diffusers (s) | ours end-to-end (s) | ours / bare | steady-state steps/s |")
    print("|---|---|---|---|---|")
    for fam in families:
        r = bench_family(services, args, fam)
        print(f"| {r['family']} | {r['bare']:.3f} | {r['ours']:.3f} | {r['ratio']:.2f}x | {r['steps_per_s']:.2f} |",
              flush=True)
    status = 0
    if args.grid_repeats > 0:
        g = bench_grid(services, args, families[0])
        ok = g["ratio"] <= GRID_LIMIT
        status = 0 if ok else 1
        print(f"X/Y/Z grid of {g['cells']} cells ({families[0]}): {g['grid']:.3f} s as one grid job vs "
              f"{g['singles']:.3f} s as {g['cells']} single jobs (median of {args.grid_repeats}, alternated): "
              f"{g['ratio']:.3f}x, {'within' if ok else 'ABOVE'} N single jobs + 5%", flush=True)
    services.generation.stop()
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
