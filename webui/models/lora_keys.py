"""LoRA key names: parse a file's keys into layers, tell the family they were trained for, map them onto a model.

Pure functions over key names and shapes. Which family a LoRA is for, each family adapter says
(``FamilyAdapter.lora_evidence``); the SD3 kohya names and their conversion live with the SD3 adapter
(``webui.families.sd3_lora``).

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
from typing import Any, Iterable, Mapping

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

FLUX_GROUP = "flux"  # not a family of this app: its LoRAs are recognised to be refused by name
UNKNOWN_GROUP = "unknown"
_CROSS_K = re.compile(r"attn2[._]to[._]k$")
_MMDIT_CONTEXT = re.compile(r"(context_block[._]attn[._]qkv|add_k_proj)$")
_FLUX = re.compile(r"^(lora_unet_(double|single)_blocks_|single_transformer_blocks\.|double_blocks\.|single_blocks\.)")


def context_dim(layers: list[LoraLayer]) -> int | None:
    """Width of the text context: a UNet cross-attention to_k input, or an MMDiT context-stream input."""
    for component, pattern in (("unet", _CROSS_K), ("transformer", _MMDIT_CONTEXT)):
        for layer in layers:
            if layer.component == component and pattern.search(layer.module):
                return layer.in_features
    return None


def family_group(layers: list[LoraLayer], families: Any = None) -> str:
    """The LoRA group (``FamilyAdapter.lora_group``) a LoRA was trained for, "flux" or "unknown".

    Every family adapter scores the layers (names first, then standard widths, then structure); the
    most specific wins. Flux is recognised first: its diffusers module names are SD3's.
    """
    from webui.families.registry import best_match

    if any(_FLUX.match(layer.module) for layer in layers):
        return FLUX_GROUP
    # Flux (hidden 3072) shares diffusers module names with SD3 (1536 / 2432).
    if any(layer.component == "transformer" and layer.in_features == 3072 for layer in layers):
        return FLUX_GROUP
    family = best_match(lambda f: f.lora_evidence(layers), families)
    return family.lora_group if family is not None else UNKNOWN_GROUP


def group_denoiser(group: str, families: Any = None) -> str:
    """The denoiser component a LoRA group's layers patch: "unet" or "transformer"."""
    from webui.families.registry import for_lora_group

    if group == FLUX_GROUP:
        return "transformer"
    family = for_lora_group(group, families)
    return family.denoiser_component if family is not None else "unet"


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
