"""Tiny random-weight ControlNet / T2I-Adapter / IP-Adapter / CLIP vision models in their real on-disk layouts.

Their shapes fit the tiny demo checkpoints of ``webui.models.demo`` (``build_tiny_pipeline(family)``, the same seed
``write_demo_models`` uses), so they run on those models: the tests use them, and ``write_demo_control_models``
offers them as demo control models next to the demo checkpoints. Every float tensor is jittered (seeded): zero-
initialised convolutions would make a fresh ControlNet a no-op. Layouts:

* ControlNet ``layout="original"``: lllyasviel / A1111 single file, ``control_model.*`` LDM keys (written with the
  project's own diffusers -> LDM UNet names, ``webui.models.ldm_export``, independent of the loader's mapping;
  SD3.5 Large style: Stability's ``attn.qkv`` keys); ``"single"``: diffusers keys in one file (xinsir Union,
  sd_control_collection); ``"diffusers"``: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``;
* T2I-Adapter ``"original"``: TencentARC keys (``conv_in``, ``body.N``); ``"single"``; ``"diffusers"``: a folder;
* IP-Adapter: one h94-style file with flat ``image_proj.*`` and ``ip_adapter.*`` keys (plain or Plus);
* CLIP vision ``"single"``: the ComfyUI file (``model.safetensors`` renamed); ``"folder"``: transformers folder.

Single files carry ``__metadata__`` ``{"webui.demo": "true"}`` when written with ``demo=True``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.families.base import CONTROL_MODEL_KINDS, ControlFacts
from webui.families.registry import BUILTIN, default_families
from webui.models.demo import DEMO_METADATA_KEY, build_tiny_pipeline
from webui.models.ldm_export import unet_key

_JOINT_FACTS = ControlFacts("controlnet", "mmdit", joint=True)
JITTER = 0.02
OUTPUT_JITTER = 0.2  # the zero convolutions: big enough that a unit visibly changes the image
# The tiny CLIP vision encoder the tiny IP-Adapters read (64 wide: one 64-channel head; 32-wide image embeddings).
CLIP_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
    "hidden_act": "gelu",
}


def _jitter(module: torch.nn.Module, seed: int, strong: tuple[str, ...] = ()) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in module.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                scale = OUTPUT_JITTER if key.startswith(strong) else JITTER
                tensor.add_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * scale)


def _save(state: dict, path: Path, demo: bool) -> None:
    """One safetensors file, written atomically (a temporary file renamed into place)."""
    metadata = {DEMO_METADATA_KEY: "true"} if demo else None
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@functools.cache
def _pipe(family: str):
    """The tiny pipeline of ``family`` (read-only: shared)."""
    return build_tiny_pipeline(family)


def tiny_controlnet(family: str, union: bool = False, seed: int = 7):
    """A jittered ControlNet (``ControlNetModel``, ``ControlNetUnionModel`` or ``SD3ControlNetModel``) for the tiny
    model of ``family``."""
    import diffusers

    pipe = _pipe(family)
    adapter = default_families().get(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if adapter.denoiser == "mmdit" and not adapter.match_control(_JOINT_FACTS):
            # Stability's SD3.5 Large ControlNets: single blocks, no positional embedding of their own
            t = pipe.transformer.config
            model = diffusers.SD3ControlNetModel(
                sample_size=t.sample_size,
                patch_size=t.patch_size,
                in_channels=t.in_channels,
                out_channels=t.out_channels,
                num_layers=2,
                attention_head_dim=t.attention_head_dim,
                num_attention_heads=t.num_attention_heads,
                joint_attention_dim=None,
                caption_projection_dim=t.caption_projection_dim,
                pooled_projection_dim=t.pooled_projection_dim,
                pos_embed_max_size=None,
                pos_embed_type=None,
                use_pos_embed=False,
                force_zeros_for_pooled_projection=False,
            )
            strong = ("controlnet_blocks.", "pos_embed_input.")
        elif adapter.denoiser == "mmdit":
            model = diffusers.SD3ControlNetModel.from_transformer(
                pipe.transformer, num_layers=1, num_extra_conditioning_channels=0
            )
            strong = ("controlnet_blocks.", "pos_embed_input.")
        elif union:
            base = diffusers.ControlNetModel.from_unet(pipe.unet)
            config = {k: v for k, v in base.config.items() if not k.startswith("_")}
            width = pipe.unet.config.block_out_channels[0]
            config.update(num_trans_channel=width, num_proj_channel=width, num_trans_head=8, num_control_type=8)
            config.pop("global_pool_conditions", None)
            config.pop("mid_block_type", None)
            model = diffusers.ControlNetUnionModel.from_config(config)
            strong = ("controlnet_down_blocks.", "controlnet_mid_block.")
        else:
            model = diffusers.ControlNetModel.from_unet(pipe.unet)
            strong = ("controlnet_down_blocks.", "controlnet_mid_block.")
    _jitter(model, seed, strong)
    return model.eval()


def controlnet_to_original(model) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel's weights under lllyasviel/A1111 names, with the ``control_model.`` prefix."""
    per_block = model.config.layers_per_block
    n_embedding = len(model.controlnet_cond_embedding.blocks)
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("controlnet_cond_embedding.conv_in."):
            name = "input_hint_block.0." + key.split(".", 2)[2]
        elif key.startswith("controlnet_cond_embedding.blocks."):
            _, _, k, rest = key.split(".", 3)
            name = f"input_hint_block.{2 * (int(k) + 1)}.{rest}"
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            name = f"input_hint_block.{2 * (n_embedding + 1)}." + key.split(".", 2)[2]
        elif key.startswith("controlnet_down_blocks."):
            _, i, rest = key.split(".", 2)
            name = f"zero_convs.{i}.0.{rest}"
        elif key.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + key.split(".", 1)[1]
        else:
            name = unet_key(key, per_block, {})
        out["control_model." + name] = value.detach().contiguous()
    return out


def sd3_controlnet_to_original(model) -> dict[str, torch.Tensor]:
    """An SD3.5 Large style ControlNet under Stability's names (the inverse of diffusers'
    ``scripts/convert_sd3_controlnet_to_diffusers.py``): q/k/v concatenated into ``attn.qkv``."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    rename = {
        ".attn.to_out.0.": ".attn.proj.",
        ".ff.net.0.proj.": ".mlp.fc1.",
        ".ff.net.2.": ".mlp.fc2.",
        ".norm1.linear.": ".adaLN_modulation.1.",
    }
    out = {}
    for key, value in state.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        if ".attn.to_q." in key:
            head, tail = key.split(".attn.to_q.")
            parts = [state[f"{head}.attn.{n}.{tail}"] for n in ("to_q", "to_k", "to_v")]
            out[f"{head}.attn.qkv.{tail}"] = torch.cat(parts).contiguous()
            continue
        for old, new in rename.items():
            key = key.replace(old, new)
        out[key] = value.contiguous()
    return out


def write_tiny_controlnet(
    folder: Path,
    family: str,
    layout: str = "original",
    union: bool = False,
    name: str | None = None,
    demo: bool = False,
) -> Path:
    """Write a tiny ControlNet for ``family`` into ``folder``; return the file (or the model folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_controlnet(family, union=union)
    stem = name or f"tiny-{family}-{'union' if union else 'controlnet'}-{layout}"
    if layout == "diffusers":
        target = folder / stem
        model.save_pretrained(target, safe_serialization=True)
        return target
    path = folder / f"{stem}.safetensors"
    if layout == "original" and hasattr(model, "controlnet_blocks"):
        _save(sd3_controlnet_to_original(model), path, demo)
    elif layout == "original":
        if union:
            raise ValueError("a Union ControlNet has no lllyasviel single-file layout")
        _save(controlnet_to_original(model), path, demo)
    elif layout == "single":
        _save(model.state_dict(), path, demo)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path


def tiny_t2i_adapter(family: str, seed: int = 11):
    from diffusers import T2IAdapter

    adapter = default_families().get(family)
    pipe = _pipe(family)
    channels = list(pipe.unet.config.block_out_channels)
    downscale = adapter.t2i_downscale
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T2IAdapter(
            in_channels=3,
            channels=channels,
            num_res_blocks=2,
            downscale_factor=downscale,
            adapter_type="full_adapter_xl" if downscale == 16 else "full_adapter",
        )
    _jitter(model, seed)
    return model.eval()


def t2i_to_original(model) -> dict[str, torch.Tensor]:
    """Diffusers T2I-Adapter weights under TencentARC's names (the inverse of diffusers' conversion script)."""
    per_level = model.config.num_res_blocks
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[1] == "conv_in":
            name = ".".join(parts[1:])
        elif parts[3] == "in_conv":
            name = f"body.{int(parts[2]) * per_level}.in_conv.{'.'.join(parts[4:])}"
        else:  # adapter.body.L.resnets.J.rest
            name = f"body.{int(parts[2]) * per_level + int(parts[4])}.{'.'.join(parts[5:])}"
        out[name] = value.detach().contiguous()
    return out


def write_tiny_t2i_adapter(
    folder: Path, family: str, layout: str = "original", name: str | None = None, demo: bool = False
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_t2i_adapter(family)
    stem = name or f"tiny-{family}-t2i-{layout}"
    if layout == "diffusers":
        target = folder / stem
        model.save_pretrained(target, safe_serialization=True)
        return target
    path = folder / f"{stem}.safetensors"
    if layout == "original":
        _save(t2i_to_original(model), path, demo)
    elif layout == "single":
        _save(model.state_dict(), path, demo)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path


def tiny_ip_adapter_state(family: str, plus: bool = False, seed: int = 13) -> dict[str, torch.Tensor]:
    """h94's flat IP-Adapter layout for the tiny UNet of ``family``: ``image_proj.*`` + ``ip_adapter.{K}.to_*_ip``."""
    pipe = _pipe(family)
    unet = pipe.unet
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(shape, generator=gen) * scale

    cross = unet.config.cross_attention_dim
    state: dict[str, torch.Tensor] = {}
    if plus:
        hidden, queries, clip_hidden = 64, 4, CLIP_VISION["hidden_size"]
        proj = {
            "latents": rand(1, queries, hidden),
            "proj_in.weight": rand(hidden, clip_hidden),
            "proj_in.bias": rand(hidden),
            "proj_out.weight": rand(cross, hidden),
            "proj_out.bias": rand(cross),
            "norm_out.weight": 1 + rand(cross, scale=0.02),
            "norm_out.bias": rand(cross, scale=0.02),
        }
        for i in range(4):
            p = f"layers.{i}."
            proj.update(
                {
                    p + "0.norm1.weight": 1 + rand(hidden, scale=0.02),
                    p + "0.norm1.bias": rand(hidden, scale=0.02),
                    p + "0.norm2.weight": 1 + rand(hidden, scale=0.02),
                    p + "0.norm2.bias": rand(hidden, scale=0.02),
                    p + "0.to_q.weight": rand(hidden, hidden),
                    p + "0.to_kv.weight": rand(2 * hidden, hidden),
                    p + "0.to_out.weight": rand(hidden, hidden),
                    p + "1.0.weight": 1 + rand(hidden, scale=0.02),
                    p + "1.0.bias": rand(hidden, scale=0.02),
                    p + "1.1.weight": rand(4 * hidden, hidden),
                    p + "1.3.weight": rand(hidden, 4 * hidden),
                }
            )
    else:
        tokens, embed = 4, CLIP_VISION["projection_dim"]
        proj = {
            "proj.weight": rand(tokens * cross, embed),
            "proj.bias": rand(tokens * cross),
            "norm.weight": 1 + rand(cross, scale=0.02),
            "norm.bias": rand(cross, scale=0.02),
        }
    state.update({"image_proj." + k: v for k, v in proj.items()})
    channels = list(unet.config.block_out_channels)
    key = 1
    for name in unet.attn_processors:  # the order diffusers' load_ip_adapter numbers them in
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            width = channels[-1]
        elif name.startswith("up_blocks"):
            width = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            width = channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key}.{part}.weight"] = rand(width, cross, scale=0.3)
        key += 2
    return state


def write_tiny_ip_adapter(
    folder: Path, family: str, plus: bool = False, name: str | None = None, demo: bool = False
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = name or f"tiny-{family}-ip-adapter" + ("-plus" if plus else "")
    path = folder / f"{stem}.safetensors"
    _save(tiny_ip_adapter_state(family, plus), path, demo)
    return path


def tiny_clip_vision(seed: int = 17):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION))
    _jitter(model, seed)
    return model.eval()


def write_tiny_clip_vision(folder: Path, layout: str = "single", name: str | None = None, demo: bool = False) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_clip_vision()
    if layout == "folder":
        target = folder / (name or "tiny-image-encoder")
        model.save_pretrained(target, safe_serialization=True)
        return target
    path = folder / f"{name or 'tiny-clip-vision'}.safetensors"
    _save({k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}, path, demo)
    return path


# The demo families that take all three kinds of control model get a demo of each.
DEMO_FAMILIES = tuple(f.id for f in BUILTIN if f.demo and set(CONTROL_MODEL_KINDS) <= set(f.control_kinds))


def write_demo_control_models(models_dir: Path, families: tuple[str, ...] = DEMO_FAMILIES) -> list[Path]:
    """A tiny ControlNet, T2I-Adapter and IP-Adapter per family in ``models_dir/ControlNet`` and one CLIP vision
    encoder in ``models_dir/clip_vision`` (``demo-*.safetensors``, marked as demo models); existing files are kept."""
    models_dir = Path(models_dir)
    control = models_dir / "ControlNet"
    written = []
    for family in families:
        for stem, write in (
            (f"demo-{family}-controlnet", lambda n, f=family: write_tiny_controlnet(control, f, name=n, demo=True)),
            (f"demo-{family}-t2i-adapter", lambda n, f=family: write_tiny_t2i_adapter(control, f, name=n, demo=True)),
            (f"demo-{family}-ip-adapter", lambda n, f=family: write_tiny_ip_adapter(control, f, name=n, demo=True)),
        ):
            path = control / f"{stem}.safetensors"
            written.append(path if path.exists() else write(stem))
    encoder = models_dir / "clip_vision" / "demo-clip-vision.safetensors"
    written.append(
        encoder if encoder.exists() else write_tiny_clip_vision(encoder.parent, name="demo-clip-vision", demo=True)
    )
    _pipe.cache_clear()
    return written
