"""Inpaint as A1111 does it: mask blur, masked content, whole picture or only the masked area.

"Only masked" crops the masked region (grown by the padding, widened to the output's aspect),
renders it at the full processing size and pastes it back through the blurred mask, so small
details get the model's whole resolution. Either way unmasked pixels stay exactly the original.
Works with 9-channel inpainting checkpoints and with normal ones (diffusers blends latents).
"""

from __future__ import annotations

from typing import Any

from webui.generation import passes
from webui.generation.requests import RequestError
from webui.generation.service import JobContext

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)


def _work_area(req: Any, width: int, height: int) -> tuple[Any, Any, Any, Any, tuple[int, int, int, int] | None]:
    """(model image, model mask, paste-back base, paste-back mask, crop box or None)."""
    from PIL import Image

    from webui.generation.img_ops import crop_region, expand_to_aspect, prepare_mask, resize_image

    image = req.init_image.convert("RGB")
    invert = bool(req.inpainting_mask_invert)
    sharp = prepare_mask(req.mask, invert=invert, blur=0)
    soft = prepare_mask(req.mask, invert=invert, blur=req.mask_blur)
    if sharp.getbbox() is None:
        raise RequestError("mask", "the mask is empty; paint (white) the area to repaint")
    if req.inpaint_full_res:
        box = crop_region(sharp, req.inpaint_full_res_padding)
        box = expand_to_aspect(box, width, height, image.size)
        work = image.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        mask = soft.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        return work, mask, image, soft, box
    work = resize_image(image, width, height, req.resize_mode)
    mask = resize_image(soft.convert("RGB"), width, height, req.resize_mode).convert("L")
    return work, mask, work, mask, None


def run(engine: Any, job: Any, batch: list[tuple[int, int]], ctx: JobContext) -> list[Any]:
    from webui.generation.img_ops import fill_masked, latent_masked_content, mask_to_latent, paste_back

    req = job.req
    n = len(batch)
    work, mask, base, base_mask, box = _work_area(req, job.width, job.height)
    if req.inpainting_fill == FILL:
        work = fill_masked(work, mask)
    steps = passes.steps_for_strength(job.steps, req.denoising_strength)
    inputs = engine._pass(job, "inpaint", ctx, n=n, steps=steps, seed=batch[0][0])
    generators = engine._generators(job, batch)
    image: Any = [work] * n
    masked_latents = None
    if req.inpainting_fill in (LATENT_NOISE, LATENT_NOTHING):
        import torch

        latents = passes.encode_images(inputs.pipe, image, generators)
        latent_mask = mask_to_latent(mask, job.width // 8, job.height // 8).to(latents.device, latents.dtype)
        noise = engine._noise(job, batch, job.width, job.height, inputs.pipe)[0].to(latents.dtype)
        image = latent_masked_content(latents, latent_mask, req.inpainting_fill, noise)
        keep = torch.where(latent_mask >= 0.5, torch.zeros_like(latents), latents)
        masked_latents = _masked_image_latents(inputs, keep)
        generators = engine._generators(job, batch)  # encoding used them; restart for the pass
    run_steps = passes.steps_run(steps, req.denoising_strength)
    ctx.begin_pass(run_steps, "inpaint")
    job.latest.finish = lambda images: [paste_back(base, generated, base_mask, box) for generated in images]
    images = passes.inpaint(
        inputs, image, mask, req.denoising_strength, generators, masked_image_latents=masked_latents
    )
    ctx.finish_pass(run_steps)
    return job.latest.finish(images)


def _masked_image_latents(inputs: passes.PassInputs, latents: Any) -> Any:
    """The masked-image latents the pipeline wants when the image is given as latents.

    SD3's pipeline scales what it is given once more, so hand it unscaled latents.
    """
    vae = inputs.pipe.vae
    if inputs.family.is_flow:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return latents / vae.config.scaling_factor + shift
    return latents
