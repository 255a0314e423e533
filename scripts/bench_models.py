#!/usr/bin/env python3
"""Model loading benchmark: a switch against reading the file (cold: its pages dropped from the page cache;
cached: in the page cache, plus the cast to the weights' precision), warm switch from the RAM cache,
memory over swaps. The manager's log line of each load (printed, indented) says where its time went.

Builds full-size random-weight checkpoints from the real configs (same tensors, same bytes as the
released fp16 files, so the same load cost), writes them in the original single-file layout, then
loads them through the app's own catalog and manager, exactly as a user's files are loaded.

    python scripts/bench_models.py                       # SD1.5, SDXL, SD3 medium (no T5)
    python scripts/bench_models.py --families sd15 --precision fp32 --standard
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _clip(hidden, layers, heads, inter, act, proj):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, hidden_act=act, max_position_embeddings=77, projection_dim=proj,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def _vae(latent=4, quant=True):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=latent,
        use_quant_conv=quant, use_post_quant_conv=quant,
    )


def _parts(family):
    """(part name, builder) for each component of a full-size checkpoint of the family."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    clip_l = lambda: CLIPTextModel(_clip(768, 12, 12, 3072, "quick_gelu", 768))  # noqa: E731
    clip_g = lambda: CLIPTextModelWithProjection(_clip(1280, 32, 20, 5120, "gelu", 1280))  # noqa: E731
    if family == "sd15":
        return [("unet", lambda: UNet2DConditionModel(cross_attention_dim=768)), ("vae", _vae), ("clip_l", clip_l)]
    if family == "sdxl":
        unet = lambda: UNet2DConditionModel(  # noqa: E731
            block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, use_linear_projection=True,
        )
        return [("unet", unet), ("vae", _vae), ("clip_l", clip_l), ("clip_g", clip_g)]
    if family == "sd3":
        def clip_l_proj():
            import torch

            m = CLIPTextModelWithProjection(_clip(768, 12, 12, 3072, "quick_gelu", 768))
            with torch.no_grad():
                m.text_projection.weight.copy_(torch.eye(768))
            return m

        mmdit = lambda: SD3Transformer2DModel(  # noqa: E731
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
            pos_embed_max_size=192,
        )
        return [("transformer", mmdit), ("vae", lambda: _vae(16, False)), ("clip_l", clip_l_proj), ("clip_g", clip_g)]
    raise SystemExit(f"unknown family {family}")


def build_checkpoint(family: str, path: Path) -> None:
    import torch

    from webui.models.ldm_export import components_to_original, save_state_dict

    if path.exists():
        return
    print(f"building full-size random {family} -> {path} ...", flush=True)
    state = {}
    torch.manual_seed(0)
    for part, build in _parts(family):
        module = build().eval()
        sd = components_to_original(family, {part: module})
        state.update({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in sd.items()})
        del module, sd
        gc.collect()
    save_state_dict(state, path)
    del state
    gc.collect()


def raw_read_seconds(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        buf = bytearray(16 << 20)
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def drop_from_page_cache(path: Path) -> bool:
    """Evict the file's pages (no root needed: only this file's clean pages); True when the kernel confirms."""
    import subprocess

    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:  # fincore (util-linux) says how much is still resident
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True, timeout=30)
        return int(out.stdout.split()[0]) < path.stat().st_size * 0.02
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return True


def cast_seconds(path: Path, dtype) -> float:
    """The cast alone: every tensor of the file, already in memory, to ``dtype`` (fresh memory, as a load)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    start = time.perf_counter()
    out = [t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t.clone() for t in tensors.values()]
    seconds = time.perf_counter() - start
    del out, tensors
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return seconds


def rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="sd15,sdxl,sd3")
    p.add_argument("--work-dir", default="/tmp/webui-bench-models")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--swaps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2, help="cold and cached switches per family (best kept)")
    p.add_argument("--standard", action="store_true", help="also time diffusers' from_single_file, page-cached")
    p.add_argument(
        "--converted-cache-gib",
        type=float,
        default=-1.0,
        help="disk for the converted copies, as the app's flag (default -1: half the free space; 0: every load casts)",
    )
    args = p.parse_args(argv)
    families = args.families.split(",")

    import torch

    from webui.app import quiet_libraries
    from webui.families.registry import default_families
    from webui.models.catalog import ModelCatalog
    from webui.models.converted_copy import budget_bytes as copy_budget
    from webui.models.devices import resolve_device
    from webui.models.loader import load_checkpoint
    from webui.models.manager import ModelManager

    quiet_libraries()
    import logging

    logging.basicConfig(level=logging.WARNING, format="    %(message)s")
    logging.getLogger("webui.models.manager").setLevel(logging.INFO)  # each load's line: where the time went
    work = Path(args.work_dir)
    ckpts = work / "models" / "Stable-diffusion"
    for fam in families:
        build_checkpoint(fam, ckpts / f"bench-{fam}.safetensors")
    catalog = ModelCatalog(work / "models")
    catalog.refresh()
    device = resolve_device("cpu", args.precision)

    def manager(ram):
        # ram_cache_gib=0: every switch reads the file (what is timed); the warm switch gets a budget
        return ModelManager(
            catalog,
            device,
            work / "cache",
            default_families(),
            ram_cache_gib=ram,
            ram_cache_models=4 if ram else 0,
            converted_cache_gib=args.converted_cache_gib,
        )

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, weights in {device.precision} on CPU"
          f" ({device.reason})")
    print("switch = ModelManager.load, what POST /sdapi/v1/options {sd_model_checkpoint} runs; best of"
          f" {args.repeats}; cold = the file's pages dropped from the page cache first (and the converted copy's)")
    budget = copy_budget(args.converted_cache_gib, work / "cache")
    print(f"converted copies (cache/converted/): budget {budget / 2**30:.1f} GiB"
          f" (--converted-cache-gib {args.converted_cache_gib:g})\n")
    head = (f"{'model':<7}{'GiB':>6}{'cold read':>11}{'cold switch':>13}{'ratio':>7}{'cached read':>13}{'cast':>7}"
            f"{'cached switch':>15}{'/(read+cast)':>14}")
    print(head + ("   from_single_file" if args.standard else ""))
    m = manager(0)
    for fam in families:
        entry = catalog.find(f"bench-{fam}")
        m.load(entry)  # the first load writes the config folder, traces the load map, writes the converted copy
        m.unload()
        cast = cast_seconds(entry.path, device.dtype)
        cold_read = cold = cached_read = cached = float("inf")
        dropped = True
        for _ in range(args.repeats):
            dropped &= drop_from_page_cache(entry.path)
            cold_read = min(cold_read, raw_read_seconds(entry.path))
            dropped &= drop_from_page_cache(entry.path)
            for copy in (work / "cache" / "converted").glob("*.safetensors"):
                dropped &= drop_from_page_cache(copy)
            cold = min(cold, m.load(entry).seconds)
            m.unload()
            cached_read = min(cached_read, raw_read_seconds(entry.path))
            cached = min(cached, m.load(entry).seconds)
            m.unload()
        line = (f"{fam:<7}{entry.size / 2**30:>6.2f}{cold_read:>10.2f}s{cold:>12.2f}s{cold / cold_read:>7.2f}"
                f"{cached_read:>12.2f}s{cast:>6.2f}s{cached:>14.2f}s{cached / (cached_read + cast):>14.2f}")
        if args.standard:
            start = time.perf_counter()
            load_checkpoint(entry.path, device="cpu", dtype=device.dtype, cache_dir=work / "cache", mapped=False)
            line += f"{time.perf_counter() - start:>18.2f}s"
            gc.collect()
        print(line + ("" if dropped else "  (page cache not dropped: cold = cached)"), flush=True)
    gc.collect()

    if len(families) >= 2:
        a, b = catalog.find(f"bench-{families[0]}"), catalog.find(f"bench-{families[1]}")
        cached_m = manager(10)  # room for both (the default, half the RAM minus 4 GiB, may hold only one)
        cached_m.load(a)
        cached_m.load(b)
        warm = cached_m.load(a)
        print(f"\nwarm switch {families[1]} -> {families[0]} from the RAM cache: {warm.seconds:.3f} s"
              f" (from cache: {warm.from_cache})")
        cached_m.unload()
        del cached_m
        gc.collect()

    m = manager(0)
    rss = []
    for i in range(args.swaps):
        m.load(catalog.find(f"bench-{families[i % len(families)]}"))
        gc.collect()
        rss.append(rss_gib())
    per_family = {}
    for i, value in enumerate(rss):
        per_family.setdefault(families[i % len(families)], []).append(value)
    print(f"\nresident memory over {args.swaps} swaps ({' -> '.join(families)} ...), RAM cache 0:")
    for fam, values in per_family.items():
        print(f"  {fam:<6} loaded: first {values[0]:.2f} GiB, last {values[-1]:.2f} GiB, growth {values[-1] - values[0]:+.2f} GiB")
    m.unload()
    gc.collect()
    print(f"after unload: {rss_gib():.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
