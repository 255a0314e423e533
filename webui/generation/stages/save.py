"""Stage "save": extension image hooks, infotext, atomic saving, the job's result, and A1111's info summary.

``Save`` ends every batch (after the stages that make its images); ``keep_interrupted`` adds the
interrupted batch's latest estimate, unsaved; ``info`` is the job's A1111 ``Processed.js()`` summary.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from webui.generation.requests import GenerationRequest
from webui.generation.service import JobFailed, JobResult

log = logging.getLogger(__name__)


class Save:
    name = "save"

    def __call__(self, job: Any, batch: Any, images: list[Any], result: JobResult, save: bool = True) -> None:
        collect(job, batch.seeds, images, result, batch.first_index, save=save)

    def keep_interrupted(self, job: Any, batch: Any, result: JobResult, ctx: Any) -> None:
        keep_interrupted(job, batch.seeds, result, batch.first_index, ctx)

    @staticmethod
    def info(job: Any, seeds: list[int], infotexts: list[str]) -> dict[str, Any]:
        return info(job, seeds, infotexts, inpainting=job.req.task == "inpaint" and job.model.inpainting)


def collect(
    job: Any,
    batch: list[tuple[int, int]],
    images: list[Any],
    result: JobResult,
    first_index: int,
    save: bool = True,
) -> None:
    """Run the image hooks, write each image with its infotext (unless not ``save``), append it to the result."""
    req = job.req
    hooks, writer = job.parts.hooks, job.parts.writer
    for k, (image, (seed, subseed)) in enumerate(zip(images, batch)):
        index = first_index + k
        image = _image_hook(hooks, job, image, index, seed)
        text = infotext(job, req, seed, subseed)
        extra = _save_fields(hooks, job, image, text, index, seed)
        if extra:
            text = infotext(job, req, seed, subseed, extra)
        path = ""
        if req.save_images and save:
            path = str(
                writer.save(
                    image,
                    category=req.task,
                    infotext=text,
                    seed=seed,
                    fmt=req.output_format,
                    tokens={
                        "model_name": job.model_name,
                        "sampler": job.sampler,
                        "steps": job.steps,
                        "cfg": job.cfg,
                        "width": image.width,
                        "height": image.height,
                        "prompt": req.prompt,
                    },
                )
            )
            _after_save(hooks, job, image, text, index, seed, path)
        result.images.append(image)
        result.infotexts.append(text)
        result.seeds.append(seed)
        result.subseeds.append(subseed)
        result.paths.append(path)


def keep_interrupted(job: Any, batch: list[tuple[int, int]], result: JobResult, first: int, ctx: Any) -> None:
    """The interrupted batch's latest estimate, decoded and added to the result unsaved (A1111's default).

    Nothing is added when the batch had not run a step yet (interrupted between batches, as A1111).
    """
    try:
        images = job.latest.images()
    except JobFailed as exc:  # e.g. NaN latents: the finished images are still returned
        log.warning("the interrupted batch gave no image: %s", exc)
        return
    if images:
        collect(job, batch[: len(images)], images, result, first, save=False)
        ctx.image_done(len(images))
        ctx.partial(result)


def infotext(job: Any, req: GenerationRequest, seed: int, subseed: int, extra: dict | None = None) -> str:
    from webui.generation.infotext_map import infotext_for

    if extra:
        req = req.replace(extra_generation_params={**req.extra_generation_params, **extra})
    req = _hires_as_run(job, req)
    req = _wildcards_chosen(job, req, seed)
    return infotext_for(
        req,
        req.prompt,
        req.negative_prompt,
        seed=seed,
        subseed=subseed,
        width=job.width,
        height=job.height,
        sampler_name=job.sampler,
        schedule=job.schedule,
        steps=job.steps,
        cfg_scale=job.cfg,
        model_name=job.model_name,
        model_hash=job.model_hash,
        vae_name=job.vae_name,
        lora_hashes=job.lora_hashes,
        ti_hashes=getattr(job, "ti_hashes", None),
    )


def _wildcards_chosen(job: Any, req: GenerationRequest, seed: int) -> GenerationRequest:
    """The request with the wildcards this image's seed chose (its prompt editing kept as written)."""
    if getattr(getattr(job, "parts", None), "wildcards", None) is None:
        return req
    from webui.generation.prompt_steps import resolved_prompt

    fields = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
    chosen = {name: resolved_prompt(job, getattr(req, name), seed, name) for name in fields}
    changed = {name: text for name, text in chosen.items() if text != getattr(req, name)}
    return req.replace(**changed) if changed else req


def _hires_as_run(job: Any, req: GenerationRequest) -> GenerationRequest:
    """The request with the hires sampler and schedule type that ran (a fallback changes them)."""
    sampler, schedule = getattr(job, "hr_sampler", ""), getattr(job, "hr_schedule", "")
    if not req.enable_hr or not (req.hr_sampler_name or req.hr_scheduler) or not sampler:
        return req
    same = sampler == job.sampler and not req.hr_sampler_name
    return req.replace(hr_sampler_name="" if same else sampler, hr_scheduler=schedule)


def _image_hook(hooks: Any, job: Any, image: Any, index: int, seed: int) -> Any:
    if hooks is None:
        return image
    from webui.hooks import ImageEvent

    return hooks.image(ImageEvent(image, index, seed, job.req, job.job_id))


def _save_fields(hooks: Any, job: Any, image: Any, text: str, index: int, seed: int) -> dict[str, str]:
    """Infotext fields extensions add (``webui_before_save``); they never replace a core field."""
    if hooks is None:
        return {}
    from webui.hooks import SaveEvent

    fields = hooks.before_save(SaveEvent(image, text, index, seed, job.req, job.job_id))
    core = text.rsplit("\n", 1)[-1]
    return {k: v for k, v in fields.items() if f"{k}: " not in core}


def _after_save(hooks: Any, job: Any, image: Any, text: str, index: int, seed: int, path: str) -> None:
    if hooks is None:
        return
    from webui.hooks import SaveEvent

    hooks.after_save(SaveEvent(image, text, index, seed, job.req, job.job_id, path=path))


def info(job: Any, seeds: list[int], infotexts: list[str], inpainting: bool = False) -> dict[str, Any]:
    """A1111's ``Processed.js()`` summary of a job, for the API's ``info``."""
    req = job.req
    first_seed, first_sub = job.seeds[0]
    n = len(seeds) or req.total_images
    chosen = [_wildcards_chosen(job, req, seed) for seed in seeds] or [req] * n  # each image's wildcards
    return {
        "prompt": req.prompt,
        "all_prompts": [r.prompt for r in chosen],
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [r.negative_prompt for r in chosen],
        "seed": first_seed,
        "all_seeds": list(seeds) or [s for s, _ in job.seeds],
        "subseed": first_sub,
        "all_subseeds": [sub for _, sub in job.seeds][:n],
        "subseed_strength": req.subseed_strength,
        "width": job.width,
        "height": job.height,
        "sampler_name": job.sampler,
        "scheduler": job.schedule,
        "cfg_scale": job.cfg,
        "steps": job.steps,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": job.model_name,
        "sd_model_hash": job.model_hash or None,
        "sd_vae_name": job.vae_name or None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": req.denoising_strength if (req.task != "txt2img" or req.enable_hr) else None,
        "extra_generation_params": dict(req.extra_generation_params),
        "index_of_first_image": 0,
        "infotexts": list(infotexts),
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": req.clip_skip,
        "is_using_inpainting_conditioning": inpainting,
        "family": job.family.id,
        "version": "",
        **({"warnings": list(job.warnings)} if getattr(job, "warnings", None) else {}),
    }
