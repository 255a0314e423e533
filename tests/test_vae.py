"""VAE override: load a VAE file into a loaded pipeline, refuse ones that do not fit, restore the original."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from webui.families.registry import default_families
from webui.models.ldm_export import vae_to_original
from webui.models.vae import VaeError, load_vae_override, restore_vae

FAMILIES = default_families()


def decode(pipe, channels: int = 4):
    latents = torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.vae.decode(latents).sample


def save(state: dict, path, prefix: str = ""):
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture
def other_vae(fresh_tiny_pipe):
    """A VAE of the same shape as the tiny SD1.5 one, with other weights."""
    return fresh_tiny_pipe("sd15", seed=5).vae


LAYOUTS = {
    "original": lambda vae: (vae_to_original(vae), ""),
    "original-prefixed": lambda vae: (vae_to_original(vae), "first_stage_model."),
    "diffusers": lambda vae: (vae.state_dict(), ""),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_override_changes_decode_and_restore_gives_original(layout, fresh_tiny_pipe, other_vae, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    original = pipe.vae
    base = decode(pipe)
    state, prefix = LAYOUTS[layout](other_vae)
    path = save(state, tmp_path / f"{layout}.safetensors", prefix)

    override = load_vae_override(path, pipe, FAMILIES.get("sd15"))
    assert pipe.vae is override.vae and override.original is original
    assert pipe.vae.config.scaling_factor == original.config.scaling_factor
    assert not torch.equal(decode(pipe), base)
    torch.testing.assert_close(decode(pipe), decode_with(other_vae))

    restore_vae(pipe, override)
    assert pipe.vae is original
    assert torch.equal(decode(pipe), base)


def decode_with(vae):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vae.decode(latents).sample


def test_vae_inside_a_whole_checkpoint(fresh_tiny_pipe, tiny_checkpoint):
    ckpt = tiny_checkpoint("sd15")  # same seed: its VAE equals the pipeline's
    pipe = fresh_tiny_pipe("sd15")
    base = decode(pipe)
    override = load_vae_override(ckpt.path, pipe, FAMILIES.get("sd15"))
    assert pipe.vae is not override.original
    torch.testing.assert_close(decode(pipe), base)


def test_switching_overrides_keeps_the_checkpoint_vae(fresh_tiny_pipe, other_vae, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    original = pipe.vae
    a = save(vae_to_original(other_vae), tmp_path / "a.safetensors")
    b = save(vae_to_original(fresh_tiny_pipe("sd15", seed=7).vae), tmp_path / "b.safetensors")
    first = load_vae_override(a, pipe, FAMILIES.get("sd15"))
    second = load_vae_override(b, pipe, FAMILIES.get("sd15"), active=first)
    assert second.original is original
    restore_vae(pipe, second)
    assert pipe.vae is original


def test_dtype_is_applied(fresh_tiny_pipe, other_vae, tmp_path):
    pipe = fresh_tiny_pipe("sd15")
    path = save(vae_to_original(other_vae), tmp_path / "v.safetensors")
    load_vae_override(path, pipe, FAMILIES.get("sd15"), torch.bfloat16)
    assert pipe.vae.dtype == torch.bfloat16


def test_wrong_latent_channels_refused(fresh_tiny_pipe, tmp_path):
    sd3_vae = save(vae_to_original(fresh_tiny_pipe("sd3").vae), tmp_path / "sd3_vae.safetensors")
    pipe = fresh_tiny_pipe("sd15")
    original = pipe.vae
    with pytest.raises(VaeError) as err:
        load_vae_override(sd3_vae, pipe, FAMILIES.get("sd15"))
    assert "VAE 'sd3_vae' has 16 latent channels (an SD3/Flux VAE) but SD 1.5 needs 4" in str(err.value)
    assert pipe.vae is original

    sd_vae = save(vae_to_original(original), tmp_path / "sd_vae.safetensors")
    with pytest.raises(VaeError, match="has 4 latent channels .* but SD3 Medium needs 16"):
        load_vae_override(sd_vae, fresh_tiny_pipe("sd3"), FAMILIES.get("sd3"))


def test_not_a_vae_refused(fresh_tiny_pipe, tmp_path):
    path = save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "lora.safetensors")
    with pytest.raises(VaeError, match="not a VAE file"):
        load_vae_override(path, fresh_tiny_pipe("sd15"), FAMILIES.get("sd15"))


def test_other_vae_architecture_refused(fresh_tiny_pipe, tmp_path):
    from diffusers import AutoencoderKL

    narrow = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    path = save(vae_to_original(narrow), tmp_path / "narrow.safetensors")
    pipe = fresh_tiny_pipe("sd15")
    original = pipe.vae
    with pytest.raises(VaeError, match="does not match the layout of SD 1.5's VAE"):
        load_vae_override(path, pipe, FAMILIES.get("sd15"))
    assert pipe.vae is original


def test_incomplete_vae_refused(fresh_tiny_pipe, other_vae, tmp_path):
    state = {k: v for k, v in vae_to_original(other_vae).items() if not k.startswith("decoder.up.")}
    path = save(state, tmp_path / "cut.safetensors")
    pipe = fresh_tiny_pipe("sd15")
    original = pipe.vae
    with pytest.raises(VaeError, match="missing"):
        load_vae_override(path, pipe, FAMILIES.get("sd15"))
    assert pipe.vae is original
