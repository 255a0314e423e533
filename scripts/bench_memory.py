#!/usr/bin/env python3
"""Memory-mode benchmark: peak memory and speed of each memory mode, on the app's own load path.

Each mode is measured in a fresh subprocess (so the process's peak resident memory belongs to that
mode alone): the checkpoint is loaded with ``webui.models.loader.load_checkpoint`` on the device
the plan asks for (``MemoryPlan.load_device``), the plan is applied with
``webui.memory.apply.apply_plan``, then images are generated with a fixed seed (noise drawn on
the CPU, so every mode starts from the same latents). Reported: seconds to load, resident memory
after load, peak resident memory while generating and over the whole process, on CUDA the VRAM
after load and the peak VRAM while generating, seconds per image, and how far the image is from
the one without any mode (max difference in 8-bit levels).

    python scripts/bench_memory.py                                  # tiny SD1.5, CPU, all modes
    python scripts/bench_memory.py --models full --family sd15 --size 256 --steps 2
    python scripts/bench_memory.py --models full --family sdxl --device cuda --size 1024 --steps 4
    python scripts/bench_memory.py --modes none,vae_tiling,model_cpu_offload+vae_tiling

Full-size models are random-weight checkpoints of the real architectures built by
``scripts/bench_models.py`` (same tensors and bytes as the released fp16 files; SD3 without T5).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a photo of a cat sitting on a wooden table, soft light"
GIB = 2**30


class PeakRss:
    """Samples this process's resident memory every few milliseconds; ``peak`` since the last reset."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._lock = threading.Lock()  # reset() must not race with a sample of the old phase
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def now(self) -> int:
        return self._proc.memory_info().rss

    def reset(self) -> None:
        with self._lock:
            self.peak = self.now()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def _checkpoint(args) -> tuple[Path, Path | None]:
    """(checkpoint path, T5 tokenizer folder or None), built on first use."""
    work = Path(args.work_dir)
    if args.checkpoint:
        return Path(args.checkpoint), None
    if args.models == "tiny":
        from webui.models.demo import demo_checkpoint_name, write_demo_models

        write_demo_models(work / "models", (args.family,))
        tokenizer = work / "models" / "text_encoder" / "t5_tokenizer"
        return work / "models" / "Stable-diffusion" / demo_checkpoint_name(args.family), tokenizer
    from scripts.bench_models import build_checkpoint

    path = work / "models" / "Stable-diffusion" / f"bench-{args.family}.safetensors"
    build_checkpoint(args.family, path)
    return path, None


def _generate(pipe, family, args) -> tuple[object, float]:
    """One batch with a fixed seed; returns (uint8 images, seconds per image)."""
    import numpy as np
    import torch

    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(1234 + i) for i in range(args.batch)]
    kwargs = {
        "prompt": [PROMPT] * args.batch,
        "num_inference_steps": args.steps,
        "height": args.size,
        "width": args.size,
        "generator": gens,
        "output_type": "np",
    }
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = pipe(**kwargs).images
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.batch
    return (np.nan_to_num(images) * 255).round().astype(np.uint8), seconds


def measure(spec: str, args, ckpt: Path, tokenizer: Path | None) -> dict:
    """Load, apply the plan ``spec`` ("none", "vae_tiling+model_cpu_offload"), generate; the figures."""
    import torch

    from webui.memory.apply import apply_plan, release_memory
    from webui.memory.modes import MemoryModeRegistry, register_builtin_modes
    from webui.memory.planner import PlanError, plan
    from webui.models.devices import resolve_device
    from webui.models.loader import load_checkpoint

    rss = PeakRss()
    names = [] if spec == "none" else spec.split("+")
    registry = MemoryModeRegistry()
    register_builtin_modes(registry)
    result: dict = {"mode": spec}
    try:
        current = plan(names, registry, args.family, args.device)
    except PlanError as exc:
        rss.stop()
        return {**result, "error": str(exc)}
    choice = resolve_device(args.device, args.precision)
    cuda = args.device == "cuda"
    extra = {}
    if "load_kwargs" in inspect.signature(load_checkpoint).parameters:
        extra["load_kwargs"] = current.load_kwargs
    start = time.perf_counter()
    loaded = load_checkpoint(
        ckpt,
        device=current.load_device(args.device),
        dtype=choice.dtype,
        cache_dir=Path(args.work_dir) / "cache",
        t5_tokenizer_dir=tokenizer,
        **extra,
    )
    notes = apply_plan(loaded.pipeline, current, args.device, dtype=choice.dtype, family=loaded.family)
    if cuda:
        torch.cuda.synchronize()
    result["load_s"] = time.perf_counter() - start
    gc.collect()
    result["rss_loaded"] = rss.now()
    if cuda:
        result["vram_loaded"] = torch.cuda.memory_allocated()
    pipe = loaded.pipeline
    for _ in range(args.warmup):
        _generate(pipe, loaded.family, args)
    rss.reset()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    images, seconds = _generate(pipe, loaded.family, args)
    result["rss_peak_gen"] = rss.stop()
    result["rss_peak_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        result["vram_peak_gen"] = torch.cuda.max_memory_allocated()
    result["s_per_image"] = seconds
    result["notes"] = [n for n in notes if not n.startswith("auto")]
    import numpy as np

    image_file = Path(args.work_dir) / f"image-{args.family}-{args.models}-{spec}.npy"
    np.save(image_file, images)
    result["image"] = str(image_file)
    del pipe, loaded
    release_memory(args.device)
    return result


def _child(args) -> int:
    ckpt, tokenizer = Path(args.ckpt_path), (Path(args.tokenizer) if args.tokenizer else None)
    out = measure(args.child, args, ckpt, tokenizer)
    Path(args.result).write_text(json.dumps(out))
    return 0


def _run_child(spec: str, args, ckpt: Path, tokenizer: Path | None) -> dict:
    result = Path(args.work_dir) / f"result-{os.getpid()}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, *sys.argv[1:], "--child", spec, "--result", str(result)]
    cmd += ["--ckpt-path", str(ckpt)] + (["--tokenizer", str(tokenizer)] if tokenizer else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"mode": spec, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(result.read_text())


def _gib(n) -> str:
    return "" if n is None else f"{n / GIB:.2f}"


def _same(result: dict, base: dict | None) -> str:
    import numpy as np

    if base is None or "image" not in result or "image" not in base:
        return ""
    a, b = np.load(result["image"]), np.load(base["image"])
    diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    return "identical" if diff == 0 else f"max {diff}/255"


def table(results: list[dict], cuda: bool) -> str:
    base = next((r for r in results if r["mode"] == "none" and "image" in r), None)
    head = ["mode", "load s", "RSS loaded GiB", "peak RSS gen GiB", "peak RSS process GiB"]
    head += ["VRAM loaded GiB", "peak VRAM gen GiB"] if cuda else []
    head += ["s/image", "image vs none", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | " + " | ".join([""] * (len(head) - 2)) + f" | refused: {r['error']} |")
            continue
        row = [
            r["mode"],
            f"{r['load_s']:.1f}",
            _gib(r["rss_loaded"]),
            _gib(r["rss_peak_gen"]),
            _gib(r["rss_peak_process"]),
        ]
        row += [_gib(r.get("vram_loaded")), _gib(r.get("vram_peak_gen"))] if cuda else []
        row += [f"{r['s_per_image']:.2f}", _same(r, base), "; ".join(r.get("notes", []))[:120]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _all_modes(args) -> list[str]:
    from webui.memory.modes import builtin_memory_modes

    return ["none", *(m.name for m in builtin_memory_modes())]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=("tiny", "full"), default="tiny")
    p.add_argument("--family", choices=("sd15", "sdxl", "sd3"), default="sd15")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", default="auto", help="auto (CPU fp32, CUDA fp16), fp32, bf16, fp16")
    p.add_argument("--modes", default="all", help="comma list; '+' combines modes in one plan; 'all' = none + each")
    p.add_argument("--size", type=int, default=0, help="image side (default: 64 tiny, 512 full)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=-1, help="untimed runs first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--checkpoint", default="", help="use this checkpoint instead of building one")
    p.add_argument("--work-dir", default="/tmp/webui-bench-memory")
    p.add_argument("--in-process", action="store_true", help="one process for all modes (faster; process peak shared)")
    p.add_argument("--out", default="", help="also append the table to this markdown file")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    p.add_argument("--ckpt-path", default="", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.models == "tiny" else 512)
    args.warmup = args.warmup if args.warmup >= 0 else (1 if args.device == "cuda" else 0)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)

    from webui.app import quiet_libraries

    quiet_libraries()
    if args.child:
        return _child(args)
    ckpt, tokenizer = _checkpoint(args)
    specs = _all_modes(args) if args.modes == "all" else [s.strip() for s in args.modes.split(",") if s.strip()]
    import torch

    title = (
        f"{args.family} ({args.models}, {ckpt.stat().st_size / GIB:.2f} GiB file) on {args.device}"
        f"{' ' + torch.cuda.get_device_name() if args.device == 'cuda' else ''}, {args.size}x{args.size},"
        f" {args.steps} steps, batch {args.batch}, precision {args.precision}, torch {torch.__version__}"
    )
    print(title, flush=True)
    results = []
    for spec in specs:
        r = measure(spec, args, ckpt, tokenizer) if args.in_process else _run_child(spec, args, ckpt, tokenizer)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "image"}), flush=True)
        if args.out:  # written after every mode, so a run cut short still leaves its rows
            Path(args.out).write_text(f"{title}\n\n{table(results, args.device == 'cuda')}\n")
    print("\n" + table(results, args.device == "cuda"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
