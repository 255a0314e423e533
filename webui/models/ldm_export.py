"""Write diffusers models back in the ORIGINAL single-file layout (LDM / SGM / SD3).

This is the inverse of diffusers' single-file converters (``diffusers.loaders.single_file_utils``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``, ``convert_sd3_transformer_checkpoint_to_diffusers``,
``convert_sd3_t5_checkpoint_to_diffusers``). The keys are those of the released checkpoints, so
``webui.models.identify`` identifies the files and ``from_single_file`` loads them back bit for bit.
The tests and the demo models use it to make real-format files from tiny pipelines.

Part names (``include=``) are the ones ``identify_checkpoint`` reports: ``"unet"`` or
``"transformer"``, ``"vae"``, ``"clip_l"``, ``"clip_g"``, ``"t5xxl"``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import torch

from webui.families.base import FilePart
from webui.families.registry import default_families
from webui.models.ldm_names import RESNET_LDM_NAMES

# OpenCLIP's trained logit scale (clamped at 100); SDXL base files carry it, loaders ignore it.
_OPEN_CLIP_LOGIT_SCALE = math.log(100.0)


class ExportError(ValueError):
    """A model cannot be written in the original layout."""


# --- UNet ----------------------------------------------------------------------------------------

_RESNET = RESNET_LDM_NAMES
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET:
        raise ExportError(f"unexpected resnet parameter {rest!r}")
    return f"{_RESNET[head]}.{tail}"


def _split(key: str, n: int) -> tuple[list[str], str]:
    parts = key.split(".")
    return parts[:n], ".".join(parts[n:])


def unet_key(key: str, per_block: int, up_has_attn: Mapping[int, bool]) -> str:
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    head, rest = _split(key, 4)
    if head[0] == "down_blocks":
        b, kind, j = int(head[1]), head[2], int(head[3])
        if kind == "resnets":
            return f"input_blocks.{b * (per_block + 1) + j + 1}.0.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"input_blocks.{b * (per_block + 1) + j + 1}.1.{rest}"
        if kind == "downsamplers" and rest.startswith("conv."):
            return f"input_blocks.{(b + 1) * (per_block + 1)}.0.op.{rest[len('conv.'):]}"
    elif head[0] == "up_blocks":
        b, kind, j = int(head[1]), head[2], int(head[3])
        first = b * (per_block + 1)
        if kind == "resnets":
            return f"output_blocks.{first + j}.0.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"output_blocks.{first + j}.1.{rest}"
        if kind == "upsamplers" and rest.startswith("conv."):
            slot = 2 if up_has_attn[b] else 1
            return f"output_blocks.{first + per_block}.{slot}.{rest}"
    elif head[0] == "mid_block":
        kind, j = head[1], int(head[2])
        rest = ".".join(key.split(".")[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet_key(rest)}"
        if kind == "attentions":
            return f"middle_block.1.{rest}"
    raise ExportError(f"no original-layout name for UNet parameter {key!r}")


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel``'s weights under LDM names (without ``model.diffusion_model.``)."""
    per_block = unet.config.layers_per_block
    if not isinstance(per_block, int):
        if len(set(per_block)) != 1:
            raise ExportError(f"the LDM layout needs the same layers_per_block for every block, got {per_block}")
        per_block = per_block[0]
    up_has_attn = {i: hasattr(blk, "attentions") for i, blk in enumerate(unet.up_blocks)}
    return {unet_key(k, per_block, up_has_attn): v for k, v in unet.state_dict().items()}


# --- VAE -----------------------------------------------------------------------------------------

_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def _vae_key(key: str, n_up: int) -> str:
    side, _, key_rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            return key
        raise ExportError(f"no original-layout name for VAE parameter {key!r}")
    head, rest = _split(key_rest, 3)
    top = key_rest.split(".")[0]
    if top in ("conv_in", "conv_out"):
        return key
    if top in _VAE_TOP:
        return f"{side}.{_VAE_TOP[top]}{key_rest[len(top):]}"
    if head[0] == "down_blocks":
        i, kind = int(head[1]), head[2]
        if kind == "resnets":
            return f"{side}.down.{i}.block.{_vae_resnet(rest)}"
        if kind == "downsamplers" and rest.startswith("0.conv."):
            return f"{side}.down.{i}.downsample.{rest[len('0.'):]}"
    elif head[0] == "up_blocks":
        i, kind = n_up - 1 - int(head[1]), head[2]
        if kind == "resnets":
            return f"{side}.up.{i}.block.{_vae_resnet(rest)}"
        if kind == "upsamplers" and rest.startswith("0.conv."):
            return f"{side}.up.{i}.upsample.{rest[len('0.'):]}"
    elif head[0] == "mid_block":
        kind = head[1]
        if kind == "resnets":
            return f"{side}.mid.block_{int(head[2]) + 1}.{_vae_resnet(rest)}"
        if kind == "attentions" and head[2] == "0":
            for old, new in _VAE_ATTN.items():
                if rest.startswith(old + "."):
                    return f"{side}.mid.attn_1.{new}{rest[len(old):]}"
    raise ExportError(f"no original-layout name for VAE parameter {key!r}")


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL``'s weights under LDM names (no prefix: the layout of standalone VAE files).

    The mid-block attention projections are written as 1x1 convolutions, as the released files have them.
    """
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, tensor in vae.state_dict().items():
        new = _vae_key(key, n_up)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[new] = tensor
    return out


# --- text encoders -------------------------------------------------------------------------------


def hf_clip_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in the layout single files store: ``text_model.*`` (+ ``text_projection``).

    transformers >= 5.6 made ``CLIPTextModel`` flat (no ``text_model.``); the files keep the old names.
    """
    flat = not hasattr(text_encoder, "text_model")
    return {("text_model." + k if flat else k): v for k, v in text_encoder.state_dict().items()}


_OPEN_CLIP_TOP = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_LAYER_PREFIX = "text_model.encoder.layers."


def open_clip_to_original(text_encoder, logit_scale: bool = False) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP layout (``transformer.resblocks.N``, fused ``in_proj``).

    ``text_projection`` is stored transposed ([hidden, projection]); q, k and v are concatenated.
    """
    sd = hf_clip_to_original(text_encoder)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T
        elif key.startswith(_LAYER_PREFIX):
            index, _, rest = key[len(_LAYER_PREFIX) :].partition(".")
            base = f"transformer.resblocks.{index}."
            name, _, param = rest.rpartition(".")
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((int(index), param), {})[name[len("self_attn.")]] = tensor
            elif name in _OPEN_CLIP_LAYER:
                out[f"{base}{_OPEN_CLIP_LAYER[name]}.{param}"] = tensor
            else:
                raise ExportError(f"no OpenCLIP name for {key!r}")
        else:
            raise ExportError(f"no OpenCLIP name for {key!r}")
    for (index, param), parts in sorted(qkv.items()):
        out[f"transformer.resblocks.{index}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if logit_scale:
        out["logit_scale"] = torch.tensor(_OPEN_CLIP_LOGIT_SCALE, dtype=torch.float32)
    return out


def t5_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """A ``T5EncoderModel`` as SD3 files store it (HF names; the tied ``shared``/``embed_tokens`` both written)."""
    sd = dict(text_encoder.state_dict())
    if "encoder.embed_tokens.weight" not in sd and "shared.weight" in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return sd


# --- SD3 MMDiT -----------------------------------------------------------------------------------


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


_MMDIT_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "context_embedder.": "context_embedder.",
    "proj_out.": "final_layer.linear.",
}
_MMDIT_BLOCK = {
    "attn.to_out.0.": "x_block.attn.proj.",
    "attn.to_add_out.": "context_block.attn.proj.",
    "attn.norm_q.": "x_block.attn.ln_q.",
    "attn.norm_k.": "x_block.attn.ln_k.",
    "attn.norm_added_q.": "context_block.attn.ln_q.",
    "attn.norm_added_k.": "context_block.attn.ln_k.",
    "attn2.to_out.0.": "x_block.attn2.proj.",
    "attn2.norm_q.": "x_block.attn2.ln_q.",
    "attn2.norm_k.": "x_block.attn2.ln_k.",
    "norm1.linear.": "x_block.adaLN_modulation.1.",
    "norm1_context.linear.": "context_block.adaLN_modulation.1.",
    "ff.net.0.proj.": "x_block.mlp.fc1.",
    "ff.net.2.": "x_block.mlp.fc2.",
    "ff_context.net.0.proj.": "context_block.mlp.fc1.",
    "ff_context.net.2.": "context_block.mlp.fc2.",
}
# fused qkv: diffusers projection -> (original attention, q/k/v slot)
_MMDIT_QKV = {
    "attn.to_q": ("x_block.attn", 0),
    "attn.to_k": ("x_block.attn", 1),
    "attn.to_v": ("x_block.attn", 2),
    "attn.add_q_proj": ("context_block.attn", 0),
    "attn.add_k_proj": ("context_block.attn", 1),
    "attn.add_v_proj": ("context_block.attn", 2),
    "attn2.to_q": ("x_block.attn2", 0),
    "attn2.to_k": ("x_block.attn2", 1),
    "attn2.to_v": ("x_block.attn2", 2),
}


def mmdit_to_original(transformer) -> dict[str, torch.Tensor]:
    """An ``SD3Transformer2DModel`` under SD3/SD3.5 names (without ``model.diffusion_model.``).

    The original adaLN of the last context block and of the final layer put (shift, scale) in the
    opposite order to diffusers, so those halves are swapped back.
    """
    last = transformer.config.num_layers - 1
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str, str], list] = {}
    for key, tensor in transformer.state_dict().items():
        if key.startswith("transformer_blocks."):
            i_str, _, rest = key[len("transformer_blocks.") :].partition(".")
            i = int(i_str)
            name, _, param = rest.rpartition(".")
            if name in _MMDIT_QKV:
                target, slot = _MMDIT_QKV[name]
                qkv.setdefault((i, target, param), [None] * 3)[slot] = tensor
                continue
            for old, new in _MMDIT_BLOCK.items():
                if rest.startswith(old):
                    if i == last and old == "norm1_context.linear.":
                        tensor = _swap_halves(tensor)
                    out[f"joint_blocks.{i}.{new}{rest[len(old):]}"] = tensor
                    break
            else:
                raise ExportError(f"no SD3 name for transformer parameter {key!r}")
        elif key.startswith("norm_out.linear."):
            out["final_layer.adaLN_modulation.1." + key[len("norm_out.linear.") :]] = _swap_halves(tensor)
        else:
            for old, new in _MMDIT_TOP.items():
                if key == old or (old.endswith(".") and key.startswith(old)):
                    out[new + key[len(old) :]] = tensor
                    break
            else:
                raise ExportError(f"no SD3 name for transformer parameter {key!r}")
    for (i, target, param), parts in sorted(qkv.items()):
        if any(p is None for p in parts):
            raise ExportError(f"block {i} {target} lacks one of q, k, v")
        out[f"joint_blocks.{i}.{target}.qkv.{param}"] = torch.cat(parts)
    return out


# --- whole checkpoints ---------------------------------------------------------------------------

_CONVERTERS = {
    "unet": unet_to_original,
    "vae": vae_to_original,
    "hf": hf_clip_to_original,
    "mmdit": mmdit_to_original,
    "t5": t5_to_original,
}


def parts_of(family: str) -> tuple[str, ...]:
    """The part names a checkpoint of ``family`` can hold, in file order."""
    return tuple(_layout(family))


def _layout(family: str) -> dict[str, FilePart]:
    """The family's single-file layout (``FamilyAdapter.file_parts``), if it can be written back."""
    exportable = {fid: f for fid, f in default_families().items() if f.exportable}
    if family not in exportable:
        raise ExportError(f"cannot export family {family!r}; supported: {', '.join(exportable)}")
    return dict(exportable[family].file_parts)


def components_to_original(family: str, components: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Original-layout state dict of the given parts: ``{part: module}`` (``unet``, ``vae``, ``clip_l``...).

    Use it for partial files: a UNet-only file, or an SD3 file without text encoders (as the
    official ``sd3_medium.safetensors``).
    """
    layout = _layout(family)
    out: dict[str, torch.Tensor] = {}
    for part, module in components.items():
        if part not in layout:
            raise ExportError(f"a {family} checkpoint has no part {part!r}; parts: {', '.join(layout)}")
        if module is None:
            continue
        where = layout[part]
        if where.layout == "openclip":
            sd = open_clip_to_original(module, logit_scale=where.logit_scale)
        else:
            sd = _CONVERTERS[where.layout](module)
        out.update({where.prefix + k: v for k, v in sd.items()})
    return out


def pipeline_to_original(pipe, family: str, include: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original single-file layout of ``family``.

    ``include``: the parts to write (default: every part the pipeline has).
    """
    layout = _layout(family)
    parts = tuple(include) if include is not None else tuple(layout)
    components = {}
    for part in parts:
        if part not in layout:
            raise ExportError(f"a {family} checkpoint has no part {part!r}; parts: {', '.join(layout)}")
        module = getattr(pipe, layout[part].component, None)
        if module is None and include is not None:
            raise ExportError(f"the pipeline has no {layout[part].component} to write as {part!r}")
        components[part] = module
    return components_to_original(family, components)


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write a safetensors file atomically (temp file + rename); floats cast to ``dtype`` if given."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in state_dict.items():
        t = tensor.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        # a contiguous copy of every tensor: safetensors refuses shared or strided storage
        tensors[key] = t.contiguous().clone()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_original(pipe, family: str, path: Path, metadata: Mapping[str, str] | None = None,
                  include: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` as one original-layout ``.safetensors`` checkpoint of ``family`` (atomically)."""
    return save_state_dict(pipeline_to_original(pipe, family, include), path, metadata, dtype)
