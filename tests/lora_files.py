"""Writers of small LoRA files in the layouts users download (kohya/A1111, diffusers, peft, LyCORIS).

Each writer takes the tiny pipeline it targets, so the layer shapes fit (or, on purpose, do not).
The key names are written out here independently of ``webui.models.lora_keys``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _pair(g: torch.Generator, fin: int, fout: int, rank: int, scale: float):
    down = torch.randn(rank, fin, generator=g) * scale
    up = torch.randn(fout, rank, generator=g) * scale
    return down, up


def _linears(model, must_contain: str = "") -> list[tuple[str, torch.nn.Linear]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and must_contain in n and "lora_" not in n and "base_layer" not in n
    ]


def _sgm_name(path: str, layers_per_block: int) -> str:
    """SGM block names for the attention modules of a UNet with a uniform layers_per_block."""
    p = path.split(".")
    if p[0] == "down_blocks":
        n = 1 + int(p[1]) * (layers_per_block + 1) + int(p[3])
        return ".".join([f"input_blocks.{n}.1", *p[4:]])
    if p[0] == "up_blocks":
        n = int(p[1]) * (layers_per_block + 1) + int(p[3])
        return ".".join([f"output_blocks.{n}.1", *p[4:]])
    if p[0] == "mid_block":
        return ".".join(["middle_block.1", *p[3:]])
    raise ValueError(path)


def write_kohya_unet_family(
    pipe,
    path: Path,
    *,
    rank: int = 4,
    alpha: float | None = 2.0,
    seed: int = 0,
    scale: float = 0.3,
    text_encoders: bool = True,
    sgm_names: bool = False,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """kohya LoRA for an SD1.5/SDXL pipeline: every transformer-block linear, plus the CLIP attention/MLP."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def add(name: str, mod: torch.nn.Linear) -> None:
        down, up = _pair(g, mod.in_features, mod.out_features, rank, scale)
        sd[f"{name}.lora_down.weight"] = down.to(dtype)
        sd[f"{name}.lora_up.weight"] = up.to(dtype)
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)

    lpb = pipe.unet.config.layers_per_block
    for n, m in _linears(pipe.unet, "attentions"):
        mod_path = _sgm_name(n, lpb) if sgm_names else n
        add("lora_unet_" + mod_path.replace(".", "_"), m)
    if text_encoders:
        two = getattr(pipe, "text_encoder_2", None) is not None
        for comp, prefix in (("text_encoder", "lora_te1_" if two else "lora_te_"), ("text_encoder_2", "lora_te2_")):
            te = getattr(pipe, comp, None)
            if te is None:
                continue
            for n, m in _linears(te, "layers"):
                core = n.removeprefix("text_model.")
                add(prefix + "text_model_" + core.replace(".", "_"), m)
    save_file(sd, str(path))
    return path


def write_diffusers_lora(
    pipe,
    path: Path,
    components: tuple[str, ...] = ("unet", "text_encoder"),
    *,
    rank: int = 4,
    seed: int = 0,
    scale: float = 0.3,
    must_contain: dict[str, str] | None = None,
    prefix: bool = True,
    old_names: bool = False,
) -> Path:
    """diffusers layout (``unet.<module>.lora_A.weight``); ``prefix=False`` writes a bare peft adapter."""
    must_contain = must_contain or {}
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for comp in components:
        model = getattr(pipe, comp)
        default = "layers" if comp.startswith("text_encoder") else "transformer_blocks"
        for n, m in _linears(model, must_contain.get(comp, default)):
            down, up = _pair(g, m.in_features, m.out_features, rank, scale)
            key = f"{comp}.{n}" if prefix else n
            a, b = (".lora.down.weight", ".lora.up.weight") if old_names else (".lora_A.weight", ".lora_B.weight")
            sd[key + a] = down
            sd[key + b] = up
    save_file(sd, str(path))
    return path


def sd3_kohya_layers(transformer) -> dict[str, tuple[int, int]]:
    """kohya SD3 layer name -> (in, out) for the tiny SD3 transformer, in the original MMDiT layout."""
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    ff = transformer.transformer_blocks[0].ff.net[0].proj.out_features
    last = cfg.num_layers - 1
    layers = {}
    for i in range(cfg.num_layers):
        for stream in ("x_block", "context_block"):
            pre = f"lora_unet_joint_blocks_{i}_{stream}_"
            layers[pre + "attn_qkv"] = (hidden, 3 * hidden)
            pre_only = stream == "context_block" and i == last
            layers[pre + "adaLN_modulation_1"] = (hidden, (2 if pre_only else 6) * hidden)
            if not pre_only:
                layers[pre + "attn_proj"] = (hidden, hidden)
                layers[pre + "mlp_fc1"] = (hidden, ff)
                layers[pre + "mlp_fc2"] = (ff, hidden)
    layers["lora_unet_final_layer_adaLN_modulation_1"] = (hidden, 2 * hidden)
    return layers


def write_kohya_sd3(
    pipe,
    path: Path,
    *,
    rank: int = 4,
    alpha: float | None = 2.0,
    seed: int = 0,
    scale: float = 0.2,
    text_encoders: bool = False,
    extra: dict[str, tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """kohya/sd-scripts SD3 LoRA over every joint block layer; returns the state dict written."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    layers = {**sd3_kohya_layers(pipe.transformer), **(extra or {})}
    for name, (fin, fout) in layers.items():
        down, up = _pair(g, fin, fout, rank, scale)
        sd[f"{name}.lora_down.weight"] = down
        sd[f"{name}.lora_up.weight"] = up
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    if text_encoders:
        for comp, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
            for n, m in _linears(getattr(pipe, comp), "layers"):
                down, up = _pair(g, m.in_features, m.out_features, rank, scale)
                name = prefix + "text_model_" + n.removeprefix("text_model.").replace(".", "_")
                sd[f"{name}.lora_down.weight"] = down
                sd[f"{name}.lora_up.weight"] = up
                if alpha is not None:
                    sd[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))
    return sd


def write_loha(path: Path) -> Path:
    """A LyCORIS LoHa file (hada_ factors)."""
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    sd = {
        f"{name}.hada_w1_a": torch.zeros(32, 4),
        f"{name}.hada_w1_b": torch.zeros(4, 32),
        f"{name}.hada_w2_a": torch.zeros(32, 4),
        f"{name}.hada_w2_b": torch.zeros(4, 32),
        f"{name}.alpha": torch.tensor(4.0),
    }
    save_file(sd, str(path))
    return path


def write_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A file with the given keys and shapes (zeros): for header-only identification tests."""
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    return path
