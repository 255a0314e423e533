"""Applying ControlNet, T2I-Adapter and IP-Adapter units to one job, through documented torch and diffusers APIs.

ControlNets (SD 1.5, SDXL, ControlNet-Union, SD3) and T2I-Adapters run in a **forward pre-hook on the
denoiser** (``register_forward_pre_hook(with_kwargs=True)`` on the UNet / SD3 transformer): before each
denoiser call the hook runs every unit that is active at this step and adds its residuals to the call
(``down_block_additional_residuals`` / ``mid_block_additional_residual``,
``down_intrablock_additional_residuals``, ``block_controlnet_hidden_states``), exactly what the diffusers
ControlNet / Adapter pipelines pass. So the ordinary txt2img, img2img and inpaint pipelines run, and per
unit we get:

* the weight as a Python float (A1111: every residual x weight);
* A1111's guidance window: the unit runs at step i of N when ``start <= i / N <= end`` (one step longer
  than diffusers' ``control_guidance_end`` rule), N = the steps the pass runs;
* A1111's control modes: Balanced (x weight), "My prompt is more important" (soft injection: down
  residual k x 0.825^(12-k), the middle x 0.825^(12-n_down); T2I x (0.25, 0.62, 0.825, 1.0)), "ControlNet is
  more important" (soft injection, and the unconditional half of the CFG batch gets no control).

The step index comes from the step callback (``webui_step_callbacks``), which the engine calls after every
step. IP-Adapters are loaded into the pipeline for the job (``load_ip_adapter`` with the state dict; undone
when the job ends); their images are encoded once by their CLIP vision encoder and passed as
``ip_adapter_image_embeds``; weight and guidance window go through ``set_ip_adapter_scale`` per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SOFT = 0.825
T2I_SOFT = (0.25, 0.62, 0.825, 1.0)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def keep(start: float, end: float, step: int, total: int) -> bool:
    """A1111's guidance window: the unit runs at step ``step`` (0-based) of ``total`` when start <= step/total <= end."""
    if total <= 0:
        return True
    fraction = step / total
    return start <= fraction <= end


def soft_scales(n_down: int) -> tuple[list[float], float]:
    """A1111's soft injection for a ControlNet with ``n_down`` down residuals: (down scales, middle scale)."""
    return [SOFT ** (12 - k) for k in range(n_down)], SOFT ** (12 - n_down)


@dataclass
class Unit:
    """One enabled unit with weight > 0, resolved for the job."""

    index: int
    unit: Any  # ControlUnit
    kind: str  # controlnet | t2i_adapter | ip_adapter
    model: Any  # ControlNetModel / ControlNetUnionModel / SD3ControlNetModel / T2IAdapter / IP-Adapter state dict
    variant: str = ""
    control_map: Any = None  # the preprocessed map (PIL), before fitting to a pass
    resize_mode: str = "Crop and Resize"
    union_index: int | None = None
    encoder: Any = None  # IP-Adapter: CLIP vision encoder
    embeds: Any = None  # IP-Adapter: (negative, positive) encoder outputs, batch 1
    ip_slot: int = -1  # IP-Adapter: its position among the loaded adapters
    # img2img / inpaint units without their own image: preprocess (image, mask) -> map, run on the first pass's
    # own image and mask (already resized, cropped for "only masked", the mask inverted as asked), as A1111 does
    remap: Any = None


@dataclass
class PassUnit:
    unit: Unit
    cond: Any = None  # ControlNet: (1, C, H, W) image in [0, 1] (inpaint: -1 where masked); SD3: latents
    features: list | None = None  # T2I: adapter features x weight (x soft scales)
    enabled: bool = True  # hr_option


@dataclass
class PassState:
    pipe: Any
    stage: str
    steps: int
    batch_size: int
    units: list[PassUnit]
    step: int = 0


@dataclass
class JobControl:
    """The units of one job, the hook on its denoiser, and the pass now running."""

    job_id: str
    family: str
    units: list[Unit]
    device: Any
    dtype: Any
    current: PassState | None = None
    denoiser: Any = None
    patched: bool = False
    patch_error: str = ""
    _hooks: list = field(default_factory=list)

    # --- the patch (ModelAddition) ----------------------------------------------------------------
    def patch(self, pipeline: Any) -> Any:
        try:
            return self._patch(pipeline)
        except Exception as exc:
            self.patch_error = f"{type(exc).__name__}: {exc}"
            raise

    def _patch(self, pipeline: Any) -> Any:
        denoiser = getattr(pipeline, "unet", None) or pipeline.transformer
        self.denoiser = denoiser
        undo_ip = self._load_ip_adapters(pipeline) if any(u.kind == "ip_adapter" for u in self.units) else None
        if any(u.kind in ("controlnet", "t2i_adapter") for u in self.units):
            self._hooks.append(denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self.patched = True

        def undo() -> None:
            for handle in self._hooks:
                handle.remove()
            self._hooks.clear()
            self.current = None
            self.patched = False
            if undo_ip is not None:
                undo_ip()

        return undo

    def _load_ip_adapters(self, pipeline: Any) -> Any:
        ips = [u for u in self.units if u.kind == "ip_adapter"]
        unet = pipeline.unet
        processors = dict(unet.attn_processors)
        kept = {name: getattr(pipeline, name, None) for name in ("image_encoder", "feature_extractor")}
        dicts = [u.model for u in ips]
        for slot, u in enumerate(ips):
            u.ip_slot = slot
        if not all(_constructible(p) for p in processors.values()):
            # load_ip_adapter re-creates every self-attention processor with its class's no-argument constructor,
            # which attention slicing's processor lacks: plain attention for this job (the undo puts them back)
            from diffusers.models.attention_processor import AttnProcessor2_0

            unet.set_attn_processor(AttnProcessor2_0())
        if len(dicts) == 1:
            pipeline.load_ip_adapter(dicts[0], subfolder="", weight_name="", image_encoder_folder=None)
        else:
            n = len(dicts)
            pipeline.load_ip_adapter(dicts, subfolder=[""] * n, weight_name=[""] * n, image_encoder_folder=None)
        unet.to(unet.device, unet.dtype)
        pipeline.set_ip_adapter_scale(0.0 if len(dicts) == 1 else [0.0] * len(dicts))

        def undo() -> None:
            pipeline.unload_ip_adapter()
            unet.set_attn_processor(processors)
            for name, value in kept.items():
                if value is not None and getattr(pipeline, name, None) is None:
                    pipeline.register_modules(**{name: value})

        return undo

    # --- a pass -------------------------------------------------------------------------------------
    def begin_pass(self, event: Any) -> dict:
        """Prepare every unit for this pass (its map at the pass's size); return the call arguments to add."""
        from webui.control.preprocessors import resize_control

        pipe = event.pipeline
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if denoiser is not self.denoiser:  # the refiner: another model, no control
            self.current = None
            return {}
        hires = event.stage == "hires fix"
        units = []
        for u in self.units:
            option = getattr(u.unit, "hr_option", "Both")
            enabled = not ((hires and option == "Low res only") or (not hires and option == "High res only"))
            pu = PassUnit(u, enabled=enabled)
            if u.remap is not None and not hires and u.kind in ("controlnet", "t2i_adapter"):
                first = _first_image(event.arguments.get("image"))
                if first is not None:
                    u.control_map = u.remap(first, _first_image(event.arguments.get("mask_image")))
                    u.resize_mode = "Just Resize"
            if u.kind in ("controlnet", "t2i_adapter") and enabled:
                fitted = resize_control(u.control_map, event.width, event.height, u.resize_mode)
                pu.cond = self._cond_tensor(fitted)
                if u.kind == "t2i_adapter":
                    pu.features = self._adapter_features(u, pu.cond)
                elif u.variant == "sd3":
                    pu.cond = self._sd3_latents(pipe, pu.cond, u.model)
            units.append(pu)
        self.current = PassState(pipe, event.stage, event.steps, event.batch_size, units)
        out: dict[str, Any] = {}
        ips = [pu for pu in units if pu.unit.kind == "ip_adapter"]
        if ips:
            guidance = float(event.arguments.get("guidance_scale", getattr(event.request, "cfg_scale", 7.0)))
            cfg = guidance > 1.0
            embeds = []
            for pu in sorted(ips, key=lambda p: p.unit.ip_slot):
                negative, positive = pu.unit.embeds
                rep = [event.batch_size] + [1] * (positive.dim() - 1)
                positive, negative = positive.repeat(*rep), negative.repeat(*rep)
                embeds.append(torch_cat([negative, positive]) if cfg else positive)
            out["ip_adapter_image_embeds"] = embeds
            self._set_ip_scales(0)
        return out

    def after_step(self, step_index: int) -> None:
        state = self.current
        if state is None:
            return
        state.step = step_index + 1
        if any(pu.unit.kind == "ip_adapter" for pu in state.units):
            self._set_ip_scales(state.step)

    def _total(self, state: PassState) -> int:
        return int(getattr(state.pipe, "_num_timesteps", 0) or state.steps)

    def _active(self, pu: PassUnit, state: PassState) -> bool:
        u = pu.unit.unit
        return pu.enabled and keep(u.guidance_start, u.guidance_end, state.step, self._total(state))

    def _set_ip_scales(self, step: int) -> None:
        state = self.current
        ips = sorted((pu for pu in state.units if pu.unit.kind == "ip_adapter"), key=lambda p: p.unit.ip_slot)
        scales = [float(pu.unit.unit.weight) if self._active(pu, state) else 0.0 for pu in ips]
        state.pipe.set_ip_adapter_scale(scales[0] if len(scales) == 1 else scales)

    # --- tensors -------------------------------------------------------------------------------------
    def _cond_tensor(self, image: Any) -> Any:
        """(1, 3, H, W) in [0, 1]; an inpaint map (RGBA) has -1 where alpha says "repaint"."""
        import numpy as np
        import torch

        arr = np.asarray(image.convert("RGBA") if image.mode == "RGBA" else image.convert("RGB"), dtype=np.float32)
        rgb = arr[..., :3] / 255.0
        if arr.shape[-1] == 4:
            rgb = np.where(arr[..., 3:4] < 128, -1.0, rgb)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        return tensor.to(self.device, self.dtype)

    def _adapter_features(self, u: Unit, cond: Any) -> list:
        import torch

        weight = float(u.unit.weight)
        with torch.no_grad():
            feats = list(u.model(cond.clamp(min=0.0)))
        if u.unit.control_mode != "Balanced":
            soft = list(T2I_SOFT[-len(feats) :]) if len(feats) <= len(T2I_SOFT) else [1.0] * len(feats)
            return [f * (weight * s) for f, s in zip(feats, soft, strict=True)]
        return [f * weight for f in feats]

    def _sd3_latents(self, pipe: Any, cond: Any, model: Any) -> Any:
        """The control image VAE-encoded as the SD3 ControlNet pipeline does (its mode: no global RNG)."""
        import torch

        vae = pipe.vae
        shift = 0.0 if model.config.force_zeros_for_pooled_projection else (vae.config.shift_factor or 0.0)
        with torch.no_grad():
            latents = vae.encode((cond * 2.0 - 1.0).to(vae.dtype)).latent_dist.mode()
        return ((latents - shift) * vae.config.scaling_factor).to(self.dtype)

    # --- the hook -------------------------------------------------------------------------------------
    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> Any:
        state = self.current
        if state is None:
            return None
        active = [
            pu for pu in state.units if pu.unit.kind != "ip_adapter" and pu.cond is not None and self._active(pu, state)
        ]
        if not active:
            return None
        import torch

        with torch.no_grad():
            if hasattr(module, "transformer_blocks") and not hasattr(module, "down_blocks"):
                return self._sd3(module, args, kwargs, active, state)
            return self._unet(module, args, kwargs, active, state)

    def _uncond_half(self, batch: int, state: PassState) -> int:
        """How many leading rows of the denoiser batch are the unconditional half (0 without CFG)."""
        return batch // 2 if batch == 2 * state.batch_size else 0

    def _unet(self, module: Any, args: tuple, kwargs: dict, active: list, state: PassState) -> Any:
        import torch

        args = list(args)
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        ehs = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        added = kwargs.get("added_cond_kwargs") or {}
        added = {k: v for k, v in added.items() if k in ("text_embeds", "time_ids")} or None
        batch = sample.shape[0]
        uncond = self._uncond_half(batch, state)
        down_sum, mid_sum, intra = None, None, None
        for pu in active:
            u, unit = pu.unit, pu.unit.unit
            cfg_injection = unit.control_mode == "ControlNet is more important" and uncond
            if u.kind == "t2i_adapter":
                feats = [f.repeat(batch // f.shape[0], 1, 1, 1) for f in pu.features]
                if cfg_injection:
                    feats = [torch.cat([torch.zeros_like(f[:uncond]), f[uncond:]]) for f in feats]
                intra = feats if intra is None else [a + b for a, b in zip(intra, feats, strict=True)]
                continue
            model = u.model
            cond = pu.cond.repeat(batch // pu.cond.shape[0], 1, 1, 1)
            extra: dict[str, Any] = {}
            if kwargs.get("timestep_cond") is not None:
                extra["timestep_cond"] = kwargs["timestep_cond"]
            x = sample[:, : model.config.in_channels]
            if u.variant == "union":
                onehot = torch.zeros(batch, model.config.num_control_type, device=x.device, dtype=x.dtype)
                onehot[:, u.union_index] = 1
                down, mid = model(
                    x,
                    timestep,
                    encoder_hidden_states=ehs,
                    controlnet_cond=[cond],
                    control_type=onehot,
                    control_type_idx=[u.union_index],
                    conditioning_scale=float(unit.weight),
                    added_cond_kwargs=added,
                    return_dict=False,
                    **extra,
                )
            else:
                down, mid = model(
                    x,
                    timestep,
                    encoder_hidden_states=ehs,
                    controlnet_cond=cond,
                    conditioning_scale=float(unit.weight),
                    added_cond_kwargs=added,
                    return_dict=False,
                    **extra,
                )
            down = list(down)
            if unit.control_mode != "Balanced":
                scales, mid_scale = soft_scales(len(down))
                down = [d * s for d, s in zip(down, scales, strict=True)]
                mid = mid * mid_scale
            if cfg_injection:
                down = [torch.cat([torch.zeros_like(d[:uncond]), d[uncond:]]) for d in down]
                mid = torch.cat([torch.zeros_like(mid[:uncond]), mid[uncond:]])
            down_sum = down if down_sum is None else [a + b for a, b in zip(down_sum, down, strict=True)]
            mid_sum = mid if mid_sum is None else mid_sum + mid
        if down_sum is not None:
            before = kwargs.get("down_block_additional_residuals")
            if before is not None:
                down_sum = [a + b for a, b in zip(before, down_sum, strict=True)]
                mid_sum = kwargs["mid_block_additional_residual"] + mid_sum
            kwargs["down_block_additional_residuals"] = down_sum
            kwargs["mid_block_additional_residual"] = mid_sum
        if intra is not None:
            before = kwargs.get("down_intrablock_additional_residuals")
            if before is not None:
                intra = [a + b for a, b in zip(before, intra, strict=True)]
            kwargs["down_intrablock_additional_residuals"] = intra
        return tuple(args), kwargs

    def _sd3(self, module: Any, args: tuple, kwargs: dict, active: list, state: PassState) -> Any:
        import torch

        hidden = args[0] if args else kwargs["hidden_states"]
        timestep = kwargs.get("timestep")
        ehs = kwargs.get("encoder_hidden_states")
        pooled = kwargs.get("pooled_projections")
        n_blocks = len(module.transformer_blocks)
        batch = hidden.shape[0]
        uncond = self._uncond_half(batch, state)
        total = None
        for pu in active:
            model, unit = pu.unit.model, pu.unit.unit
            config = model.config
            cond = pu.cond.repeat(batch // pu.cond.shape[0], 1, 1, 1)
            samples = model(
                hidden_states=hidden,
                timestep=timestep,
                encoder_hidden_states=ehs if config.joint_attention_dim is not None else None,
                pooled_projections=torch.zeros_like(pooled) if config.force_zeros_for_pooled_projection else pooled,
                joint_attention_kwargs=kwargs.get("joint_attention_kwargs"),
                controlnet_cond=cond,
                conditioning_scale=float(unit.weight),
                return_dict=False,
            )[0]
            samples = list(samples)
            interval = n_blocks / len(samples)
            expanded = [samples[int(j / interval)] for j in range(n_blocks)]
            if unit.control_mode == "ControlNet is more important" and uncond:
                expanded = [torch.cat([torch.zeros_like(s[:uncond]), s[uncond:]]) for s in expanded]
            total = expanded if total is None else [a + b for a, b in zip(total, expanded, strict=True)]
        before = kwargs.get("block_controlnet_hidden_states")
        if before is not None:
            interval = n_blocks / len(before)
            total = [a + before[int(j / interval)] for j, a in enumerate(total)]
        kwargs["block_controlnet_hidden_states"] = total
        return args, kwargs


def _first_image(value: Any) -> Any:
    """The first PIL image of a pipeline image argument (a list of them, or one), else None (latents, tensors)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if hasattr(value, "mode") and hasattr(value, "size") else None


def _constructible(processor: Any) -> bool:
    try:
        type(processor)()
    except TypeError:
        return False
    return True


def torch_cat(tensors: list) -> Any:
    import torch

    return torch.cat(tensors)


# --- IP-Adapter image encoding ---------------------------------------------------------------------


def ip_wants_hidden_states(state_dict: Any) -> bool:
    """Plain IP-Adapters take the encoder's image embeds; Plus / full-face take its penultimate hidden states."""
    proj = state_dict["image_proj"]
    return not ("proj.weight" in proj and "norm.weight" in proj)


def ip_encoder_fits(state_dict: Any, encoder: Any) -> bool:
    proj = state_dict["image_proj"]
    config = encoder.config
    if not ip_wants_hidden_states(state_dict):
        return int(proj["proj.weight"].shape[1]) == int(getattr(config, "projection_dim", -1))
    for key in ("proj_in.weight", "proj.0.weight"):
        if key in proj:
            return int(proj[key].shape[1]) == int(config.hidden_size)
    return True


def clip_pixels(image: Any, size: int, device: Any, dtype: Any) -> Any:
    """CLIP's preprocessing: shortest side to ``size`` (bicubic), centre crop, CLIP mean/std."""
    import numpy as np
    import torch
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    k = size / min(w, h)
    nw, nh = max(size, round(w * k)), max(size, round(h * k))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None].to(device, dtype)


def encode_ip_image(image: Any, encoder: Any, hidden_states: bool) -> tuple[Any, Any]:
    """(negative, positive) embeddings of batch 1, in the shapes ``ip_adapter_image_embeds`` takes."""
    import torch

    size = int(getattr(encoder.config, "image_size", 224))
    param = next(encoder.parameters())
    pixels = clip_pixels(image, size, param.device, param.dtype)
    with torch.no_grad():
        if hidden_states:
            positive = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            negative = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            positive = encoder(pixels).image_embeds
            negative = torch.zeros_like(positive)
    return negative[None], positive[None]  # (1, 1, ...): one image for the adapter
