"""The X/Y/Z axis table: A1111's axis names in A1111's order (so ``x_type`` indices match), what each changes.

A1111 numbers the axes of its txt2img and img2img lists apart: an axis only for txt2img ("Hires steps")
is left out of the img2img list, and the reverse ("Image CFG Scale"). ``axis_list(task)`` gives that
list; an axis we list but cannot run (``apply`` None) is refused with the names that do run.

LoRA weight (ours, not A1111's): each value replaces the weight of every ``<lora:name:w>`` tag of the
prompt and negative prompt (a tag written without a weight gets one); a prompt without a LoRA tag is
refused. Prompt S/R (A1111's): the first value is the search text, each value replaces it in both prompts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from webui.generation.requests import GenerationRequest, RequestError

Apply = Callable[[GenerationRequest, Any, Sequence[Any]], GenerationRequest]


@dataclass(frozen=True)
class AxisType:
    name: str
    kind: type = str  # int, float or str: how its values parse
    apply: Apply | None = None  # None: an A1111 axis this app does not run
    only: str = ""  # "txt2img" / "img2img": only in that task's list (A1111's AxisOptionTxt2Img/Img2Img)
    cost: float = 0.0  # how dear a change is (a checkpoint load): the dearest axis runs outermost
    choices: str = ""  # what the page's dropdown lists: "sampler", "checkpoint", "schedule", "vae", "upscaler"


def field(name: str) -> Apply:
    def apply(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
        return req.replace(**{name: value})

    return apply


def nothing(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
    return req


def prompt_sr(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
    search = values[0]
    if search not in req.prompt and search not in req.negative_prompt:
        raise RequestError(
            "script_args", f"Prompt S/R: {search!r} (the first value) is in neither the prompt nor the negative prompt"
        )
    return req.replace(
        prompt=req.prompt.replace(search, value), negative_prompt=req.negative_prompt.replace(search, value)
    )


def size(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
    match = re.fullmatch(r"\s*(\d+)\s*[x×*]\s*(\d+)\s*", str(value))
    if not match:
        raise RequestError("script_args", f"Size: {value!r} is not a size; write it as WIDTHxHEIGHT, e.g. 512x768")
    return req.replace(width=int(match.group(1)), height=int(match.group(2)))


def vae(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
    return req.replace(sd_vae="Automatic" if str(value).lower() == "automatic" else str(value))


_LORA = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?((?::[^>]*)?)>", re.IGNORECASE)


def lora_weight(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
    if not (_LORA.search(req.prompt) or _LORA.search(req.negative_prompt)):
        raise RequestError("script_args", "LoRA weight: the prompt has no <lora:name:weight> tag whose weight to vary")

    def put(match: re.Match[str]) -> str:
        return f"<lora:{match.group(1)}:{value:g}{match.group(3) or ''}>"

    return req.replace(prompt=_LORA.sub(put, req.prompt), negative_prompt=_LORA.sub(put, req.negative_prompt))


def styles_axis(req: GenerationRequest, value: Any, values: Sequence[Any]) -> GenerationRequest:
    """The Styles axis: not run yet (the styles are applied to a request's prompts before it reaches the grid)."""
    raise RequestError(
        "script_args",
        "the Styles axis is not supported yet; choose the styles for the whole grid (the styles field), or use a"
        " Prompt S/R axis",
    )


def _t(name: str, kind: type = str, apply: Apply | None = None, **kw: Any) -> AxisType:
    return AxisType(name, kind, apply, **kw)


# A1111 1.10's axis_options, in its order (the indices clients send as x_type), then ours.
AXES: tuple[AxisType, ...] = (
    _t("Nothing", str, nothing),
    _t("Seed", int, field("seed")),
    _t("Var. seed", int, field("subseed")),
    _t("Var. strength", float, field("subseed_strength")),
    _t("Steps", int, field("steps")),
    _t("Hires steps", int, field("hr_second_pass_steps"), only="txt2img"),
    _t("CFG Scale", float, field("cfg_scale")),
    _t("Image CFG Scale", float, only="img2img"),
    _t("Prompt S/R", str, prompt_sr),
    _t("Prompt order"),
    _t("Sampler", str, field("sampler_name"), only="txt2img", choices="sampler"),
    _t("Hires sampler", str, field("hr_sampler_name"), only="txt2img", choices="sampler"),
    _t("Sampler", str, field("sampler_name"), only="img2img", choices="sampler"),
    _t("Checkpoint name", str, field("sd_model_checkpoint"), cost=1.0, choices="checkpoint"),
    _t("Negative Guidance minimum sigma", float),
    _t("Sigma Churn", float),
    _t("Sigma min", float),
    _t("Sigma max", float),
    _t("Sigma noise", float),
    _t("Schedule type", str, field("scheduler"), choices="schedule"),
    _t("Schedule min sigma", float),
    _t("Schedule max sigma", float),
    _t("Schedule rho", float),
    _t("Skip Early CFG", float),
    _t("Beta schedule alpha", float),
    _t("Beta schedule beta", float),
    _t("Eta", float),
    _t("Clip skip", int, field("clip_skip")),
    _t("Denoising", float, field("denoising_strength")),
    _t("Initial noise multiplier", float),
    _t("Extra noise", float),
    _t("Hires upscaler", str, field("hr_upscaler"), only="txt2img", choices="upscaler"),
    _t("Cond. Image Mask Weight", float, only="img2img"),
    _t("VAE", str, vae, cost=0.7, choices="vae"),
    _t("Styles", str, styles_axis),
    _t("UniPC Order", int),
    _t("Face restore"),
    _t("Token merging ratio", float),
    _t("Token merging ratio high-res", float),
    _t("Always discard next-to-last sigma"),
    _t("SGM noise multiplier"),
    _t("Refiner checkpoint", str, field("refiner_checkpoint"), cost=1.0, choices="checkpoint"),
    _t("Refiner switch at", float, field("refiner_switch_at")),
    _t("RNG source", str, field("rng")),
    _t("FP8 mode"),
    _t("Size", str, size),
    # ours (after A1111's, so its indices stay as they are)
    _t("Hires upscale", float, field("hr_scale"), only="txt2img"),
    _t("LoRA weight", float, lora_weight),
)


def axis_list(task: str) -> list[AxisType]:
    """The axes of a task's list, in A1111's order (inpaint uses img2img's)."""
    mode = "txt2img" if task == "txt2img" else "img2img"
    return [a for a in AXES if a.only in ("", mode)]


def supported(task: str) -> list[AxisType]:
    return [a for a in axis_list(task) if a.apply is not None]


def _key(name: str) -> str:
    return re.sub(r"[\s.]+", " ", name).strip().lower()


def find_axis(task: str, which: Any, field_name: str = "script_args") -> AxisType:
    """An axis by A1111 index or by name (case and dots ignored: "Hires. steps"); ``RequestError`` otherwise."""
    axes = axis_list(task)
    names = [a.name for a in supported(task)]
    axis: AxisType | None = None
    if isinstance(which, bool):
        which = int(which)
    if isinstance(which, int) or (isinstance(which, str) and which.strip().isdigit()):
        index = int(which)
        axis = axes[index] if 0 <= index < len(axes) else None
        if axis is None:
            raise RequestError(field_name, f"axis type {index} is out of range for {task} (0-{len(axes) - 1})", names)
    elif isinstance(which, str):
        axis = next((a for a in axes if _key(a.name) == _key(which)), None)
        if axis is None:
            raise RequestError(field_name, f"unknown axis type {which!r}; choose one of: {', '.join(names)}", names)
    else:
        raise RequestError(field_name, f"an axis type is an index or a name, not {which!r}", names)
    if axis.apply is None:
        raise RequestError(
            field_name, f"the axis {axis.name!r} is not supported here; choose one of: {', '.join(names)}", names
        )
    return axis
