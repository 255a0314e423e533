"""A pass's prompts step by step: wildcards chosen per image, prompt editing and alternation per step.

``pass_prompts`` gives each image of a batch its prompt and negative prompt (wildcards replaced with
the image's seed, ``webui.generation.wildcards``). ``stepped_cond`` computes the schedule of the pass
once (``prompt_editing.prompt_schedule`` of every row, positive and negative), encodes each distinct
set of texts once (through the caller's ``encode``, which uses the prompt cache), and returns the first
step's embeddings: a plain dict when the text never changes, else a ``SteppedCond`` that also holds the
embeddings each later step switches to. ``switch_callback`` turns that into a step callback (diffusers'
``callback_on_step_end`` protocol): after step k it hands the pipeline the embeddings of step k + 1 by
replacing the loop's tensors that diffusers lets a callback replace: ``prompt_embeds`` (negative rows
first when CFG runs) and the pooled embedding (SDXL's ``add_text_embeds``, SD3's
``pooled_prompt_embeds``). SD3's img2img and inpaint pipelines let a callback replace only the sequence
embeddings, so there the pooled embedding stays the first step's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Any

from webui.generation.prompt_editing import prompt_schedule, text_at
from webui.generation.prompts import strip_loras

POOLED_STEP_TENSORS = ("add_text_embeds", "pooled_prompt_embeds")  # SDXL, SD3 text-to-image


class SteppedCond(dict):
    """The first step's call arguments (a dict), and ``changes``: {step of the pass (1-based): arguments}."""

    def __init__(self, first: Mapping[str, Any], changes: Mapping[int, Mapping[str, Any]]) -> None:
        super().__init__(first)
        self.changes = dict(changes)


def _resolve(job: Any, text: str, seed: int, salt: str) -> str:
    wildcards = getattr(job.parts, "wildcards", None)
    if wildcards is None or "__" not in text:
        return text
    from webui.generation.wildcards import missing_message

    found = wildcards.resolve(text, seed, salt)
    if found.missing:
        _warn(job, missing_message(found.missing, wildcards.folder))
    return found.text


def _warn(job: Any, message: str) -> None:
    warnings = getattr(job, "warnings", None)
    if warnings is not None and message not in warnings:
        warnings.append(message)


def resolved_prompt(job: Any, text: str, seed: int, field: str) -> str:
    """``text`` (a prompt field as written) with the wildcards image ``seed`` chose: what its infotext shows."""
    return _resolve(job, text, seed, field)


def pass_prompts(
    job: Any, prompt: str, negative: str, seeds: Sequence[int], fields: tuple[str, str] = ("prompt", "negative_prompt")
) -> tuple[list[str], list[str]]:
    """Each image's prompt and negative prompt (without ``<lora:...>`` tags), wildcards chosen by its seed."""
    rows: tuple[list[str], list[str]] = ([], [])
    for seed in seeds:
        for out, text, field in zip(rows, (prompt, negative), fields):
            chosen = _resolve(job, text, seed, field)
            bare = strip_loras(chosen)
            if bare != chosen:
                _warn(job, "a wildcard line holds a <lora:...> tag; LoRAs apply from the prompt only, it was left out")
            out.append(bare)
    return rows


def _schedule_keys(pos: list[str], neg: list[str], steps: int) -> list[tuple[int, tuple[tuple[str, ...], ...]]]:
    """[(until_step, (positive rows, negative rows)), ...] for the whole pass, neighbours merged."""
    schedules = [prompt_schedule(text, steps) for text in (*pos, *neg)]
    ends = sorted({end for schedule in schedules for end, _ in schedule})
    out: list[tuple[int, tuple[tuple[str, ...], ...]]] = []
    n = len(pos)
    for end in ends:
        texts = tuple(text_at(schedule, end) for schedule in schedules)
        key = (texts[:n], texts[n:])
        if out and out[-1][1] == key:
            out[-1] = (end, key)
        else:
            out.append((end, key))
    return out


def stepped_cond(
    pos: list[str],
    neg: list[str],
    steps: int,
    encode: Callable[[list[str], list[str]], dict[str, Any]],
    offset: int = 0,
) -> dict[str, Any]:
    """The pass's embeddings: step ``offset + 1`` of the schedule first, a ``SteppedCond`` when they change.

    ``steps`` is what the schedule counts (the pass's ``num_inference_steps``); the pass's step k is the
    schedule's step ``offset + k`` (a refiner continues the first pass's count).
    """
    keys = [(end, key) for end, key in _schedule_keys(pos, neg, steps) if end > offset]
    encoded: dict[Any, dict[str, Any]] = {}

    def cond(key: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
        if key not in encoded:
            encoded[key] = encode(list(key[0]), list(key[1]))
        return encoded[key]

    first = cond(keys[0][1])
    if len(keys) == 1:
        return first
    changes = {previous_end + 1 - offset: cond(key) for (previous_end, _), (_, key) in pairwise(keys)}
    return SteppedCond(first, changes)


def switch_callback(cond: Any, pipe: Any) -> Any:
    """The step callback that switches the embeddings of ``cond`` (a ``SteppedCond``) per step, or None."""
    changes = getattr(cond, "changes", None)
    if not changes:
        return None
    allowed = set(getattr(pipe, "_callback_tensor_inputs", ()))
    if "prompt_embeds" not in allowed:
        return None
    pooled_name = next((name for name in POOLED_STEP_TENSORS if name in allowed), None)
    wanted = ["prompt_embeds"] + ([pooled_name] if pooled_name else [])

    def call(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        new = changes.get(step + 2)  # diffusers' step is the 0-based index of the step just run
        if new is None:
            return {}
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", True))
        out = {"prompt_embeds": _loop_tensor(new, "prompt_embeds", tensors["prompt_embeds"], cfg)}
        if pooled_name and "pooled_prompt_embeds" in new:
            out[pooled_name] = _loop_tensor(new, "pooled_prompt_embeds", tensors[pooled_name], cfg)
        return out

    call.tensor_inputs = wanted  # type: ignore[attr-defined]
    return call


def _loop_tensor(new: Mapping[str, Any], name: str, like: Any, cfg: bool) -> Any:
    """The tensor the denoising loop holds for ``name``: negative rows then positive ones when CFG runs."""
    import torch

    value = new[name]
    if cfg:
        value = torch.cat([new["negative_" + name], value], dim=0)
    return value.to(device=like.device, dtype=like.dtype)
