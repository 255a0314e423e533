"""What of a diffusers UNet the OpenVINO engine can export, and when a call must run in torch instead.

The exported model takes ``sample``, ``timestep`` and ``encoder_hidden_states`` (and SDXL's ``text_embeds`` /
``time_ids``) with dynamic batch, latent size and prompt length, and the UNet's weights as they were when it
was exported. A call that needs anything else runs in torch, with the reason:

* ControlNet / T2I-Adapter residuals (``down_block_additional_residuals`` ...), IP-Adapter image embeddings,
  cross-attention options, class labels, masks: not inputs of the exported model;
* an active LoRA (peft adapters): adapters change the weights per request, the export holds the base weights;
* attention processors other than those exported (IP-Adapter, an extension);
* a latent side that is not a multiple of the UNet's upsampling factor (an image side that is not a multiple
  of 64 px for SD 1.5): the traced model assumes the plain upsampling path.

Pure torch (no OpenVINO here): the tests check every rule without it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# call argument -> why it keeps the call in torch (when given and not None)
TORCH_ONLY_ARGUMENTS = {
    "down_block_additional_residuals": "ControlNet residuals",
    "mid_block_additional_residual": "ControlNet residuals",
    "down_intrablock_additional_residuals": "T2I-Adapter residuals",
    "cross_attention_kwargs": "cross-attention options (LoRA scale, IP-Adapter)",
    "class_labels": "class labels",
    "timestep_cond": "a timestep condition (LCM guidance embedding)",
    "attention_mask": "an attention mask",
    "encoder_attention_mask": "an encoder attention mask",
}
SDXL_EXTRAS = ("text_embeds", "time_ids")
FORMAT_VERSION = 1  # bump when the exported graph's inputs change: old IRs are then not reused


@dataclass(frozen=True)
class UNetSpec:
    """The inputs of the exported model, in order, and the factor every latent side must be a multiple of."""

    inputs: tuple[str, ...]
    up_factor: int
    in_channels: int
    cross_dim: int
    extras: tuple[str, ...] = ()


def unet_spec(module: Any) -> tuple[UNetSpec | None, str]:
    """(spec, "") for a UNet the engine can export; (None, why not) otherwise."""
    config = getattr(module, "config", None)
    if type(module).__name__ != "UNet2DConditionModel" or config is None:
        what = type(module).__name__
        return None, f"the OpenVINO engine runs UNet models (SD 1.5, SD 2, SDXL); this model's {what} stays in torch"
    if config.get("class_embed_type") or config.get("time_cond_proj_dim"):
        return None, "this UNet has class or timestep-condition embeddings, which the OpenVINO export does not cover"
    addition = config.get("addition_embed_type")
    if addition not in (None, "text_time"):
        return None, f"this UNet's {addition!r} added conditioning is not covered by the OpenVINO export"
    extras = SDXL_EXTRAS if addition == "text_time" else ()
    cross = config.get("cross_attention_dim")
    if not isinstance(cross, int):
        return None, "this UNet has per-block cross-attention sizes, which the OpenVINO export does not cover"
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    inputs = ("sample", "timestep", "encoder_hidden_states", *extras)
    spec = UNetSpec(inputs, factor, config["in_channels"], cross, extras)
    return spec, ""


def example_inputs(module: Any, spec: UNetSpec, side: int = 16) -> dict[str, Any]:
    """Inputs to trace the UNet with (batch 2, a ``side`` x ``side`` latent, 77 tokens)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = {
        "sample": torch.randn(2, spec.in_channels, side, side, generator=gen),
        "timestep": torch.tensor([500.0, 500.0]),
        "encoder_hidden_states": torch.randn(2, 77, spec.cross_dim, generator=gen),
    }
    if spec.extras:
        config = module.config
        text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        out["text_embeds"] = torch.randn(2, text, generator=gen)
        out["time_ids"] = torch.tensor([[side * 8.0, side * 8.0, 0.0, 0.0, side * 8.0, side * 8.0]] * 2)
    return out


def dynamic_shapes(spec: UNetSpec, example: Mapping[str, Any]) -> dict[str, list[int]]:
    """Batch, latent height/width and prompt length dynamic; channels fixed. SDXL's two added inputs are
    concatenated before one linear layer, so their widths are dynamic too (the refiner passes 5 time ids)."""
    shapes = {
        "sample": [-1, spec.in_channels, -1, -1],
        "timestep": [-1],
        "encoder_hidden_states": [-1, -1, spec.cross_dim],
    }
    for name in spec.extras:
        shapes[name] = [-1, -1]
    return shapes


class TracedUNet:
    """Builds the module ``convert_model`` traces: positional tensors in, the noise prediction out."""

    @staticmethod
    def build(module: Any, spec: UNetSpec) -> Any:
        import torch

        forward = type(module).forward  # the class's forward: no hooks, no engine, no compiled regions
        dtype = next(module.parameters()).dtype  # the inputs come in fp32; a bf16 UNet gets them cast

        class _Traced(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.unet = module

            def forward(self, sample, timestep, encoder_hidden_states, *extras):  # noqa: ANN001
                added = {name: t.to(dtype) for name, t in zip(spec.extras, extras)} or None
                out = forward(
                    self.unet,
                    sample.to(dtype),
                    timestep,
                    encoder_hidden_states=encoder_hidden_states.to(dtype),
                    added_cond_kwargs=added,
                    return_dict=False,
                )
                return out[0].float()

        return _Traced().eval()


def call_inputs(spec: UNetSpec, bound: Mapping[str, Any]) -> tuple[list[Any] | None, str]:
    """(tensors in the exported order, "") or (None, why this call runs in torch)."""
    import torch

    for name, why in TORCH_ONLY_ARGUMENTS.items():
        value = bound.get(name)
        if value is not None and not (isinstance(value, dict) and not value):
            return None, why
    sample = bound["sample"]
    if sample.dtype not in (torch.float32, torch.bfloat16) or sample.device.type != "cpu":
        return None, f"a {sample.dtype} sample on {sample.device} (the export runs fp32 or bf16 on the CPU)"
    height, width = sample.shape[-2:]
    if height % spec.up_factor or width % spec.up_factor:
        px = spec.up_factor * 8
        return None, f"an image side that is not a multiple of {px} px"
    added = bound.get("added_cond_kwargs") or {}
    if set(added) - set(spec.extras):
        return None, "IP-Adapter image embeddings" if "image_embeds" in added else "extra added conditioning"
    if set(spec.extras) - set(added):
        return None, "missing added conditioning"
    batch = sample.shape[0]
    timestep = torch.as_tensor(bound["timestep"], dtype=torch.float32).reshape(-1).expand(batch)
    tensors = [sample, timestep, bound["encoder_hidden_states"], *(added[name] for name in spec.extras)]
    return tensors, ""


def lora_active(module: Any) -> bool:
    """Whether a peft adapter is active on any layer of the module (a LoRA changes this request's weights)."""
    for layer in module.modules():
        if hasattr(layer, "active_adapters") and hasattr(layer, "lora_A"):
            if not getattr(layer, "disable_adapters", False) and layer.active_adapters:
                return True
    return False


def processor_kinds(module: Any) -> tuple[str, ...]:
    """The attention processor classes in use, sorted: an IP-Adapter or an extension changes them."""
    processors = getattr(module, "attn_processors", None) or {}
    return tuple(sorted({type(p).__name__ for p in processors.values()}))


def weights_fingerprint(module: Any, samples: int = 16) -> str:
    """A cheap fingerprint of the base weights (a few values of every tensor, names and shapes): another
    checkpoint, or weights changed in place, give another one. peft's adapter tensors are left out."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if ".lora_" in name or "lora_magnitude" in name:
                continue
            h.update(name.replace(".base_layer", "").encode())
            h.update(str(tuple(tensor.shape)).encode())
            flat = tensor.reshape(-1)
            if flat.numel() and flat.is_floating_point():
                n = min(samples, flat.numel())
                idx = torch.arange(n) * (flat.numel() - 1) // max(n - 1, 1)  # integers: exact for any size
                h.update(flat[idx].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def model_signature(module: Any) -> str:
    """The model's architecture and dtype (what its speed depends on), not its weights."""
    # diffusers' own keys ("_use_default_values", "_name_or_path"...) vary between loads of one file: left out
    values = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    config = json.dumps(values, sort_keys=True, default=str)
    dtype = str(next(module.parameters()).dtype)
    digest = hashlib.sha256(f"{type(module).__name__}|{config}|{dtype}".encode()).hexdigest()[:16]
    return f"{type(module).__name__}-{digest}"


def fp16_exact(module: Any) -> bool:
    """True when every weight survives a round trip through fp16 (weights read from an fp16 file)."""
    import torch

    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point() and not torch.equal(tensor.to(torch.float16).to(tensor.dtype), tensor):
                return False
    return True
