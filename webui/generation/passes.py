"""One denoising pass on a diffusers pipeline: txt2img, img2img, inpaint, refiner hand-off, hires upscale.

The engine decides what runs; this module only knows how to call diffusers for it. Progress,
previews, interrupt and skip go through ``callback_on_step_end``: the callback raises to stop,
and the offload hooks are reset. A pass given a ``latest.Latest`` keeps its newest estimate of
the finished image, which the engine decodes when the job was interrupted (as A1111 does).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webui.generation.latest import Latest
from webui.models.families import FamilySpec

# hires "Latent ..." upscalers -> (torch interpolate mode, antialias)
LATENT_UPSCALE_MODES: Mapping[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


@dataclass
class PassInputs:
    """What every pass needs: the pipeline, its sampler, the encoded prompts and the numbers."""

    pipe: Any
    family: FamilySpec
    scheduler: Any
    call_kwargs: Mapping[str, Any]
    cond: Mapping[str, Any]
    steps: int
    cfg_scale: float
    width: int
    height: int
    # (1-based step of this pass, timestep, latents) -> replacement latents or None; may raise to stop
    on_step: Callable[[int, Any, Any], Any]
    sdxl_conditioning: Mapping[str, Any] = field(default_factory=dict)
    latest: Latest | None = None  # records the pass's newest estimate (decoded after an interrupt)
    # (pipeline, the call's arguments) -> (arguments to add, step callbacks): the extensions' part of the
    # pass (webui.generation.stages.denoise); None: no extension takes part
    extend: Callable[[Any, Mapping[str, Any]], tuple[Mapping[str, Any], Sequence[Any]]] | None = None
    # the app's own step callbacks (diffusers' callback protocol, with ``tensor_inputs``), run before the
    # extensions' ones: prompt editing's switch of the embeddings (webui.generation.prompt_steps)
    step_callbacks: Sequence[Any] = ()


def denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or pipe.transformer


def _callback(
    on_step: Callable[[int, Any, Any], Any], latest: Latest | None, extra: Sequence[Any] = ()
) -> Callable[..., dict]:
    """``callback_on_step_end``: the extensions' step callbacks first, then the latest estimate and on_step."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        changed: dict[str, Any] = {}
        for fn in extra:  # diffusers' PipelineCallback protocol: the tensors they return replace the named ones
            out = fn(pipe, step, timestep, {**kwargs, **changed})
            if out:
                changed.update((k, v) for k, v in out.items() if k in kwargs)
        latents = changed.get("latents", kwargs.get("latents"))
        if latest is not None:
            latest.latents = latents
        replaced = on_step(step + 1, timestep, latents)
        if replaced is not None:
            changed["latents"] = replaced
        return changed

    return callback


def _legacy_callback(on_step: Callable[[int, Any, Any], Any], latest: Latest | None, extra: Sequence[Any] = ()):
    """The older ``callback(step, timestep, latents)`` (StableDiffusionAdapterPipeline): changes are made in place."""
    modern = _callback(on_step, latest, extra)
    holder: dict[str, Any] = {}

    def callback(step: int, timestep: Any, latents: Any) -> None:
        changed = modern(holder.get("pipe"), step, timestep, {"latents": latents})
        if changed.get("latents") is not None and changed["latents"] is not latents:
            latents.copy_(changed["latents"])

    return callback, holder


def _tensor_inputs(extra: Sequence[Any]) -> list[str]:
    names = ["latents"]
    for fn in extra:
        names.extend(n for n in getattr(fn, "tensor_inputs", ()) if n not in names)
    return names


def _accepts(pipe: Any, name: str) -> bool:
    return name in inspect.signature(type(pipe).__call__).parameters


def accepts(pipe: Any, name: str) -> bool:
    """Whether the pipeline's call takes an argument ``name`` (extensions' arguments are checked with it)."""
    return _accepts(pipe, name)


def _call(inputs: PassInputs, **kwargs: Any) -> Any:
    pipe = inputs.pipe
    pipe.scheduler = inputs.scheduler
    pipe.set_progress_bar_config(disable=True)
    args = dict(inputs.cond)
    args.update(
        num_inference_steps=inputs.steps,
        guidance_scale=inputs.cfg_scale,
    )
    args.update(inputs.call_kwargs)
    if inputs.family.takes_size_conditioning:  # SDXL base and refiner
        args.update(inputs.sdxl_conditioning)
    args.update(kwargs)
    decode = args.get("output_type", "pil") == "pil"
    if decode:
        args["output_type"] = "latent"  # we decode ourselves, with the NaN guard
    extra: Sequence[Any] = ()
    if inputs.extend is not None:
        added, extra = inputs.extend(pipe, args)
        args.update((k, v) for k, v in added.items() if k not in args)
    extra = [*inputs.step_callbacks, *extra]
    if _accepts(pipe, "callback_on_step_end"):
        args["callback_on_step_end"] = _callback(inputs.on_step, inputs.latest, extra)
        args["callback_on_step_end_tensor_inputs"] = _tensor_inputs(extra)
    else:
        args["callback"], holder = _legacy_callback(inputs.on_step, inputs.latest, extra)
        args["callback_steps"] = 1
        holder["pipe"] = pipe
    stop_watching = inputs.latest.watch(pipe, inputs.scheduler) if inputs.latest is not None else None
    try:
        images = pipe(**args).images
        return decode_guarded(pipe, images) if decode else images
    except BaseException:
        # The callback raised (interrupt, skip) or the pipeline failed: reset offload hooks so the next job starts clean.
        pipe.maybe_free_model_hooks()
        raise
    finally:
        if stop_watching is not None:
            stop_watching()


def steps_run(steps: int, strength: float) -> int:
    """How many steps an img2img pass with this strength really runs (diffusers: int(steps * strength))."""
    return min(int(steps * strength), steps)


def steps_for_strength(steps: int, strength: float) -> int:
    """num_inference_steps that makes at least one step run at a low strength."""
    if steps_run(steps, strength) >= 1:
        return steps
    return math.ceil(1.0 / strength)


def txt2img(
    inputs: PassInputs,
    noise: Any,
    generators: list[Any],
    output_type: str = "pil",
    denoising_end: float | None = None,
) -> Any:
    extra: dict[str, Any] = {}
    if denoising_end is not None:
        extra["denoising_end"] = denoising_end
    return _call(
        inputs,
        height=inputs.height,
        width=inputs.width,
        latents=noise,
        generator=generators,
        output_type=output_type,
        **extra,
    )


def img2img(
    inputs: PassInputs,
    image: Any,
    strength: float,
    generators: list[Any],
    output_type: str = "pil",
    denoising_start: float | None = None,
) -> Any:
    """image: PIL images (already at the target size) or latents in the loop's scaled space."""
    extra: dict[str, Any] = {}
    if denoising_start is not None:
        extra["denoising_start"] = denoising_start
    if _accepts(inputs.pipe, "height"):  # SD3 img2img resizes to these (default 1024) instead of the image's size
        extra.update(height=inputs.height, width=inputs.width)
    return _call(inputs, image=image, strength=strength, generator=generators, output_type=output_type, **extra)


def inpaint(
    inputs: PassInputs,
    image: Any,
    mask: Any,
    strength: float,
    generators: list[Any],
    masked_image_latents: Any = None,
    output_type: str = "pil",
) -> Any:
    extra: dict[str, Any] = {}
    if masked_image_latents is not None:
        extra["masked_image_latents"] = masked_image_latents
    return _call(
        inputs,
        image=image,
        mask_image=mask,
        strength=strength,
        generator=generators,
        height=inputs.height,
        width=inputs.width,
        output_type=output_type,
        **extra,
    )


def decode_guarded(pipe: Any, latents: Any) -> list[Any]:
    """Latents to PIL images as the pipeline would decode them; an fp16 VAE overflow is retried in fp32.

    A black (NaN) image is never returned: NaN latents or a VAE that fails even in fp32 fail the job
    with a message.
    """
    from webui.generation.service import JobFailed
    from webui.speed.vae_guard import NonFiniteLatentsError, VaeDecodeError, decode_latents

    try:
        return decode_latents(pipe, latents)
    except NonFiniteLatentsError:
        raise JobFailed(nan_message(pipe)) from None
    except VaeDecodeError as exc:
        raise JobFailed(f"The VAE could not decode this image even in fp32 ({exc}); pick another VAE.") from None


def nan_message(pipe: Any) -> str:
    """What to try when the sampler gave NaN: precision only when the model does not already run in fp32."""
    import torch

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    dtype = getattr(denoiser, "dtype", None)
    said = "The sampler produced NaN values (a numeric overflow in the model), so there is no image to save. "
    if dtype is None or dtype == torch.float32:
        return said + (
            "The model already runs in fp32, so the precision is not the cause: lower the prompt's attention"
            " or LoRA weights, the CFG scale, or try another sampler."
        )
    return said + (
        f"The model runs in {str(dtype).removeprefix('torch.')}: try fp32 or bf16 precision (--precision),"
        " lower prompt or LoRA weights, another sampler, or a lower CFG scale."
    )


def upscale_latents(latents: Any, width: int, height: int, upscaler: str) -> Any:
    import torch.nn.functional as F

    mode, antialias = LATENT_UPSCALE_MODES[upscaler]
    size = (height // 8, width // 8)
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(latents, size=size, mode=mode)
    return F.interpolate(latents, size=size, mode=mode, antialias=antialias)


def encode_images(pipe: Any, images: list[Any], generators: list[Any]) -> Any:
    """PIL images to latents in the loop's scaled space (sampled from the VAE's distribution per seed)."""
    import torch

    vae = pipe.vae
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    pixels = pipe.image_processor.preprocess(images).to(device=vae.device, dtype=vae.dtype)
    with torch.inference_mode():
        # One encode per image so that each image's sample comes from its own seed's generator.
        latents = torch.cat([vae.encode(pixels[i : i + 1]).latent_dist.sample(gen) for i, gen in enumerate(generators)])
    return (latents - shift) * scale
