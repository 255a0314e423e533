#!/usr/bin/env python3
"""Speed benchmark: a full-size model (random weights from the real config cost the same as real ones),
per precision and option, against a bare diffusers fp32 pipeline on the same file, in the same run.

CPU: SD1.5 at 256x256, 10 steps. GPU: SDXL 1024x1024 30 steps, SD3 1024x1024 28 steps. Each row also
gives the denoiser's FLOPs per step over the seconds per step, and that as a share of the device's peak
(measured on a CPU, the data sheet's for known GPUs).

"bare diffusers" is ``pipe(prompt, ...)`` with diffusers' defaults: fp32, contiguous layout, the
prompt encoded on every call, the pipeline's own decode. The app's path encodes through the prompt
cache, runs the loop to latents and decodes through the guarded decode (``webui.speed``). Variants
run interleaved, repeat after repeat, so that other load on the machine hits all of them alike; the
table keeps each variant's best repeat. The speed-up is paired: the median over repeats of the bare
row's time over the variant's in the same repeat (this shared VM's speed drifts by 25% over minutes,
which a ratio of bests can mistake for a speed-up or a slow-down). Quality: pixel difference (0-255)
to the bare fp32 image, and the guard it must hold: mean <= 0.1 and p99 <= 2 for rows that compute in fp32
(other kernels, same maths), mean <= 3 and p99 <= 12 for rows that compute in bf16 anywhere (tests/test_speed.py's).

CPU engine: the "app auto" row runs what ``--cpu-engine auto`` picks (OpenVINO or torch, and why, printed
after the warm-up, which converts the UNet once and measures the engines once per model type; both kept in
``<work-dir>/cache``); "app fp32 + openvino" forces OpenVINO, computing in fp32 (the engine computes in the
precision the app chose: bf16 where ``--precision auto`` picks bf16).

    python scripts/bench_speed.py                          # 10 steps, 3 repeats, all variants
    python scripts/bench_speed.py --steps 4 --repeats 1    # quick look while developing
    python scripts/bench_speed.py --compile                # adds torch.compile rows (minutes of compiling)
    python scripts/bench_speed.py --only "app fp32,app fp32 + openvino"   # the bare, auto and these rows
    python scripts/bench_speed.py --family sdxl --device cuda --compile
    python scripts/bench_speed.py --family sd3 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT, NEGATIVE, CFG, SEED = "a watercolor painting of a lighthouse at dusk", "blurry", 7.5, 1234


@dataclass
class Variant:
    name: str
    precision: str  # "fp32" / "bf16" / "auto"
    channels_last: bool | None = False  # None: the tuner decides (auto)
    app: bool = True  # False: bare diffusers call
    compile: bool = False
    engine: object = None  # SpeedOptions for the CPU engine of this row (None: not set up per row)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    image: object = None
    note: str = ""

    def pipe_key(self) -> str:
        """Rows that lay the weights out differently get their own freshly loaded pipeline: converting a
        shared one back and forth re-allocates its weights, and re-allocated weights ran up to 25%
        slower here (same strides, same values), which would bias whichever rows come after."""
        if self.precision == "auto":
            return "auto"  # + compile shares it: compiling only wraps forwards
        if self.engine is not None:
            return self.precision  # the engine only wraps the UNet's forward, set per row (unset for the others)
        return f"{self.precision}+cl" if self.channels_last else self.precision


def _load(path: Path, precision: str, cache_dir: Path, device: str):
    from webui.models.devices import torch_dtype
    from webui.models.loader import load_checkpoint

    loaded = load_checkpoint(path, device=device, dtype=torch_dtype(precision), cache_dir=cache_dir)
    loaded.pipeline.set_progress_bar_config(disable=True)
    return loaded


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step_timer():
    marks: list[float] = []

    def callback(pipe, step, timestep, kwargs):
        _sync()  # a GPU step is only done when its kernels are
        marks.append(time.perf_counter())
        return {}

    return marks, callback


def _run(v: Variant, pipe, family, cache, steps: int, size: int):
    """One image; returns (PIL image, wall seconds, process CPU seconds, wall seconds per step)."""
    import torch

    from webui.generation.conditioning import encode_prompts
    from webui.speed.prompt_cache import PromptKey
    from webui.speed.vae_guard import decode_latents

    marks, callback = _step_timer()
    common = {"num_inference_steps": steps, "height": size, "width": size, "guidance_scale": CFG}
    common.update(generator=torch.Generator().manual_seed(SEED), callback_on_step_end=callback)
    _sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    if not v.app:
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, **common).images[0]
    else:
        key = PromptKey.of(pipe, ("bench", v.precision), PROMPT, NEGATIVE)
        cond = cache.get_or_encode(pipe, key, lambda: encode_prompts(pipe, family, [PROMPT], [NEGATIVE]))
        latents = pipe(**cond, output_type="latent", **common).images
        image = decode_latents(pipe, latents)[0]
    _sync()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    per_step = statistics.median(b - a for a, b in itertools.pairwise(marks)) if len(marks) > 1 else seconds
    return image, seconds, cpu, per_step


def _setup(v: Variant, pipe, tuner, family_id: str) -> None:
    """Once, before the warm-up: the layout (or the app's tuning for the auto rows)."""
    from webui.speed.layout import apply_layout

    if v.channels_last is None:
        v.note = "; ".join(tuner.apply(pipe, family_id).lines())
    elif v.channels_last:
        apply_layout(pipe, True)


def _prepare(v: Variant, pipes, engine_setup) -> object:
    from webui.speed.compile import compile_denoiser, denoiser, uncompile_denoiser

    pipe = pipes[v.pipe_key()]
    if v.compile:
        compile_denoiser(pipe)
    else:
        uncompile_denoiser(pipe)
    from webui.speed.ov_engine import detach_engine

    detach_engine(denoiser(pipe))  # rows sharing a pipeline: only this row's engine runs
    gc.collect()  # the compiled model of the row before
    if v.engine is not None:  # this row's engine, compiled now (from the stored IR after the first time), untimed
        engine_setup(pipe, v)
        runner = getattr(denoiser(pipe), "_webui_engine", None)
        if runner is not None:
            runner.prepare()
    return pipe


def _guard(v: Variant, mean: float, p99: float) -> str:
    """The quality guard the row must hold (see the module's docstring), and whether it does."""
    bf16 = "bf16" in v.name or "bf16" in v.note
    limit_mean, limit_p99 = (3.0, 12.0) if bf16 else (0.1, 2.0)
    ok = mean <= limit_mean and p99 <= limit_p99
    return f"{'holds' if ok else 'FAILS'} ({'bf16' if bf16 else 'fp32'}: <= {limit_mean:g} / {limit_p99:g})"


def _engine_note(v: Variant, pipe, seconds: float) -> None:
    """After the row's warm-up: which engine runs its UNet and why (the auto row's name says it too)."""
    from webui.speed.compile import denoiser
    from webui.speed.ov_engine import engine_state

    state = engine_state(denoiser(pipe))
    if state is None:
        return
    line = state.describe()
    v.note = "; ".join(x for x in (v.note, line) if x)
    if v.precision == "auto":
        engine = "OpenVINO" if state.engine == "openvino" else "torch"
        computes = f" {state.precision}" if state.engine == "openvino" and state.precision else ""
        v.name = v.name[:-1] + f", UNet: {engine}{computes})"
        print(f"--cpu-engine auto -> {line}", flush=True)
    print(f"{v.name}: warm-up with the engine's first use {seconds:.1f} s", flush=True)


def _paired(base: Variant, v: Variant) -> float:
    """Median over repeats of base time / variant time within the same repeat."""
    return statistics.median(b / x for b, x in zip(base.seconds, v.seconds, strict=True))


def _diff(image, reference) -> tuple[float, float]:
    import numpy as np

    d = np.abs(np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return float(d.mean()), float(np.percentile(d, 99))


def _overheads(pipe, family, cache, step_s: float, size: int, device: str) -> list[str]:
    """What happens between and around steps, against one denoising step."""
    import torch

    from webui.generation.conditioning import encode_prompts
    from webui.generation.preview import latents_to_preview
    from webui.generation.samplers import SamplerTable
    from webui.speed.prompt_cache import PromptKey

    def best(fn, n=5):
        out = []
        for _ in range(n):
            s = time.perf_counter()
            fn()
            out.append(time.perf_counter() - s)
        return min(out)

    key = PromptKey.of(pipe, ("bench", "overheads"), PROMPT, NEGATIVE)
    encode = best(lambda: encode_prompts(pipe, family, [PROMPT], [NEGATIVE]), 3)
    cache.get_or_encode(pipe, key, lambda: encode_prompts(pipe, family, [PROMPT], [NEGATIVE]))
    hit = best(lambda: cache.get_or_encode(pipe, key, dict))
    table = SamplerTable()
    config = dict(pipe.scheduler.config)
    sampler = ("Euler", "Automatic") if family.id == "sd3" else ("DPM++ 2M", "Karras")
    sched = best(lambda: table.build(config, family, "txt2img", *sampler, steps=10))
    channels = 16 if family.id == "sd3" else 4
    latents = torch.randn(1, channels, size // 8, size // 8, device=device)
    preview = best(lambda: latents_to_preview(latents, family))
    image = torch.randn(1, 3, size, size, device=device)
    finite = best(lambda: bool(torch.isfinite(image).all()))
    pct = lambda s: f"{100 * s / step_s:.3f}% of a step"
    return [
        f"prompt encoding: {encode * 1e3:.1f} ms; from the prompt cache: {hit * 1e3:.3f} ms",
        f"sampler build ({' '.join(sampler)}, from the checkpoint's config): {sched * 1e3:.2f} ms per pass",
        f"live preview (one, of a {size}px image): {preview * 1e3:.2f} ms = {pct(preview)}",
        f"NaN/inf check of a decoded {size}px image: {finite * 1e3:.3f} ms",
    ]


DEFAULTS = {"sd15": (256, 10), "sdxl": (1024, 30), "sd3": (1024, 28)}  # family -> (size, steps)


def _variants(device: str, auto, compile_rows: bool, family: str) -> list[Variant]:
    unet = family != "sd3"  # channels_last concerns convolutions; SD3's MMDiT has none but its VAE's
    if device == "cpu":
        rows = [
            Variant("bare diffusers fp32", "fp32", app=False),
            Variant("app fp32", "fp32"),
            Variant("app fp32 + channels_last", "fp32", True),
            Variant("app bf16", "bf16"),
            Variant("app bf16 + channels_last", "bf16", True),
        ]
    else:
        rows = [
            Variant("bare diffusers fp32", "fp32", app=False),
            Variant("app fp32", "fp32"),
            Variant("app fp16", "fp16"),
            Variant("app bf16", "bf16"),
        ]
        if unet:
            rows.append(Variant("app bf16 + channels_last", "bf16", True))
    rows.append(Variant(f"app auto ({auto.precision})", "auto", None, engine=_engine_options(auto)))
    if device == "cpu":
        from webui.speed.optimize import SpeedOptions

        rows.append(Variant("app fp32 + openvino", "fp32", False, engine=SpeedOptions("off", cpu_engine="openvino")))
    if compile_rows:
        rows.append(Variant(f"app auto ({auto.precision}) + compile", "auto", None, compile=True))
    return rows


def _engine_options(auto):
    """The speed options of the app's default path for this device choice (``--precision auto``)."""
    from webui.speed.optimize import SpeedOptions

    return SpeedOptions()


def _peak_line(device: str, precision: str) -> tuple[float | None, str]:
    from bench_flops import cpu_matmul_peak, gpu_peak

    if device == "cpu":
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
        peak = cpu_matmul_peak(dtype)
        return peak, f"measured {dtype} matmul (2048x2048)"
    import torch

    name = torch.cuda.get_device_name()
    peak = gpu_peak(name, precision)
    return peak, f"{name} data sheet" if peak else f"{name}: peak unknown"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="/tmp/webui-bench-models")
    p.add_argument("--family", default="sd15", choices=tuple(DEFAULTS))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, help="default: 10 for sd15, 30 for sdxl, 28 for sd3")
    p.add_argument("--size", type=int, help="default: 256 for sd15, 1024 for sdxl and sd3")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add a torch.compile row (slow to compile)")
    p.add_argument("--only", default="", help="comma list of variant names to run (the bare and auto rows always run)")
    args = p.parse_args(argv)
    size = args.size or DEFAULTS[args.family][0]
    steps = args.steps or DEFAULTS[args.family][1]

    import torch
    from bench_flops import step_flops
    from bench_models import build_checkpoint

    from webui.app import quiet_libraries
    from webui.families.registry import default_families
    from webui.models.devices import resolve_device
    from webui.speed.cpu_features import detect_cpu_features
    from webui.speed.optimize import SpeedTuner
    from webui.speed.prompt_cache import PromptCache

    quiet_libraries()
    work = Path(args.work_dir)
    path = work / "models" / "Stable-diffusion" / f"bench-{args.family}.safetensors"
    build_checkpoint(args.family, path)
    family = default_families().get(args.family)
    auto = resolve_device(args.device, "auto", probe_cache=work / "cache" / "precision_probe.json")
    device = auto.device
    hardware = detect_cpu_features().describe() if device == "cpu" else torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {hardware}")
    print(f"--precision auto -> {auto.describe()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n", flush=True)

    variants = _variants(device, auto, args.compile, args.family)
    from webui.speed.engine_setup import set_up_engine

    cache_dir = work / "cache"

    def engine_setup(pipe, v):
        choice = auto if v.precision == "auto" else resolve_device(device, v.precision)
        return set_up_engine(pipe, choice, v.engine, cache_dir)

    if args.only:
        keep = {n.strip() for n in args.only.split(",")}
        variants = [v for v in variants if not v.app or (v.precision == "auto" and not v.compile) or v.name in keep]
    precisions = sorted({auto.precision if v.precision == "auto" else v.precision for v in variants})
    pipes = {}
    tuner = SpeedTuner(auto, _engine_options(auto), cache_dir=cache_dir)
    for v in variants:
        key = v.pipe_key()
        if key not in pipes:
            pipes[key] = _load(path, auto.precision if key == "auto" else v.precision, work / "cache", device).pipeline
        _setup(v, pipes[key], tuner, args.family)
    cache = PromptCache()
    flops = step_flops(args.family, size)

    for v in variants:  # warm-up: oneDNN / cuDNN primitives, the prompt cache, torch.compile, the CPU engine
        start = time.perf_counter()
        pipe = _prepare(v, pipes, engine_setup)
        _run(v, pipe, family, cache, 2, size)
        if v.compile:
            print(f"{v.name}: first run with compilation {time.perf_counter() - start:.1f} s", flush=True)
        if v.engine is not None:
            _engine_note(v, pipe, time.perf_counter() - start)
    for r in range(args.repeats):
        for v in variants:
            pipe = _prepare(v, pipes, engine_setup)
            image, seconds, cpu, per_step = _run(v, pipe, family, cache, steps, size)
            v.seconds.append(seconds)
            v.cpu_seconds.append(cpu)
            v.steps.append(per_step)
            if v.image is None:
                v.image = image
            print(
                f"  repeat {r + 1}: {v.name}: {seconds:.2f} s/image ({cpu:.1f} CPU s), {per_step:.3f} s/step",
                flush=True,
            )

    base = variants[0]
    print(f"\n{args.family} full size, {size}x{size}, {steps} steps, CFG {CFG}, {device}, best of {args.repeats}")
    spread = f"{min(base.seconds):.2f}-{max(base.seconds):.2f}"
    print(f"the bare row took {spread} s over the repeats (the machine's drift; speed-ups are paired per repeat)")
    print(f"one denoising step with CFG: {flops / 1e12:.3f} TFLOP (counted on the meta device)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")
    peaks = {prec: _peak_line(device, prec) for prec in precisions}
    print(
        "| variant | s/image | s/step | speed-up vs bare | CPU s/image | TFLOP/s in steps | share of peak"
        " | mean diff | p99 diff | quality guard |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for v in variants:
        mean, p99 = _diff(v.image, base.image)
        wall, cpu, step = min(v.seconds), min(v.cpu_seconds), min(v.steps)
        achieved = flops / step
        peak = peaks[auto.precision if v.precision == "auto" else v.precision][0]
        share = f"{100 * achieved / peak:.0f}%" if peak else "-"
        print(
            f"| {v.name} | {wall:.2f} | {step:.3f} | {_paired(base, v):.2f}x | {cpu:.1f}"
            f" | {achieved / 1e12:.3f} | {share} | {mean:.2f} | {p99:.1f} | {_guard(v, mean, p99)} |"
        )
    print("\npeaks:")
    for prec, (peak, how) in peaks.items():
        print(f"  {prec}: {peak / 1e12:.3f} TFLOP/s ({how})" if peak else f"  {prec}: {how}")
    print("(CPU s: the process's CPU time, less sensitive than wall time to other load on a shared machine)")
    for v in variants:
        if v.note:
            print(f"\n{v.name}: {v.note}")
    auto_row = next(v for v in variants if v.precision == "auto" and not v.compile)
    print(f"\noverheads (against one step of {auto_row.name}):")
    for line in _overheads(pipes["auto"], family, cache, min(auto_row.steps), size, device):
        print(f"  {line}")
    del pipes
    gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
