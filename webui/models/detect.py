"""Tell what a model file is from its safetensors header alone (keys and shapes).

No tensor data is read. ``identify`` sorts a file into a kind (checkpoint,
LoRA, VAE, text encoder) and, for checkpoints, ``detect_checkpoint`` names the
family and the parts the file carries. Anything we cannot run raises
``UnsupportedModelError`` with what the file seems to be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from webui.models.safetensors_header import ModelFileError, SafetensorsHeader

DM = "model.diffusion_model."

# Prefix of each text encoder inside a single-file checkpoint, per family layout.
SD1_CLIP_L = "cond_stage_model.transformer."
SD2_OPENCLIP = "cond_stage_model.model."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_CLIP_G = "conditioner.embedders.1.model."
REFINER_CLIP_G = "conditioner.embedders.0.model."
SD3_TE = {"clip_l": "text_encoders.clip_l.", "clip_g": "text_encoders.clip_g.", "t5xxl": "text_encoders.t5xxl."}
VAE_PREFIX = "first_stage_model."


class UnsupportedModelError(ModelFileError):
    """The file is readable but is not something this app can use in that place."""


@dataclass(frozen=True)
class Detection:
    family: str
    # Parts the file carries: "unet"/"transformer", "vae", and text encoder ids.
    components: frozenset[str]
    in_channels: int
    # Key prefix of the denoiser ("model.diffusion_model." or "" for bare SD3 files).
    denoiser_prefix: str = DM
    notes: tuple[str, ...] = ()
    variant: str = ""  # "", "inpaint", "instruct_pix2pix", "v_pred", "edm"

    @property
    def inpaint(self) -> bool:
        return self.in_channels == 9

    def missing_text_encoders(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(te for te in wanted if te not in self.components)


@dataclass(frozen=True)
class Identified:
    """What a file is: kind is "checkpoint", "lora", "vae" or "text_encoder"."""

    kind: str
    detection: Detection | None = None
    # For LoRAs: family group and format; for VAEs: latent channels; for text encoders: slot id.
    info: dict = field(default_factory=dict)


def _max_index(header: SafetensorsHeader, pattern: str) -> int:
    """1 + the largest block number in keys matching ``pattern`` (group 1: ASCII digits, at most 6 of them)."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in header.keys() if (m := rx.match(k))]  # noqa: SIM118 - not a dict
    return max(found) + 1 if found else 0


def _sd3(header: SafetensorsHeader, prefix: str) -> Detection:
    layers = _max_index(header, re.escape(prefix) + r"joint_blocks\.([0-9]{1,6})\.")
    keys = header.keys()
    qk_norm = any(k.startswith(prefix + "joint_blocks.0.x_block.attn.ln_q") for k in keys)
    mmdit_x = any(".x_block.attn2." in k for k in keys)
    if mmdit_x:
        family = "sd35_medium"
    elif qk_norm:
        family = "sd35_large"
    else:
        family = "sd3"
    comps = {"transformer"}
    comps |= {te for te, p in SD3_TE.items() if header.has_prefix(p)}
    if header.has_prefix(VAE_PREFIX):
        comps.add("vae")
    xe = header.shape(prefix + "x_embedder.proj.weight")
    in_ch = xe[1] if xe and len(xe) == 4 else 16
    notes = [f"{layers} MMDiT blocks"]
    t5 = header.with_prefix(SD3_TE["t5xxl"])
    if t5 and {t.dtype for t in t5.values()} & {"F8_E4M3", "F8_E5M2"}:
        notes.append("T5 stored in fp8")
    return Detection(family, frozenset(comps), in_ch, prefix, tuple(notes))


def _unet_in_channels(header: SafetensorsHeader) -> int:
    shape = header.shape(DM + "input_blocks.0.0.weight")
    return shape[1] if shape and len(shape) == 4 else 4


def _context_dim(header: SafetensorsHeader) -> int | None:
    for k, info in header.tensors.items():
        if k.startswith(DM) and k.endswith("attn2.to_k.weight") and len(info.shape) == 2:
            return info.shape[1]
    return None


def _unet_family(header: SafetensorsHeader) -> str:
    """The family of a UNet checkpoint, from its text encoders or else from the UNet itself."""
    if header.has_prefix(SDXL_CLIP_G) or header.has_prefix(SDXL_CLIP_L):
        return "sdxl"
    if header.has_prefix(REFINER_CLIP_G):
        return "sdxl_refiner"
    if header.has_prefix(SD2_OPENCLIP):
        return "sd2"
    if header.has_prefix(SD1_CLIP_L):
        return "sd15"
    label = header.shape(DM + "label_emb.0.0.weight")
    if label and len(label) == 2:
        if label[1] == 2560:
            return "sdxl_refiner"
        return "sdxl"
    ctx = _context_dim(header)
    if ctx == 1024:
        return "sd2"
    return "sd15"


_UNET_TE = {
    "sd15": {"clip_l": SD1_CLIP_L},
    "sd2": {"openclip_h": SD2_OPENCLIP},
    "sdxl": {"clip_l": SDXL_CLIP_L, "clip_g": SDXL_CLIP_G},
    "sdxl_refiner": {"clip_g": REFINER_CLIP_G},
}


def _unet(header: SafetensorsHeader) -> Detection:
    family = _unet_family(header)
    comps = {"unet"}
    comps |= {te for te, p in _UNET_TE[family].items() if header.has_prefix(p)}
    if header.has_prefix(VAE_PREFIX):
        comps.add("vae")
    in_ch = _unet_in_channels(header)
    variant = {9: "inpaint", 8: "instruct_pix2pix"}.get(in_ch, "")
    notes = []
    if "v_pred" in header.keys():  # noqa: SIM118 - a header, not a dict
        variant = variant or "v_pred"
        notes.append("v-prediction")
    if "edm_mean" in header.keys():  # noqa: SIM118 - a header, not a dict
        variant = variant or "edm"
        notes.append("EDM (Playground 2.5 style)")
    if variant == "instruct_pix2pix":
        raise UnsupportedModelError(
            header.path, "this is an InstructPix2Pix checkpoint (8 input channels), which is not supported yet"
        )
    if variant == "edm":
        raise UnsupportedModelError(
            header.path, "this is an EDM checkpoint (Playground 2.5 style), which is not supported yet"
        )
    return Detection(family, frozenset(comps), in_ch, DM, tuple(notes), variant)


def _what_else(header: SafetensorsHeader) -> str | None:
    """A description of a file that is not a checkpoint we support, or None if unknown."""
    keys = list(header.keys())
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        return "a Flux model, which this app does not support"
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) or ".lora_" in k or ".lora." in k for k in keys):
        return "a LoRA; put it in models/Lora and use it with <lora:name:weight> in the prompt"
    if _vae_latent_channels(header):
        return "a VAE; put it in models/VAE"
    if _text_encoder_slot(header):
        return "a text encoder; put it in models/text_encoder"
    if any("control_model" in k or k.startswith("controlnet") for k in keys):
        return "a ControlNet model, which is not supported yet"
    if any(k.startswith(("emb_params", "string_to_param")) for k in keys):
        return "a textual-inversion embedding, which is not supported yet"
    if any(k.startswith(("down_blocks.", "transformer_blocks.", "conv_in.")) for k in keys):
        return "a single diffusers component (not a whole checkpoint); use the diffusers folder it came from"
    return None


def detect_checkpoint(header: SafetensorsHeader) -> Detection:
    """Family and parts of a single-file checkpoint; ``UnsupportedModelError`` otherwise."""
    keys = header.keys()
    for prefix in (DM, ""):
        if any(k.startswith(prefix + "joint_blocks.") for k in keys):
            return _sd3(header, prefix)
    if any(k.startswith(DM + "input_blocks.") for k in keys):
        return _unet(header)
    what = _what_else(header)
    if what:
        raise UnsupportedModelError(header.path, f"not a checkpoint: this looks like {what}")
    raise UnsupportedModelError(
        header.path,
        "not a Stable Diffusion checkpoint this app knows (no SD1/SD2/SDXL UNet or SD3 MMDiT keys found)",
    )


def _vae_latent_channels(header: SafetensorsHeader) -> int | None:
    for prefix in ("", VAE_PREFIX, "vae."):
        conv = header.shape(prefix + "encoder.conv_out.weight")
        dec = header.shape(prefix + "decoder.conv_in.weight")
        if conv and dec and len(dec) == 4:
            return dec[1]
    return None


def _text_encoder_slot(header: SafetensorsHeader) -> str | None:
    keys = header.keys()
    if any(k.startswith(("encoder.block.0.layer.0.SelfAttention", "shared.")) for k in keys):
        return "t5xxl"
    emb = None
    for k in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
        emb = emb or header.shape(k)
    if emb and len(emb) == 2:
        has_proj = any(k.endswith("text_projection.weight") for k in keys)
        return "clip_g" if has_proj and emb[1] != 768 else "clip_l"
    return None


def identify(header: SafetensorsHeader) -> Identified:
    """Sort a file into checkpoint / lora / vae / text_encoder, or raise ``UnsupportedModelError``."""
    try:
        return Identified("checkpoint", detect_checkpoint(header))
    except UnsupportedModelError:
        pass
    keys = list(header.keys())
    if any(k.startswith(("lora_", "lycoris_")) or ".lora" in k or ".hada_" in k or ".lokr_" in k for k in keys):
        return Identified("lora")
    channels = _vae_latent_channels(header)
    if channels:
        return Identified("vae", info={"latent_channels": channels})
    slot = _text_encoder_slot(header)
    if slot:
        return Identified("text_encoder", info={"slot": slot})
    detect_checkpoint(header)  # raises with the best description
    raise AssertionError("unreachable")


_DIFFUSERS_CLASSES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionInpaintPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",
}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(path, f"cannot read {path.name}: {exc}") from None
    return data if isinstance(data, dict) else {}


def detect_diffusers_folder(folder: Path) -> Detection:
    """Family and parts of a diffusers folder, from model_index.json and the component configs."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    cls = index.get("_class_name", "")
    family = _DIFFUSERS_CLASSES.get(cls) if isinstance(cls, str) else None
    if family is None:
        shown = cls if isinstance(cls, str) and cls else "(unnamed)"
        raise UnsupportedModelError(folder, f"diffusers pipeline {shown[:80]} is not supported")
    present = {name for name, value in index.items() if isinstance(value, list) and value and value[0] is not None}
    comps = set()
    if family == "sd3":
        cfg = _read_json(folder / "transformer" / "config.json")
        if cfg.get("dual_attention_layers"):
            family = "sd35_medium"
        elif cfg.get("qk_norm"):
            family = "sd35_large"
        comps.add("transformer")
        in_ch = cfg.get("in_channels", 16)
        slots = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"}
    else:
        cfg = _read_json(folder / "unet" / "config.json")
        comps.add("unet")
        in_ch = cfg.get("in_channels", 4)
        if (
            family == "sdxl"
            and "text_encoder" not in present
            and cfg.get("projection_class_embeddings_input_dim") != 2816
        ):
            family = "sdxl_refiner"
        if family == "sd15" and cfg.get("cross_attention_dim") == 1024:
            family = "sd2"
        slots = {
            "sd15": {"text_encoder": "clip_l"},
            "sd2": {"text_encoder": "openclip_h"},
            "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
            "sdxl_refiner": {"text_encoder_2": "clip_g"},
        }[family]
    if not isinstance(in_ch, int) or isinstance(in_ch, bool) or not 0 < in_ch <= 64:
        part = "transformer" if family.startswith("sd3") else "unet"
        raise UnsupportedModelError(folder, f"{part}/config.json has no valid in_channels ({str(in_ch)[:40]})")
    comps |= {te for slot, te in slots.items() if slot in present}
    if "vae" in present:
        comps.add("vae")
    variant = "inpaint" if in_ch == 9 else ""
    return Detection(family, frozenset(comps), in_ch, "", (), variant)
