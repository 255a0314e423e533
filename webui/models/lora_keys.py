"""LoRA key names: parse a file's keys into layers, map them onto a loaded model, convert SD3 kohya files.

Pure functions over key names and shapes; torch is needed only by ``convert_sd3_kohya``.

Three layouts are understood:

* **kohya** (A1111, sd-scripts): ``lora_unet_<path_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` and ``lora_te_`` (SD1/SD2), ``lora_te1_``/``lora_te2_`` (SDXL, SD3 CLIP-L/G), ``lora_te3_`` (SD3 T5).
  SDXL files name UNet blocks the SGM way (``input_blocks_4_1_...``), SD1 files the diffusers way.
* **diffusers**: ``unet.``/``text_encoder.``/``text_encoder_2.``/``transformer.`` + module path + ``lora_A``/``lora_B``
  (or the older ``lora.down``/``lora.up``, ``to_q_lora.down``, ``lora_linear_layer.down``).
* **peft**: one model's adapter, module path + ``lora_A``/``lora_B`` without a component prefix
  (optionally under ``base_model.model.``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from webui.models.ldm_names import RESNET_LDM_NAMES

KOHYA_PREFIXES = {
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_te_": "text_encoder",
    "lora_unet_": "unet",  # "transformer" for SD3/Flux files
}
DIFFUSERS_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer")

# (suffix, role). Longest suffixes first so ".lora_linear_layer.down.weight" wins over ".down.weight".
_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_B.bias", "bias"),
    (".alpha", "alpha"),
    (".dora_scale", "dora"),
    (".lora_magnitude_vector", "dora"),
    (".lora_mid.weight", "mid"),
)
# Last key segments of LyCORIS algorithms that diffusers cannot apply to SD/SDXL/SD3 (prefix -> name users know).
LYCORIS_SEGMENTS = (
    ("hada_", "LoHa"),
    ("lokr_", "LoKr"),
    ("oft_", "OFT"),
    ("boft_", "BOFT"),
    ("diff", "full (diff)"),
    ("w_norm", "norm"),
    ("b_norm", "norm"),
    ("on_input", "IA3"),
)


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank pair as the file names it. ``module`` is the kohya name or the dotted module path."""

    component: str
    module: str
    in_features: int
    out_features: int
    rank: int
    conv: bool = False


class KeyLayoutError(ValueError):
    """The keys are not a LoRA layout we know; the message says what was found."""


def split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def lycoris_kind(keys: Iterable[str]) -> str | None:
    for key in keys:
        if "." not in key:
            continue
        last = key.rsplit(".", 1)[1]
        for prefix, name in LYCORIS_SEGMENTS:
            if last.startswith(prefix):
                return name
    return None


def key_format(keys: list[str]) -> str:
    """"kohya", "diffusers" or "peft"; ``KeyLayoutError`` if the keys are none of these."""
    real = [k for k in keys if not k.startswith("bundle_emb.")]
    if not real:
        raise KeyLayoutError("the file has no LoRA layers")
    if all(k.startswith(tuple(KOHYA_PREFIXES)) for k in real):
        return "kohya"
    if all(k.split(".", 1)[0] in DIFFUSERS_COMPONENTS for k in real):
        return "diffusers"
    if all(".lora_A." in k or ".lora_B." in k or k.endswith(".alpha") for k in real):
        return "peft"
    odd = next(k for k in real if not k.startswith(tuple(KOHYA_PREFIXES)))
    raise KeyLayoutError(f"unrecognised LoRA key layout (for example {odd!r})")


_PEFT_TOP = {
    "unet": ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "time_embedding", "add_embedding"),
    "transformer": (
        "transformer_blocks",
        "single_transformer_blocks",
        "pos_embed",
        "context_embedder",
        "time_text_embed",
        "proj_out",
        "norm_out",
        "x_embedder",
    ),
    "text_encoder": ("text_model", "encoder", "embeddings", "text_projection"),
}


def peft_component(path: str) -> str | None:
    head = path.split(".", 1)[0]
    return next((comp for comp, tops in _PEFT_TOP.items() if head in tops), None)


def _shape_io(down: tuple[int, ...], up: tuple[int, ...]) -> tuple[int, int, int, bool]:
    return down[1], up[0], down[0], len(down) == 4


def parse_layers(shapes: Mapping[str, tuple[int, ...]], fmt: str) -> tuple[list[LoraLayer], list[str]]:
    """Group the keys into layers. Returns (layers, problems); problems name keys that do not fit."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    problems = []
    for key, shape in shapes.items():
        if key.startswith("bundle_emb."):
            continue
        split = split_key(key)
        if split is None:
            problems.append(key)
            continue
        name, role = split
        pairs.setdefault(name, {})[role] = shape
    layers = []
    for name, roles in pairs.items():
        if "down" not in roles or "up" not in roles:
            if set(roles) - {"alpha", "dora", "bias"}:
                problems.append(name)
            continue
        if len(roles["down"]) < 2 or len(roles["up"]) < 2:
            problems.append(name)
            continue
        component, module = _component_and_module(name, fmt)
        fin, fout, rank, conv = _shape_io(roles["down"], roles["up"])
        layers.append(LoraLayer(component, module, fin, fout, rank, conv))
    return layers, problems


def _component_and_module(name: str, fmt: str) -> tuple[str, str]:
    if fmt == "kohya":
        for prefix, comp in KOHYA_PREFIXES.items():
            if name.startswith(prefix):
                return comp, name
    if fmt == "diffusers":
        comp, _, path = name.partition(".")
        return comp, normalize_path(path, comp)
    path = name.removeprefix("base_model.model.")
    comp = peft_component(path) or "unknown"
    return comp, normalize_path(path, comp)


def normalize_path(path: str, component: str) -> str:
    """A diffusers-format module name as a module path (old attention-processor spellings undone)."""
    path = path.replace(".processor.", ".")
    te = component in TEXT_ENCODERS
    for old, unet_new, te_new in (
        ("to_q_lora", "to_q", "q_proj"),
        ("to_k_lora", "to_k", "k_proj"),
        ("to_v_lora", "to_v", "v_proj"),
        ("to_out_lora", "to_out.0", "out_proj"),
    ):
        if path.endswith(old):
            return path[: -len(old)] + (te_new if te else unet_new)
    return path


# --- family signals ---------------------------------------------------------------------------------

CONTEXT_DIM_GROUP = {768: "sd15", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
TE_WIDTH_GROUP = {768: "sd15", 1024: "sd2"}
_CROSS_K = re.compile(r"attn2[._]to[._]k$")
_MMDIT_CONTEXT = re.compile(r"(context_block[._]attn[._]qkv|add_k_proj)$")
_TE_Q = re.compile(r"(self_attn[._]q_proj|to_q)$")
# SGM block names (kohya writes them for SDXL only), >1 transformer layer per block, the SDXL added embedding.
_SDXL_UNET = re.compile(
    r"(input_blocks|output_blocks|middle_block|transformer_blocks[._][1-9]|add_embedding|label_emb)"
)
_FLUX = re.compile(r"^(lora_unet_(double|single)_blocks_|single_transformer_blocks\.|double_blocks\.|single_blocks\.)")


def context_dim(layers: list[LoraLayer]) -> int | None:
    """Width of the text context: a UNet cross-attention to_k input, or an MMDiT context-stream input."""
    for component, pattern in (("unet", _CROSS_K), ("transformer", _MMDIT_CONTEXT)):
        for layer in layers:
            if layer.component == component and pattern.search(layer.module):
                return layer.in_features
    return None


def family_group(layers: list[LoraLayer]) -> str:
    """The family a LoRA was trained for, from names first, then standard widths, then structure."""
    if any(_FLUX.match(layer.module) for layer in layers):
        return "flux"
    if any(layer.module.startswith("lora_unet_joint_blocks_") for layer in layers):
        return "sd3"
    denoiser = [layer for layer in layers if layer.component == "transformer"]
    if denoiser:
        # Flux (hidden 3072) shares diffusers module names with SD3 (1536 / 2432).
        return "flux" if any(layer.in_features == 3072 for layer in denoiser) else "sd3"
    ctx = context_dim(layers)
    if ctx in CONTEXT_DIM_GROUP:
        return CONTEXT_DIM_GROUP[ctx]
    comps = {layer.component for layer in layers}
    if "text_encoder_2" in comps or any(
        layer.component == "unet" and _SDXL_UNET.search(layer.module) for layer in layers
    ):
        return "sdxl"
    te_q = [layer.in_features for layer in layers if layer.component == "text_encoder" and _TE_Q.search(layer.module)]
    if te_q and te_q[0] in TE_WIDTH_GROUP:
        return TE_WIDTH_GROUP[te_q[0]]
    if comps & {"unet", "text_encoder"}:
        return "sd15"
    return "unknown"


# --- mapping kohya names onto a loaded model ----------------------------------------------------------

_RESNET_SGM = RESNET_LDM_NAMES
_UNET_TOP_SGM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def _per_block(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def sgm_unet_path(path: str, config: Mapping) -> str | None:
    """The SGM (original SDXL code) name of a diffusers UNet module path, or None."""
    for diff, sgm in _UNET_TOP_SGM.items():
        if path == diff:
            return sgm
    parts = path.split(".")
    n_blocks = len(config.get("down_block_types", ()))
    per_block = _per_block(config.get("layers_per_block", 2), n_blocks)
    with_attn = [t.startswith("CrossAttn") for t in config.get("up_block_types", ())]
    try:
        if parts[0] == "down_blocks":
            b, kind, j = int(parts[1]), parts[2], int(parts[3])
            start = 1 + sum(per_block[k] + 1 for k in range(b))
            rest = parts[4:]
            if kind == "downsamplers":
                head, rest = f"input_blocks.{start + per_block[b]}.0", ["op" if p == "conv" else p for p in rest]
            else:
                head = f"input_blocks.{start + j}.{0 if kind == 'resnets' else 1}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), parts[3:]
            head = "middle_block." + {("resnets", 0): "0", ("attentions", 0): "1", ("resnets", 1): "2"}[(kind, j)]
        elif parts[0] == "up_blocks":
            b, kind, j = int(parts[1]), parts[2], int(parts[3])
            up_layers = [n + 1 for n in reversed(per_block)]
            start = sum(up_layers[k] for k in range(b))
            rest = parts[4:]
            if kind == "upsamplers":
                head = f"output_blocks.{start + up_layers[b] - 1}.{2 if with_attn[b] else 1}"
            else:
                head = f"output_blocks.{start + j}.{0 if kind == 'resnets' else 1}"
        else:
            return None
    except (IndexError, ValueError, KeyError):
        return None
    if parts[2] == "resnets" or parts[1] == "resnets":
        rest = [_RESNET_SGM.get(".".join(rest), ".".join(rest))] if rest else rest
    return ".".join([head, *rest])


def kohya_aliases(component: str, modules: Iterable[str], config: Mapping | None) -> dict[str, str]:
    """kohya name -> module path for every module path of one loaded component."""
    out: dict[str, str] = {}
    if component == "unet":
        for path in modules:
            out["lora_unet_" + path.replace(".", "_")] = path
            sgm = sgm_unet_path(path, config or {})
            if sgm:
                out["lora_unet_" + sgm.replace(".", "_")] = path
        return out
    prefixes = [p for p, c in KOHYA_PREFIXES.items() if c == component]
    for path in modules:
        core = path.removeprefix("text_model.")
        for prefix in prefixes:
            out[prefix + "text_model_" + core.replace(".", "_")] = path
            out[prefix + core.replace(".", "_")] = path
    return out


# --- SD3 (MMDiT) kohya names -> diffusers SD3Transformer2DModel paths -----------------------------

QKV, SWAP, PLAIN = "qkv", "swap", "plain"
_SD3_BLOCK = re.compile(r"^lora_unet_joint_blocks_(\d+)_(x_block|context_block)_(.+)$")
_SD3_X = {
    "attn_qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
    "attn_proj": (("attn.to_out.0",), PLAIN),
    "attn2_qkv": (("attn2.to_q", "attn2.to_k", "attn2.to_v"), QKV),
    "attn2_proj": (("attn2.to_out.0",), PLAIN),
    "mlp_fc1": (("ff.net.0.proj",), PLAIN),
    "mlp_fc2": (("ff.net.2",), PLAIN),
    "adaLN_modulation_1": (("norm1.linear",), PLAIN),
}
_SD3_CONTEXT = {
    "attn_qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), QKV),
    "attn_proj": (("attn.to_add_out",), PLAIN),
    "mlp_fc1": (("ff_context.net.0.proj",), PLAIN),
    "mlp_fc2": (("ff_context.net.2",), PLAIN),
    # The last block's context stream keeps only shift/scale, stored swapped in diffusers.
    "adaLN_modulation_1": (("norm1_context.linear",), PLAIN),
}
_SD3_TOP = {
    "lora_unet_context_embedder": (("context_embedder",), PLAIN),
    "lora_unet_x_embedder_proj": (("pos_embed.proj",), PLAIN),
    "lora_unet_t_embedder_mlp_0": (("time_text_embed.timestep_embedder.linear_1",), PLAIN),
    "lora_unet_t_embedder_mlp_2": (("time_text_embed.timestep_embedder.linear_2",), PLAIN),
    "lora_unet_y_embedder_mlp_0": (("time_text_embed.text_embedder.linear_1",), PLAIN),
    "lora_unet_y_embedder_mlp_2": (("time_text_embed.text_embedder.linear_2",), PLAIN),
    "lora_unet_final_layer_linear": (("proj_out",), PLAIN),
    "lora_unet_final_layer_adaLN_modulation_1": (("norm_out.linear",), SWAP),
}


def sd3_targets(name: str, in_features: int, out_features: int) -> tuple[tuple[str, ...], str] | None:
    """diffusers module paths and split mode for one SD3 kohya layer name, or None if unknown."""
    if name in _SD3_TOP:
        return _SD3_TOP[name]
    m = _SD3_BLOCK.match(name)
    if not m:
        return None
    block, stream, rest = m.groups()
    table = _SD3_X if stream == "x_block" else _SD3_CONTEXT
    if rest not in table:
        return None
    paths, mode = table[rest]
    if stream == "context_block" and rest == "adaLN_modulation_1" and out_features == 2 * in_features:
        mode = SWAP
    return tuple(f"transformer_blocks.{block}.{p}" for p in paths), mode


def convert_sd3_kohya(state_dict: Mapping, te_aliases: Mapping[str, Mapping[str, str]]):
    """Convert an SD3 kohya state dict to diffusers keys with alpha baked into ``lora_B``.

    ``te_aliases``: component -> {kohya name -> module path} for the text encoders present.
    Returns (state_dict, skipped kohya names).
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
            target = sd3_targets(name, down.shape[1], up.shape[0])
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
        component = next(c for p, c in KOHYA_PREFIXES.items() if name.startswith(p))
        path = te_aliases.get(component, {}).get(name)
        if path is None:
            skipped.append(name)
            continue
        out[f"{component}.{path}.lora_A.weight"] = down
        out[f"{component}.{path}.lora_B.weight"] = up
    return out, skipped
