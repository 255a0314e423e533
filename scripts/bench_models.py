#!/usr/bin/env python3
"""Model loading benchmark: cold load vs raw read, warm switch from the RAM cache, memory over swaps.

Builds full-size random-weight checkpoints from the real configs (same tensors, same bytes as the
released fp16 files, so the same load cost), writes them in the original single-file layout, then
loads them through the app's own catalog and manager, exactly as a user's files are loaded.

    python scripts/bench_models.py                       # SD1.5, SDXL, SD3 medium (no T5), 20 swaps
    python scripts/bench_models.py --families sd15 --swaps 6 --precision fp32
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


def rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="sd15,sdxl,sd3")
    p.add_argument("--work-dir", default="/tmp/webui-bench-models")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--swaps", type=int, default=20)
    args = p.parse_args(argv)
    families = args.families.split(",")

    import torch

    from webui.models.catalog import ModelCatalog
    from webui.models.devices import resolve_device
    from webui.families.registry import default_families
    from webui.models.manager import ModelManager

    from webui.app import quiet_libraries

    quiet_libraries()
    work = Path(args.work_dir)
    ckpts = work / "models" / "Stable-diffusion"
    for fam in families:
        build_checkpoint(fam, ckpts / f"bench-{fam}.safetensors")
    catalog = ModelCatalog(work / "models")
    catalog.refresh()
    device = resolve_device("cpu", args.precision)

    def manager(ram):
        return ModelManager(catalog, device, work / "cache", default_families(), ram_cache_models=ram)

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, weights in {args.precision} on CPU\n")
    print(f"{'model':<8}{'file GiB':>9}{'raw read s':>12}{'cold load s':>13}{'load/read':>11}")
    m = manager(0)
    for fam in families:
        entry = catalog.find(f"bench-{fam}")
        m.load(entry)  # first load writes the config folder cache; not what we time
        m.unload()
        read = min(raw_read_seconds(entry.path) for _ in range(2))
        cold = m.load(entry).seconds
        m.unload()
        print(f"{fam:<8}{entry.size / 2**30:>9.2f}{read:>12.2f}{cold:>13.2f}{cold / read:>10.1f}x")

    if len(families) >= 2:
        a, b = catalog.find(f"bench-{families[0]}"), catalog.find(f"bench-{families[1]}")
        cached = manager(1)
        cached.load(a)
        cached.load(b)
        warm = cached.load(a)
        assert warm.from_cache
        print(f"\nwarm switch {families[1]} -> {families[0]} from the RAM cache: {warm.seconds:.3f} s")
        cached.unload()
        del cached
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
