"""Stripped checkpoints for detection tests: key names and shapes, zero-filled data.

Each fixture lists the keys that tell a family apart in real files, with their real shapes.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Mapping

DM = "model.diffusion_model."

SD15 = {
    DM + "input_blocks.0.0.weight": (320, 4, 3, 3),
    DM + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "first_stage_model.encoder.conv_out.weight": (8, 512, 3, 3),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
}
SD15_INPAINT = {**SD15, DM + "input_blocks.0.0.weight": (320, 9, 3, 3)}
SD2 = {
    DM + "input_blocks.0.0.weight": (320, 4, 3, 3),
    DM + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "cond_stage_model.model.token_embedding.weight": (49408, 1024),
}
SDXL = {
    DM + "input_blocks.0.0.weight": (320, 4, 3, 3),
    DM + "label_emb.0.0.weight": (1280, 2816),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
}
SDXL_UNET_ONLY = {DM + "input_blocks.0.0.weight": (320, 4, 3, 3), DM + "label_emb.0.0.weight": (1280, 2816)}
SDXL_INPAINT = {**SDXL, DM + "input_blocks.0.0.weight": (320, 9, 3, 3)}
REFINER = {
    DM + "input_blocks.0.0.weight": (384, 4, 3, 3),
    DM + "label_emb.0.0.weight": (1536, 2560),
    "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280),
}
SD3_MEDIUM = {
    DM + "x_embedder.proj.weight": (1536, 16, 2, 2),
    DM + "pos_embed": (1, 36864, 1536),
    **{DM + f"joint_blocks.{i}.x_block.attn.qkv.weight": (4608, 1536) for i in range(24)},
}
SD3_INCL_CLIPS_T5 = {
    **SD3_MEDIUM,
    "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": (49408, 1280),
    "text_encoders.t5xxl.transformer.shared.weight": (32128, 4096),
    "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3),
}
SD35_LARGE = {
    DM + "x_embedder.proj.weight": (2432, 16, 2, 2),
    DM + "joint_blocks.0.x_block.attn.ln_q.weight": (64,),
    **{DM + f"joint_blocks.{i}.x_block.attn.qkv.weight": (7296, 2432) for i in range(38)},
}
SD35_MEDIUM = {
    DM + "x_embedder.proj.weight": (1536, 16, 2, 2),
    DM + "joint_blocks.0.x_block.attn.ln_q.weight": (64,),
    DM + "joint_blocks.0.x_block.attn2.qkv.weight": (4608, 1536),
    **{DM + f"joint_blocks.{i}.x_block.attn.qkv.weight": (4608, 1536) for i in range(24)},
}
SD3_BARE = {"joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536), "x_embedder.proj.weight": (1536, 16, 2, 2)}
FLUX = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "single_blocks.0.linear1.weight": (21504, 3072)}
KOHYA_LORA = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": (8, 320),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": (320, 8),
}
VAE = {"encoder.conv_out.weight": (8, 512, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}
CLIP_L_FILE = {"text_model.embeddings.token_embedding.weight": (49408, 768)}
T5_FILE = {"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096), "shared.weight": (32128, 4096)}

_SIZES = {"F16": 2, "F32": 4, "BF16": 2}


def header_bytes(shapes: Mapping[str, tuple], dtype: str = "F16", metadata: Mapping[str, str] | None = None):
    doc: dict = {}
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape) * _SIZES[dtype]
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        doc["__metadata__"] = dict(metadata)
    raw = json.dumps(doc).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, shapes: Mapping[str, tuple], dtype: str = "F16", metadata=None) -> Path:
    """A valid safetensors file with zero-filled tensors (sparse: big shapes cost no disk)."""
    head, data_size = header_bytes(shapes, dtype, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + data_size)
    return path
