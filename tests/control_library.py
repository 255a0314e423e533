"""Tiny random control models in memory, matching the demo checkpoints' shapes, behind the extension's library API.

A stand-in for the model files (``webui.control.files`` + ``tests.control_models`` write and load the real
layouts): ``TinyLibrary.install(services)`` gives the built-in "controlnet" extension these models by name:
``cn_sd15``, ``cn_sdxl``, ``union_sdxl``, ``cn_sd3``, ``t2i_sd15``, ``t2i_sdxl``, ``ip_sd15``, ``ip_plus_sd15``,
``ip_sdxl``, ``ip_plus_sdxl`` and one CLIP vision encoder.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from webui.control.extension import LoadedControl

ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 24,
}
HASH = "0c0ffee0"


def _jitter(model: Any, seed: int, scale: float = 0.05, outputs: float = 0.3) -> Any:
    """Seeded noise on every float tensor: zero convolutions would make a fresh ControlNet a no-op, so the
    output convolutions get weights that do something (``outputs``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype.is_floating_point:
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_blocks")):
                    p.copy_(torch.randn(p.shape, generator=gen) * outputs)
                else:
                    p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def _ip_state(unet: Any, plus: bool, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=gen) * s

    if plus:
        hidden = 64
        proj = {
            "latents": r(1, 4, hidden),
            "proj_in.weight": r(hidden, ENCODER["hidden_size"]),
            "proj_in.bias": r(hidden),
            "proj_out.weight": r(cross, hidden),
            "proj_out.bias": r(cross),
            "norm_out.weight": torch.ones(cross),
            "norm_out.bias": torch.zeros(cross),
        }
        for i in range(4):
            p = f"layers.{i}."
            proj.update(
                {
                    p + "0.norm1.weight": torch.ones(hidden),
                    p + "0.norm1.bias": torch.zeros(hidden),
                    p + "0.norm2.weight": torch.ones(hidden),
                    p + "0.norm2.bias": torch.zeros(hidden),
                    p + "0.to_q.weight": r(hidden, hidden),
                    p + "0.to_kv.weight": r(2 * hidden, hidden),
                    p + "0.to_out.weight": r(hidden, hidden),
                    p + "1.0.weight": torch.ones(hidden),
                    p + "1.0.bias": torch.zeros(hidden),
                    p + "1.1.weight": r(4 * hidden, hidden),
                    p + "1.3.weight": r(hidden, 4 * hidden),
                }
            )
    else:
        tokens = 4
        proj = {
            "proj.weight": r(cross * tokens, ENCODER["projection_dim"]),
            "proj.bias": torch.zeros(cross * tokens),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        }
    layers = {}
    channels = list(unet.config.block_out_channels)
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            layers[f"{key}.{part}.weight"] = r(hidden, cross, s=0.5)
        key += 2
    return {"image_proj": proj, "ip_adapter": layers}


@cache
def tiny_models(family: str) -> dict:
    import torch
    from diffusers import ControlNetModel, ControlNetUnionModel, SD3ControlNetModel, T2IAdapter

    from webui.models.demo import build_tiny_pipeline

    pipe = build_tiny_pipeline(family)
    out: dict[str, Any] = {}
    if family == "sd3":
        model = SD3ControlNetModel.from_transformer(pipe.transformer, num_layers=1, num_extra_conditioning_channels=0)
        out["cn"] = _jitter(model, 31, 0.1)
        return out
    unet = pipe.unet
    out["cn"] = _jitter(ControlNetModel.from_unet(unet, conditioning_channels=3), 11)
    if family == "sdxl":
        base = ControlNetUnionModel.from_unet(unet)
        config = dict(base.config)
        config.pop("_use_default_values", None)
        config.update(num_trans_channel=64, num_proj_channel=64, num_trans_head=2, num_control_type=8)
        out["union"] = _jitter(ControlNetUnionModel.from_config(config), 13)
        torch.manual_seed(17)
        t2i = T2IAdapter(
            in_channels=3, channels=[64, 128], num_res_blocks=2, downscale_factor=16, adapter_type="full_adapter_xl"
        )
    else:
        torch.manual_seed(17)
        t2i = T2IAdapter(
            in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter"
        )
    out["t2i"] = _jitter(t2i, 19)
    with torch.no_grad():  # features of about 4 (the adapter is nearly linear in its input convolution)
        for p in t2i.adapter.conv_in.parameters():
            p.mul_(4.0)
    out["ip"] = _ip_state(unet, plus=False, seed=23)
    out["ip_plus"] = _ip_state(unet, plus=True, seed=29)
    return out


@cache
def tiny_encoder() -> Any:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(37)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER)).eval()


MODELS = {
    "cn_sd15": ("controlnet", "sd15", "cn"),
    "cn_sdxl": ("controlnet", "sdxl", "cn"),
    "union_sdxl": ("controlnet", "sdxl", "union"),
    "cn_sd3": ("controlnet", "sd3", "cn"),
    "t2i_sd15": ("t2i_adapter", "sd15", "t2i"),
    "t2i_sdxl": ("t2i_adapter", "sdxl", "t2i"),
    "ip_sd15": ("ip_adapter", "sd15", "ip"),
    "ip_plus_sd15": ("ip_adapter", "sd15", "ip_plus"),
    "ip_sdxl": ("ip_adapter", "sdxl", "ip"),
    "ip_plus_sdxl": ("ip_adapter", "sdxl", "ip_plus"),
}


class TinyLibrary:
    """The extension's library API (find, label, load, encoders, load_encoder) over ``tiny_models``."""

    def find(self, name: str) -> Any:
        base = name.rsplit(" [", 1)[0]
        if base not in MODELS:
            raise KeyError(f"no control model named {name!r}; available: {', '.join(MODELS)}")
        return SimpleNamespace(name=base, stem=base, error=None)

    def label(self, entry: Any, name: str) -> str:
        return f"{entry.stem} [{HASH}]"

    def load(self, entry: Any, device: Any, dtype: Any) -> LoadedControl:
        kind, family, key = MODELS[entry.name]
        model = tiny_models(family)[key]
        variant = "union" if key == "union" else "plus" if key == "ip_plus" else "plain"
        if kind != "ip_adapter":
            model = model.to(device, dtype)
        return LoadedControl(kind, family, variant, model)

    def encoders(self) -> list[Any]:
        return [SimpleNamespace(name="clip_vision_tiny_vit-h.safetensors")]

    def encoder_name(self, entry: Any) -> str:
        return entry.name

    def load_encoder(self, entry: Any, device: Any, dtype: Any) -> Any:
        return tiny_encoder().to(device, dtype)

    def encoder_folder(self) -> Path:
        return Path("models/clip_vision")

    @staticmethod
    def extension(services: Any) -> ControlExtension:  # noqa: F821 - the built-in plugin object
        return services.extensions._pm.get_plugin("controlnet")

    @classmethod
    def install(cls, services: Any) -> None:
        cls.extension(services).library = cls()
