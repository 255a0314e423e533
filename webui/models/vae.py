"""Use a VAE file from models/VAE instead of the checkpoint's own, and put the original back.

``load_vae_override`` reads the header first: a file that is not a VAE, or one whose latent channels do not
match the family (4 for SD1/SD2/SDXL, 16 for SD3), is refused before any tensor is read. The weights are
loaded with ``AutoencoderKL.from_single_file`` using the *pipeline's current VAE config* (written to a
temporary folder), so the override keeps the model's scaling/shift factors and needs no download. Both the
original layout (``encoder.*``/``decoder.*``/``quant_conv``, optionally under ``first_stage_model.`` or
``vae.``, possibly inside a whole checkpoint) and the diffusers layout work.

The checkpoint's own VAE module is kept in the returned ``VaeOverride``; ``restore_vae`` swaps that same
object back, without reloading anything.

Pipelines derived from the same checkpoint (img2img/inpaint built over the same modules) hold their own
reference to the VAE: install the override on each of them (or rebuild them) after a swap.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.models.safetensors_header import ModelFileError, SafetensorsHeader, read_header

log = logging.getLogger(__name__)

# Prefixes under which a VAE's tensors can sit in a file (standalone VAE, whole checkpoint, diffusers export).
VAE_PREFIXES = ("", "first_stage_model.", "vae.")


class VaeError(ModelFileError):
    """A VAE file cannot be used with the loaded model; the message says why and what to do."""


@dataclass(frozen=True)
class VaeFileInfo:
    path: Path
    prefix: str  # key prefix of the VAE tensors in the file
    layout: str  # "original" | "diffusers"
    latent_channels: int


@dataclass(frozen=True)
class VaeOverride:
    """An installed override: ``original`` is the checkpoint's own VAE module, ``vae`` the one in use."""

    path: Path
    original: Any
    vae: Any


def inspect_vae(header: SafetensorsHeader) -> VaeFileInfo:
    """Where the VAE tensors are in the file, their layout and latent channels; ``VaeError`` if none."""
    for prefix in VAE_PREFIXES:
        dec = header.shape(prefix + "decoder.conv_in.weight")
        enc = header.shape(prefix + "encoder.conv_out.weight")
        if dec and enc and len(dec) == 4:
            diffusers = header.has_prefix(prefix + "decoder.up_blocks.") or header.has_prefix(
                prefix + "encoder.down_blocks."
            )
            return VaeFileInfo(header.path, prefix, "diffusers" if diffusers else "original", dec[1])
    raise VaeError(
        header.path,
        "not a VAE file (no encoder.conv_out / decoder.conv_in weights); put VAEs made for your model in models/VAE",
    )


def _family_label(spec: Any) -> str:
    return getattr(spec, "label", getattr(spec, "id", "the loaded model"))


def _channels_hint(channels: int) -> str:
    return {4: " (an SD1/SD2/SDXL VAE)", 16: " (an SD3/Flux VAE)"}.get(channels, "")


def check_vae_fits(info: VaeFileInfo, family_spec: Any) -> None:
    want = family_spec.latent_channels
    if info.latent_channels != want:
        raise VaeError(
            info.path,
            f"VAE '{info.path.stem}' has {info.latent_channels} latent channels{_channels_hint(info.latent_channels)}"
            f" but {_family_label(family_spec)} needs {want}; pick a VAE made for {_family_label(family_spec)}"
            " or use the checkpoint's own VAE",
        )


def _vae_state_dict(info: VaeFileInfo) -> dict:
    """The VAE's tensors only, without their prefix (a whole checkpoint may hold much more)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(info.path), framework="pt", device="cpu") as f:
        for key in f.keys():
            if not key.startswith(info.prefix):
                continue
            rest = key[len(info.prefix) :]
            if rest.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
                out[rest] = f.get_tensor(key)
    return out


def _write_config(vae: Any, folder: Path) -> str:
    vae.save_config(folder)  # config.json only, no weights
    return str(folder)


def _current_original(pipe: Any, active: VaeOverride | None) -> Any:
    if active is None:
        return pipe.vae
    if pipe.vae is not active.vae:
        raise VaeError(active.path, "the pipeline's VAE was changed elsewhere; restore it before loading another VAE")
    return active.original


def load_vae_override(
    path: Path | str,
    pipe: Any,
    family_spec: Any,
    dtype: Any = None,
    *,
    active: VaeOverride | None = None,
) -> VaeOverride:
    """Load the VAE at ``path`` and install it as ``pipe.vae``; returns what ``restore_vae`` needs.

    ``dtype`` defaults to the current VAE's dtype; the new VAE goes to the current VAE's device.
    Pass the override now in use as ``active`` to switch from one override to another: the checkpoint's
    own VAE stays the one to restore.
    """
    from diffusers import AutoencoderKL

    info = inspect_vae(read_header(path))
    check_vae_fits(info, family_spec)
    original = _current_original(pipe, active)
    current = pipe.vae
    dtype = dtype or current.dtype
    state = _vae_state_dict(info)
    expected = len(original.state_dict())
    if len(state) < expected:
        raise VaeError(
            info.path,
            f"VAE '{info.path.stem}' is missing weights: it has {len(state)} of the {expected} tensors"
            f" {_family_label(family_spec)}'s VAE needs; the file is incomplete or for another architecture",
        )
    with tempfile.TemporaryDirectory(prefix="webui-vae-config-") as folder:
        try:
            vae = AutoencoderKL.from_single_file(
                state,
                config=_write_config(original, Path(folder)),
                local_files_only=True,
                torch_dtype=dtype,
                device=str(current.device),
            )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise VaeError(
                info.path,
                f"VAE '{info.path.stem}' does not match the layout of {_family_label(family_spec)}'s VAE"
                f" ({str(exc).splitlines()[0][:200]}); pick a VAE made for this model",
            ) from exc
    _check_complete(vae, info)
    vae.eval()
    pipe.register_modules(vae=vae)
    log.info("VAE override %s installed (%s layout)", info.path.name, info.layout)
    return VaeOverride(info.path, original, vae)


def _check_complete(vae: Any, info: VaeFileInfo) -> None:
    meta = [n for n, p in vae.named_parameters() if p.device.type == "meta"]
    if meta:
        raise VaeError(
            info.path,
            f"VAE '{info.path.stem}' is missing {len(meta)} weights (e.g. {meta[0]}); the file is incomplete",
        )


def restore_vae(pipe: Any, override: VaeOverride) -> None:
    """Put the checkpoint's own VAE object back (no reload)."""
    if pipe.vae is not override.vae and pipe.vae is not override.original:
        raise VaeError(override.path, "the pipeline's VAE is neither this override nor the original one")
    pipe.register_modules(vae=override.original)
