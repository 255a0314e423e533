"""SD3 (MMDiT) kohya LoRA names -> diffusers ``SD3Transformer2DModel`` paths, and the conversion of such files.

diffusers does not read SD3 kohya files (``lora_unet_joint_blocks_N_x_block_attn_qkv``...), so the SD3 adapter
maps them here: each kohya layer patches one or three diffusers modules (a fused qkv becomes to_q/to_k/to_v),
and the last block's context adaLN keeps shift/scale swapped in diffusers. Pure name tables; torch is needed
only by ``convert_kohya``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

QKV, SWAP, PLAIN = "qkv", "swap", "plain"
_BLOCK = re.compile(r"^lora_unet_joint_blocks_(\d+)_(x_block|context_block)_(.+)$")
_X = {
    "attn_qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
    "attn_proj": (("attn.to_out.0",), PLAIN),
    "attn2_qkv": (("attn2.to_q", "attn2.to_k", "attn2.to_v"), QKV),
    "attn2_proj": (("attn2.to_out.0",), PLAIN),
    "mlp_fc1": (("ff.net.0.proj",), PLAIN),
    "mlp_fc2": (("ff.net.2",), PLAIN),
    "adaLN_modulation_1": (("norm1.linear",), PLAIN),
}
_CONTEXT = {
    "attn_qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), QKV),
    "attn_proj": (("attn.to_add_out",), PLAIN),
    "mlp_fc1": (("ff_context.net.0.proj",), PLAIN),
    "mlp_fc2": (("ff_context.net.2",), PLAIN),
    # The last block's context stream keeps only shift/scale, stored swapped in diffusers.
    "adaLN_modulation_1": (("norm1_context.linear",), PLAIN),
}
_TOP = {
    "lora_unet_context_embedder": (("context_embedder",), PLAIN),
    "lora_unet_x_embedder_proj": (("pos_embed.proj",), PLAIN),
    "lora_unet_t_embedder_mlp_0": (("time_text_embed.timestep_embedder.linear_1",), PLAIN),
    "lora_unet_t_embedder_mlp_2": (("time_text_embed.timestep_embedder.linear_2",), PLAIN),
    "lora_unet_y_embedder_mlp_0": (("time_text_embed.text_embedder.linear_1",), PLAIN),
    "lora_unet_y_embedder_mlp_2": (("time_text_embed.text_embedder.linear_2",), PLAIN),
    "lora_unet_final_layer_linear": (("proj_out",), PLAIN),
    "lora_unet_final_layer_adaLN_modulation_1": (("norm_out.linear",), SWAP),
}
KOHYA_BLOCK_PREFIX = "lora_unet_joint_blocks_"


def targets(name: str, in_features: int, out_features: int) -> tuple[tuple[str, ...], str] | None:
    """diffusers module paths and split mode for one SD3 kohya layer name, or None if unknown."""
    if name in _TOP:
        return _TOP[name]
    m = _BLOCK.match(name)
    if not m:
        return None
    block, stream, rest = m.groups()
    table = _X if stream == "x_block" else _CONTEXT
    if rest not in table:
        return None
    paths, mode = table[rest]
    if stream == "context_block" and rest == "adaLN_modulation_1" and out_features == 2 * in_features:
        mode = SWAP
    return tuple(f"transformer_blocks.{block}.{p}" for p in paths), mode


def convert_kohya(state_dict: Mapping, te_aliases: Mapping[str, Mapping[str, str]], kohya_prefixes: Mapping[str, str]):
    """Convert an SD3 kohya state dict to diffusers keys with alpha baked into ``lora_B``.

    ``te_aliases``: component -> {kohya name -> module path} for the text encoders present;
    ``kohya_prefixes``: kohya name prefix -> component. Returns (state_dict, skipped kohya names).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    names = sorted({k.rsplit(".", 2)[0] for k in state_dict if k.endswith(".lora_down.weight")})
    for name in names:
        down = state_dict[f"{name}.lora_down.weight"]
        up = state_dict[f"{name}.lora_up.weight"]
        rank = down.shape[0]
        alpha = state_dict.get(f"{name}.alpha")
        scale = float(alpha) / rank if alpha is not None else 1.0
        up = up * scale if scale != 1.0 else up
        if name.startswith("lora_unet_"):
            target = targets(name, down.shape[1], up.shape[0])
            if target is None:
                skipped.append(name)
                continue
            paths, mode = target
            ups = torch.chunk(up, 3, dim=0) if mode == QKV else (up,)
            if mode == SWAP:
                shift, scale_rows = up.chunk(2, dim=0)
                ups = (torch.cat([scale_rows, shift], dim=0),)
            for path, part in zip(paths, ups):
                out[f"transformer.{path}.lora_A.weight"] = down.clone()
                out[f"transformer.{path}.lora_B.weight"] = part.contiguous()
            continue
        component = next(c for p, c in kohya_prefixes.items() if name.startswith(p))
        path = te_aliases.get(component, {}).get(name)
        if path is None:
            skipped.append(name)
            continue
        out[f"{component}.{path}.lora_A.weight"] = down
        out[f"{component}.{path}.lora_B.weight"] = up
    return out, skipped
