"""Stage "encode prompt": the prompt embeddings of a pass, from the prompt cache when this model state made them.

``encode_pass`` is what every pass calls (the first pass here, the refiner and hires fix in their
own stages); it goes through ``conditioning.encode_prompts``, the families' entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webui.generation import passes

if TYPE_CHECKING:
    from webui.generation.plan import Batch, Job, PassSpec
    from webui.generation.service import JobContext


def first_pass(job: Job, batch: Batch) -> PassSpec:
    """The first pass of the job's task: all steps for txt2img, enough for the strength for img2img / inpaint."""
    from webui.generation.plan import PassSpec

    req = job.req
    steps = job.steps if req.task == "txt2img" else passes.steps_for_strength(job.steps, req.denoising_strength)
    return PassSpec(
        req.task,
        req.task,
        n=len(batch.seeds),
        seed=batch.seeds[0][0],
        steps=steps,
        seeds=tuple(s for s, _ in batch.seeds),
    )


def encode_pass(job: Job, spec: PassSpec, pipe: Any, family: Any) -> dict[str, Any]:
    """The embeddings of ``spec``'s prompts (the job's unless the pass has its own) for ``pipe``.

    Wildcards are chosen per image (``spec.seeds``); with prompt editing or alternation the result is a
    ``prompt_steps.SteppedCond`` (the first step's embeddings and those later steps switch to).
    """
    from webui.generation.prompt_steps import pass_prompts, stepped_cond

    checked = job.checked
    prompt = checked.prompt if spec.prompt is None else spec.prompt
    negative = checked.negative if spec.negative is None else spec.negative
    fields = (
        "prompt" if spec.prompt is None else "hr_prompt",
        "negative_prompt" if spec.negative is None else "hr_negative_prompt",
    )
    seeds = spec.seeds or (spec.seed,) * spec.n
    pos, neg = pass_prompts(job, prompt, negative, seeds, fields)

    def encode(rows: list[str], negatives: list[str]) -> dict[str, Any]:
        return _encode_rows(job, spec, pipe, family, rows, negatives)

    return stepped_cond(pos, neg, spec.steps or job.steps, encode, offset=spec.step_offset)


def _encode_rows(job: Job, spec: PassSpec, pipe: Any, family: Any, pos: list[str], neg: list[str]) -> dict[str, Any]:
    """One encoding of these rows (one prompt per image), from the prompt cache when this model state made it."""
    from webui.generation.conditioning import encode_prompts

    req, checked = job.req, job.checked
    from webui.generation.embedding_use import cache_state, pass_embeddings

    applied = pass_embeddings(job, pipe, family, [*pos, *neg])

    def encode() -> dict[str, Any]:
        return encode_prompts(pipe, family, pos, neg, clip_skip=req.clip_skip, use_t5=req.use_t5, embeddings=applied)

    cache = job.parts.prompt_cache
    if cache is None:
        return encode()
    from webui.speed.prompt_cache import PromptKey

    entry = job.model.entry
    state = (
        (str(entry.path), entry.mtime_ns) if entry is not None else None,
        req.refiner_checkpoint if spec.model is not None else "",
        tuple((tag.name, float(tag.weight)) for tag, _ in checked.loras),  # text-encoder LoRAs change the embeddings
        cache_state(applied),  # the textual-inversion embeddings used, each file's version
    )
    prompt, negative = _row_key(pos), _row_key(neg)
    key = PromptKey.of(pipe, state, prompt, negative, clip_skip=req.clip_skip, use_t5=req.use_t5, batch=len(pos))
    return cache.get_or_encode(pipe, key, encode)


def _row_key(rows: list[str]) -> str:
    """The cache's text for these rows: the text when every image has the same, else all of them."""
    if all(row == rows[0] for row in rows):
        return rows[0]
    return "\x00rows\x00" + "\x00".join(rows)


class EncodePrompt:
    """The first pass's pipeline (an extension's class where one applies) and its prompt embeddings."""

    name = "encode prompt"

    def __call__(self, job: Job, batch: Batch, ctx: JobContext) -> None:
        spec = first_pass(job, batch)
        batch.pipe = job.model.pipeline(spec.task)
        batch.cond = encode_pass(job, spec, batch.pipe, job.family)
