"""Inpaint as A1111 does it: its work area and masked content, and stage "inpaint paste-back".

"Only masked" crops the masked region (grown by the padding, widened to the output's aspect),
renders it at the full processing size and pastes it back through the blurred mask, so small
details get the model's whole resolution. Either way unmasked pixels stay exactly the original.
Works with 9-channel inpainting checkpoints and with normal ones (diffusers blends latents).
An empty mask never gets here: ``check_request`` refuses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webui.generation import passes

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job
    from webui.generation.service import JobContext

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)


def work_area(req: Any, width: int, height: int) -> tuple[Any, Any, Any, Any, tuple[int, int, int, int] | None]:
    """(model image, model mask, paste-back base, paste-back mask, crop box or None)."""
    from PIL import Image

    from webui.generation.img_ops import crop_region, expand_to_aspect, prepare_mask, resize_image

    image = req.init_image.convert("RGB")
    invert = bool(req.inpainting_mask_invert)
    sharp = prepare_mask(req.mask, invert=invert, blur=0)
    soft = prepare_mask(req.mask, invert=invert, blur=req.mask_blur)
    if req.inpaint_full_res:
        box = crop_region(sharp, req.inpaint_full_res_padding)
        box = expand_to_aspect(box, width, height, image.size)
        work = image.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        mask = soft.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        return work, mask, image, soft, box
    work = resize_image(image, width, height, req.resize_mode)
    mask = resize_image(soft.convert("RGB"), width, height, req.resize_mode).convert("L")
    return work, mask, work, mask, None


def prepare(job: Job, batch: Batch) -> None:
    """The first pass's image, mask (and masked latents for latent noise / nothing) and generators."""
    from webui.generation.img_ops import fill_masked, latent_masked_content, mask_to_latent, paste_back
    from webui.generation.stages.latents import generators_for, noise_for

    req = job.req
    work, mask, base, base_mask, box = work_area(req, job.width, job.height)
    if req.inpainting_fill == FILL:
        work = fill_masked(work, mask)
    generators = generators_for(job, batch.seeds)
    image: Any = [work] * len(batch.seeds)
    if req.inpainting_fill in (LATENT_NOISE, LATENT_NOTHING):
        import torch

        latents = passes.encode_images(batch.pipe, image, generators)
        latent_mask = mask_to_latent(mask, job.width // 8, job.height // 8).to(latents.device, latents.dtype)
        noise = noise_for(job, batch.seeds, job.width, job.height, batch.pipe)[0].to(latents.dtype)
        image = latent_masked_content(latents, latent_mask, req.inpainting_fill, noise)
        keep = torch.where(latent_mask >= 0.5, torch.zeros_like(latents), latents)
        batch.masked_latents = _masked_image_latents(batch.pipe, job.family, keep)
        generators = generators_for(job, batch.seeds)  # encoding used them; restart for the pass
    batch.image, batch.mask, batch.generators = image, mask, generators
    batch.paste = lambda images: [paste_back(base, generated, base_mask, box) for generated in images]


def _masked_image_latents(pipe: Any, family: Any, latents: Any) -> Any:
    """The masked-image latents the pipeline wants when the image is given as latents.

    SD3's pipeline scales what it is given once more, so hand it unscaled latents.
    """
    vae = pipe.vae
    if family.is_flow:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return latents / vae.config.scaling_factor + shift
    return latents


class PasteBack:
    """The generated area pasted into the original through the blurred mask (an interrupted estimate too)."""

    name = "inpaint paste-back"

    def finish(self, batch: Batch, images: list[Any]) -> list[Any]:
        return batch.paste(images) if batch.paste is not None else images

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        batch.images = self.finish(batch, batch.images)
