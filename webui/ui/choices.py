"""What the controls offer for a model family: samplers, schedule types, defaults, size presets.

Pure python over the backend's records (``FamilyInfo``, ``FamilyChoices``); no gradio. With no model
loaded the page shows the first family's defaults (SD 1.5's) and every sampler (the engine checks the
choice once it knows the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webui.backend import Backend, FamilyInfo
from webui.generation.infotext_map import USE_SAME_SAMPLER, USE_SAME_SCHEDULER
from webui.generation.requests import HR_UPSCALERS, MASKED_CONTENT, RESIZE_MODES
from webui.ui.control_values import NO_REFINER

__all__ = [
    "HR_UPSCALERS",
    "MASKED_CONTENT",
    "RESIZE_MODES",
    "USE_SAME_SAMPLER",
    "USE_SAME_SCHEDULER",
    "FamilyView",
    "family_view",
    "parse_preset",
    "preset_choices",
    "refiner_choices",
    "schedules_for",
    "fit_to_family",
    "fit_values",
    "usable_values",
]


@dataclass(frozen=True)
class FamilyView:
    """The choices and defaults one tab shows for a family (None: no model loaded)."""

    family_id: str
    label: str
    samplers: list[str]
    sampler: str
    schedules: list[str]
    hr_samplers: list[str]
    steps: int
    cfg: float
    width: int
    height: int
    presets: list[tuple[str, str]]
    is_flow: bool
    all_schedules: list[str]  # every schedule type (the hires schedule list)


def preset_choices(sizes: Any) -> list[tuple[str, str]]:
    """``[("512 × 768", "512x768"), ...]`` for a family's resolution presets."""
    return [(f"{w} × {h}", f"{w}x{h}") for w, h in sizes]


def parse_preset(value: str | None) -> tuple[int, int] | None:
    """``"512x768"`` -> (512, 768); anything else -> None."""
    try:
        w, h = str(value).lower().split("x")
        return int(w), int(h)
    except (TypeError, ValueError):
        return None


def _id(family: FamilyInfo | None) -> str | None:
    return family.id if family is not None else None


def loaded_family(backend: Backend) -> FamilyInfo | None:
    loaded = backend.loaded()
    return loaded.family if loaded is not None else None


def schedules_for(backend: Backend, family: FamilyInfo | None, sampler: str | None) -> list[str]:
    """Schedule types for this sampler on this family; every one when either is unknown."""
    return backend.schedules_for(_id(family), sampler)


def family_view(backend: Backend, family: FamilyInfo | None, task: str) -> FamilyView:
    offered = backend.family_choices(_id(family))
    base = offered.defaults
    samplers = list(offered.samplers[task])
    hr = list(offered.samplers["img2img"])
    sampler = offered.default_sampler
    if sampler not in samplers:
        sampler = samplers[0] if samplers else ""
    return FamilyView(
        family_id=family.id if family is not None else "",
        label=family.label if family is not None else "no model loaded",
        samplers=samplers,
        sampler=sampler,
        schedules=schedules_for(backend, family, sampler),
        hr_samplers=[USE_SAME_SAMPLER, *hr],
        steps=base.default_steps,
        cfg=base.default_cfg,
        width=base.default_size[0],
        height=base.default_size[1],
        presets=preset_choices(base.resolution_presets),
        is_flow=bool(family is not None and family.is_flow),
        all_schedules=list(offered.schedules),
    )


def refiner_choices(backend: Backend) -> list[str]:
    return [NO_REFINER, *(m.name for m in backend.models("checkpoint"))]


def hr_upscaler_choices(backend: Backend) -> list[str]:
    """The hires-fix upscalers: latent modes and resampling, then the upscaler models (models/ESRGAN ...)."""
    models = [u.name for u in backend.upscalers() if u.model_path] if hasattr(backend, "upscalers") else []
    return [*HR_UPSCALERS, *models]


def usable_values(backend: Backend, task: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the dropdown choices this page cannot show for the loaded family (see ``fit_values``)."""
    return fit_values(backend, task, values)[0]


def fit_values(
    backend: Backend, task: str, values: Mapping[str, Any], current_sampler: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """(``values`` fitted to what the page can show for the loaded family, a note for each value changed).

    A sampler the family lacks is dropped (the control keeps its value), its schedule with it; a
    schedule the sampler (the pasted one, else ``current_sampler``) does not take becomes Automatic;
    an unknown refiner becomes None. Every change is named in the notes: a pasted value is never
    dropped silently.
    """
    out = dict(values)
    notes: list[str] = []
    family = loaded_family(backend)
    where = family.label if family is not None else "this page"
    view = family_view(backend, family, task)
    if "sampler_name" in out and out["sampler_name"] not in view.samplers:
        name = out.pop("sampler_name")
        schedule = out.pop("scheduler", None)
        also = f" (nor its schedule type {schedule})" if schedule and schedule != "Automatic" else ""
        notes.append(f"The sampler {name} does not work with {where}; kept the current one{also}.")
    if "scheduler" in out:
        sampler = out.get("sampler_name") or current_sampler or view.sampler
        if out["scheduler"] not in schedules_for(backend, family, sampler):
            notes.append(f"The schedule type {out['scheduler']} does not work with {sampler}; using Automatic.")
            out["scheduler"] = "Automatic"
    if "hr_sampler_name" in out and out["hr_sampler_name"] not in view.hr_samplers:
        notes.append(f"The hires sampler {out['hr_sampler_name']} does not work with {where}; using the same sampler.")
        out["hr_sampler_name"] = USE_SAME_SAMPLER
    if "hr_scheduler" in out and out["hr_scheduler"] not in [USE_SAME_SCHEDULER, *view.all_schedules]:
        notes.append(f"The hires schedule type {out['hr_scheduler']} is unknown; using the same schedule type.")
        out["hr_scheduler"] = USE_SAME_SCHEDULER
    if "hr_upscaler" in out and out["hr_upscaler"] not in hr_upscaler_choices(backend):
        notes.append(f"The upscaler {out.pop('hr_upscaler')} is not available here; kept the current one.")
    if "refiner_checkpoint" in out and out["refiner_checkpoint"] not in refiner_choices(backend):
        notes.append(f"The refiner {out['refiner_checkpoint']} is not installed; no refiner.")
        out["refiner_checkpoint"] = NO_REFINER
    return out, notes


def fit_to_family(
    backend: Backend,
    family: FamilyInfo | None,
    task: str,
    sampler: str | None,
    schedule: str | None,
    hr_sampler: str | None,
) -> tuple[str, str, str, list[str]]:
    """(sampler, schedule type, hires sampler, notes) after a model switch: the user's choices where
    ``family`` can use them, else its default (A1111 keeps the user's values; only what cannot run changes)."""
    view = family_view(backend, family, task)
    where = family.label if family is not None else "this model"
    notes: list[str] = []
    new_sampler = sampler if sampler in view.samplers else view.sampler
    if sampler and new_sampler != sampler:
        notes.append(f"{where} has no sampler {sampler}: now {new_sampler}.")
    new_schedule = schedule or "Automatic"
    if new_schedule not in schedules_for(backend, family, new_sampler):
        notes.append(f"{new_sampler} on {where} has no schedule type {new_schedule}: now Automatic.")
        new_schedule = "Automatic"
    new_hr = hr_sampler or USE_SAME_SAMPLER
    if new_hr not in view.hr_samplers:
        notes.append(f"{where} has no hires sampler {new_hr}: now {USE_SAME_SAMPLER}.")
        new_hr = USE_SAME_SAMPLER
    return new_sampler, new_schedule, new_hr, notes
