"""The sampler table: A1111 sampler names and schedule types mapped onto diffusers schedulers.

Every scheduler is built from a copy of the checkpoint's ORIGINAL scheduler config (never from a
scheduler that an earlier request modified, whose leftover keys break the next one), with the three
sigma flags always set. Samplers come in two kinds: "noise" (eps / v-prediction UNets) and "flow"
(rectified-flow models such as SD3); the same display name ("Euler") can exist in both, so lookups
go through the family's kind. Extensions add samplers and schedule types with ``register_*``.

Like A1111, every sampler takes every schedule type: through the scheduler's own options where it
has them, else on custom sigmas (``sampler_specs`` says which, ``sigma_schedulers`` installs them).
A request that cannot run as asked is not refused: it runs the nearest thing A1111 would, and the
choice says so in ``warnings`` (a schedule type DDIM cannot take -> DDIM's own schedule; a
noise-model sampler on SD3 -> its default sampler). Only a sampler name no kind knows raises
(``UnknownSampler``; A1111's API answers 404 there).

This module imports no torch/diffusers at module level (the UI and API list names without them).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from webui.families.base import TASKS, FamilyAdapter
from webui.generation.sampler_specs import (
    AUTOMATIC,
    KINDS,
    BuiltSampler,
    SamplerChoice,
    SamplerError,
    SamplerSpec,
    ScheduleType,
    UnknownSampler,
    builtin_samplers,
    builtin_schedules,
)

__all__ = [
    "AUTOMATIC",
    "KINDS",
    "BuiltSampler",
    "BuiltinSamplers",
    "SamplerChoice",
    "SamplerError",
    "SamplerSpec",
    "SamplerTable",
    "ScheduleType",
    "UnknownSampler",
    "builtin_samplers",
    "builtin_schedules",
    "kind_of",
    "samplers_json",
    "schedulers_json",
]

_KIND_TEXT = {"noise": "noise-prediction models", "flow": "flow-matching models"}
_DEFAULT_SAMPLER = {"noise": "DPM++ 2M", "flow": "Euler"}
# Pre-1.9 A1111 API aliases baked the schedule into the name: k_dpmpp_2m_ka, k_dpmpp_2m_sde_exp.
_LEGACY_SUFFIXES = {"Karras": ("_ka",), "Exponential": ("_exp",)}
_FLAGS_OFF = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


def kind_of(family: FamilyAdapter) -> str:
    """Which sampler kind a family uses (its adapter's ``sampler_kind``): "flow" for rectified-flow models,
    "noise" for eps / v-prediction ones."""
    kind = getattr(family, "sampler_kind", "")
    if kind not in _KIND_TEXT:
        raise SamplerError(f"family {family.label!r} has sampler kind {kind!r}; expected one of: {', '.join(_KIND_TEXT)}")
    return kind


def _choices(names: Iterable[str]) -> str:
    return ", ".join(names) or "(none)"


class BuiltinSamplers:
    """Our own samplers, registered through ``webui_register_samplers`` exactly as an extension's are."""

    def webui_register_samplers(self, table: SamplerTable) -> None:
        for spec in builtin_samplers():
            table.register_sampler(spec)


class SamplerTable:
    """Samplers (per kind) and schedule types by name; lookups are case-insensitive and accept aliases."""

    def __init__(
        self, samplers: Iterable[SamplerSpec] | None = None, schedules: Iterable[ScheduleType] | None = None
    ) -> None:
        self._samplers: dict[str, dict[str, SamplerSpec]] = {kind: {} for kind in KINDS}
        self._sampler_keys: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self._schedules: dict[str, ScheduleType] = {}
        self._schedule_keys: dict[str, str] = {}
        self._prototypes = _Prototypes()
        schedules = list(builtin_schedules() if schedules is None else schedules)
        if not any(s.name == AUTOMATIC for s in schedules):
            schedules.insert(0, builtin_schedules()[0])
        for schedule in schedules:
            self.register_schedule(schedule)
        for spec in builtin_samplers() if samplers is None else samplers:
            self.register_sampler(spec)

    # --- registration (extensions) ---

    def register_sampler(self, spec: SamplerSpec) -> None:
        """Add a sampler for its kind; a name or alias already taken in that kind raises."""
        keys = self._sampler_keys[spec.kind]
        new = _keys(spec.name, *spec.aliases)
        for key in new:
            if key in keys:
                raise SamplerError(
                    f"sampler name or alias {key!r} of {spec.name!r} is already used by {keys[key]!r} "
                    f"for {_KIND_TEXT[spec.kind]}; register it under another name"
                )
        self._samplers[spec.kind][spec.name] = spec
        keys.update(dict.fromkeys(new, spec.name))

    def register_schedule(self, spec: ScheduleType) -> None:
        """Add a schedule type; a name, label or alias already taken raises."""
        bad_kinds = [k for k in spec.kinds if k not in KINDS]
        if bad_kinds:
            raise SamplerError(f"schedule type {spec.name!r} has kinds {bad_kinds}; use: {', '.join(KINDS)}")
        new = _keys(spec.name, spec.label, *spec.aliases)
        for key in new:
            if key in self._schedule_keys:
                raise SamplerError(
                    f"schedule type name or alias {key!r} of {spec.name!r} is already used by "
                    f"{self._schedule_keys[key]!r}; register it under another name"
                )
        self._schedules[spec.name] = spec
        self._schedule_keys.update(dict.fromkeys(new, spec.name))

    # --- listing ---

    def sampler_names(self, kind: str | None = None) -> list[str]:
        """All sampler names in A1111's order (both kinds unless ``kind`` is given; duplicates once)."""
        return list(dict.fromkeys(name for k in _kinds(kind) for name in self._samplers[k]))

    def schedule_names(self) -> list[str]:
        return list(self._schedules)

    def sampler(self, name: str, kind: str = "noise") -> SamplerSpec:
        """The spec for a name or alias in ``kind`` (a legacy schedule suffix is ignored)."""
        spec, _ = self._find(name, _kinds(kind))
        if spec is None:
            raise SamplerError(f"unknown sampler {name!r}; choose one of: {_choices(self.sampler_names(kind))}")
        return spec

    def schedule(self, name: str) -> ScheduleType:
        """A schedule type by name, label or alias; "" means Automatic."""
        key = name.strip().lower() or AUTOMATIC.lower()
        if key not in self._schedule_keys:
            raise SamplerError(f"unknown schedule type {name!r}; choose one of: {_choices(self._schedules)}")
        return self._schedules[self._schedule_keys[key]]

    def default_sampler(self, family: FamilyAdapter) -> str:
        """A1111's default for noise models ("DPM++ 2M"), "Euler" for flow models."""
        kind = kind_of(family)
        names = list(self._samplers[kind])
        if not names:
            raise SamplerError(f"no sampler is registered for {_KIND_TEXT[kind]} ({family.label})")
        return _DEFAULT_SAMPLER[kind] if _DEFAULT_SAMPLER[kind] in names else names[0]

    def samplers_for(self, family: FamilyAdapter, task: str) -> list[str]:
        """The samplers that run this family and task as themselves (SD3 img2img/inpaint: with scale_noise)."""
        _check_task(task)
        specs = self._samplers[kind_of(family)].values()
        return [s.name for s in specs if task == "txt2img" or s.img2img]

    def schedules_for(self, family: FamilyAdapter, sampler_name: str) -> list[str]:
        """The schedule types this sampler runs as asked on this family, Automatic first (no fallback)."""
        spec, _ = self._find(sampler_name, (kind_of(family),))
        if spec is None:
            raise self._unknown_sampler(family, sampler_name, self.sampler_names(kind_of(family)))
        return [s.name for s in self._schedules.values() if _how(spec, s, family)]

    # --- resolving ---

    def resolve(
        self, sampler_name: str, schedule: str = "", *, kind: str | None = None
    ) -> tuple[SamplerSpec, ScheduleType]:
        """Canonical sampler and schedule for names as users, infotexts and API clients write them.

        Case-insensitive; aliases ("k_euler_a") and pre-1.9 combined names ("DPM++ 2M Karras",
        "k_dpmpp_2m_sde_exp") work. A schedule given explicitly wins over one in the name; Automatic
        resolves to the sampler's default, and so does a schedule the sampler cannot run anywhere.
        Without ``kind``, noise samplers are tried before flow ones. An unknown sampler raises.
        """
        spec, in_name = self._find(sampler_name, _kinds(kind))
        if spec is None:
            raise UnknownSampler(
                f"unknown sampler {sampler_name!r}; choose one of: {_choices(self.sampler_names(kind))}",
                self.sampler_names(kind),
            )
        choice = self._schedule_choice(spec, schedule, in_name, None)
        return choice.spec, choice.schedule

    def check(
        self, family: FamilyAdapter, task: str, sampler_name: str, schedule: str = ""
    ) -> tuple[SamplerSpec, ScheduleType]:
        """``choose`` without the warnings: what runs, as (sampler, schedule)."""
        choice = self.choose(family, task, sampler_name, schedule)
        return choice.spec, choice.schedule

    def choose(self, family: FamilyAdapter, task: str, sampler_name: str, schedule: str = "") -> SamplerChoice:
        """What runs for this request on this family and task; "" = the family's default sampler.

        Never refuses a known name: a sampler of the other kind (Euler a on SD3) or one that cannot do
        the task becomes the family's default sampler, a schedule type that the sampler cannot run
        (or an unknown one) becomes its own schedule, as A1111 autocorrects them; each fallback is
        described in ``warnings``. A sampler name no kind knows raises ``UnknownSampler``.
        """
        _check_task(task)
        kind = kind_of(family)
        valid = self.samplers_for(family, task)
        spec, in_name = self._find(sampler_name or self.default_sampler(family), (kind,))
        warnings: list[str] = []
        if spec is None or spec.name not in valid:
            other = spec or self._find(sampler_name, [k for k in KINDS if k != kind])[0]
            if other is None:
                raise self._unknown_sampler(family, sampler_name, valid)
            spec, in_name = self._find(self.default_sampler(family), (kind,))
            if spec is None or spec.name not in valid:
                raise SamplerError(f"no sampler can do {task} on {family.label}; install an extension that adds one")
            reason = f"({_KIND_TEXT[kind]})" if other.kind != kind else f"for {task}"
            warnings.append(f"Sampler {other.name!r} does not work with {family.label} {reason}; {spec.name} was used")
        choice = self._schedule_choice(spec, schedule, in_name, family)
        return SamplerChoice(choice.spec, choice.schedule, choice.how, (*warnings, *choice.warnings))

    def _schedule_choice(
        self, spec: SamplerSpec, schedule: str, in_name: ScheduleType | None, family: FamilyAdapter | None
    ) -> SamplerChoice:
        """The schedule that runs: the asked one where it can, else the sampler's own (with a warning)."""
        try:
            chosen = self._pick_schedule(spec, schedule, in_name)
        except SamplerError:
            fallback = self._pick_schedule(spec, "", in_name)
            note = f"Unknown schedule type {schedule!r}; {fallback.name} was used (valid: {_choices(self._schedules)})"
            return SamplerChoice(spec, fallback, _how(spec, fallback, family) or "config", (note,))
        how = _how(spec, chosen, family)
        missing = _missing_packages(chosen)
        if how and not missing:
            return SamplerChoice(spec, chosen, how)
        fallback = self._pick_schedule(spec, "", None)
        if not _how(spec, fallback, family) or _missing_packages(fallback):
            fallback = self.schedule(AUTOMATIC)
        where = f" on {family.label}" if family is not None else ""
        why = f"it needs the Python package {missing[0]!r}" if missing and how else _why_not(spec, chosen, family)
        note = f"Schedule type {chosen.name!r} does not work with sampler {spec.name!r}{where} ({why}); "
        note += f"{fallback.name} was used" + (" (the sampler's own schedule)" if fallback.name == AUTOMATIC else "")
        return SamplerChoice(spec, fallback, _how(spec, fallback, family) or "config", (note,))

    def _find(self, name: str, kinds: Iterable[str]) -> tuple[SamplerSpec | None, ScheduleType | None]:
        """(spec, schedule named in a legacy suffix) or (None, None)."""
        key = name.strip().lower()
        kinds = tuple(kinds)
        for kind in kinds:
            if key in self._sampler_keys[kind]:
                return self._samplers[kind][self._sampler_keys[kind][key]], None
        for schedule, suffix in self._suffixes():
            base = key[: -len(suffix)].strip() if key.endswith(suffix) else ""
            for kind in kinds:
                if base in self._sampler_keys[kind]:
                    return self._samplers[kind][self._sampler_keys[kind][base]], schedule
        return None, None

    def _suffixes(self) -> list[tuple[ScheduleType, str]]:
        pairs = [
            (s, suffix)
            for s in self._schedules.values()
            if s.name != AUTOMATIC
            for suffix in {f" {s.name.lower()}", f" {s.label.lower()}", *_LEGACY_SUFFIXES.get(s.name, ())}
        ]
        return sorted(pairs, key=lambda pair: -len(pair[1]))

    def _pick_schedule(self, spec: SamplerSpec, schedule: str, in_name: ScheduleType | None) -> ScheduleType:
        chosen = self.schedule(schedule)
        if chosen.name == AUTOMATIC and in_name is not None:
            chosen = in_name
        if chosen.name == AUTOMATIC and spec.default_schedule != AUTOMATIC:
            chosen = self.schedule(spec.default_schedule)
        return chosen

    def _unknown_sampler(self, family: FamilyAdapter, name: str, valid: list[str]) -> SamplerError:
        kind = kind_of(family)
        other, _ = self._find(name, [k for k in KINDS if k != kind])
        if other is not None:
            return SamplerError(
                f"Sampler {other.name!r} does not work with {family.label} ({_KIND_TEXT[kind]}); "
                f"choose one of: {_choices(valid)}"
            )
        return UnknownSampler(f"Unknown sampler {name!r} for {family.label}; choose one of: {_choices(valid)}", valid)

    # --- building ---

    def build(
        self,
        original_config: Mapping[str, Any],
        family: FamilyAdapter,
        task: str,
        sampler_name: str,
        schedule: str = "",
        *,
        steps: int | None = None,
        shift: float | None = None,
        seed: int | None = None,
    ) -> BuiltSampler:
        """A fresh scheduler built from a copy of the checkpoint's original scheduler config.

        ``shift`` (flow models; 0/None = the checkpoint's) sets shift / flow_shift. ``seed`` seeds the
        Brownian-tree noise of DPM++ SDE (which otherwise draws from the global RNG). ``steps`` is not
        needed (kept for callers): a custom-sigma schedule is computed in ``set_timesteps`` for the step
        count the pipeline passes. The result names what runs and the fallbacks (``warnings``).
        """
        choice = self.choose(family, task, sampler_name, schedule)
        spec, chosen = choice.spec, choice.schedule
        _require_packages(spec)
        cls = _scheduler_class(spec, custom=choice.how == "sigmas" or _needs_scale_noise(spec, task))
        accepted = _init_params(cls)
        unknown = sorted(set(spec.kwargs) - accepted)
        if unknown:
            raise SamplerError(
                f"sampler {spec.name!r} sets {unknown}, which {spec.scheduler_class} does not take; "
                f"fix the sampler spec (valid: {_choices(sorted(accepted))})"
            )
        overrides = {**_FLAGS_OFF, **spec.kwargs, **(chosen.kwargs if choice.how == "config" else {})}
        if spec.kind == "flow":
            value = float(shift or original_config.get("shift") or original_config.get("flow_shift") or 1.0)
            overrides.update(shift=value, flow_shift=value)
        elif "prediction_type" in original_config:  # v-prediction checkpoints stay v-prediction
            overrides["prediction_type"] = original_config["prediction_type"]
        if seed is not None:
            overrides["noise_sampler_seed"] = seed
        config = {k: v for k, v in copy.deepcopy(dict(original_config)).items() if k in accepted}
        config.update({k: v for k, v in overrides.items() if k in accepted})
        try:
            scheduler = self._prototypes.fresh(cls, config)
        except ImportError as exc:
            raise SamplerError(f"sampler {spec.name!r} cannot be built: {exc}; install the package it names") from exc
        if choice.how == "sigmas":
            scheduler.use_sigma_schedule(chosen.name, chosen.custom_sigmas, family.id)
        return BuiltSampler(scheduler, MappingProxyType({}), spec.name, chosen.name, choice.warnings)


class _Prototypes:
    """Built schedulers by (class, config), handed out as deep copies.

    Some diffusers constructors are slow (DPM2's computes 1000 timesteps one by one, ~0.3 s); a copy
    of an untouched instance is the same scheduler in a millisecond. Bounded, thread-safe.
    """

    def __init__(self, size: int = 48) -> None:
        import threading
        from collections import OrderedDict

        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, cls: type, config: Mapping[str, Any]) -> Any:
        key = (cls, repr(sorted(config.items())))
        with self._lock:
            proto = self._items.get(key)
            if proto is not None:
                self._items.move_to_end(key)
        if proto is None:
            proto = cls.from_config(dict(config))
            with self._lock:
                self._items[key] = proto
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return copy.deepcopy(proto)


def _keys(*names: str) -> list[str]:
    keys = list(dict.fromkeys(n.strip().lower() for n in names))
    if "" in keys:
        raise SamplerError(f"sampler and schedule names and aliases must not be empty (got {names})")
    return keys


def _kinds(kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return KINDS
    if kind not in KINDS:
        raise SamplerError(f"unknown sampler kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return (kind,)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise SamplerError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def _how(spec: SamplerSpec, schedule: ScheduleType, family: FamilyAdapter | None) -> str:
    """How ``spec`` runs ``schedule`` on ``family``: "config", "sigmas", or "" (it cannot)."""
    if schedule.name == AUTOMATIC:
        return "config"
    if spec.schedules is not None and schedule.name not in spec.schedules:
        return ""
    if spec.kind not in schedule.kinds:
        return ""
    if family is not None and schedule.families is not None and family.id not in schedule.families:
        return ""
    if schedule.kwargs and (spec.config_schedules is None or schedule.name in spec.config_schedules):
        return "config"
    if schedule.custom_sigmas is not None and spec.takes_custom_sigmas:
        return "sigmas"
    return ""


def _why_not(spec: SamplerSpec, schedule: ScheduleType, family: FamilyAdapter | None) -> str:
    if spec.kind not in schedule.kinds:
        return f"it is made for {_KIND_TEXT[schedule.kinds[0]] if schedule.kinds else 'no model'}"
    if family is not None and schedule.families is not None and family.id not in schedule.families:
        return f"it exists for {', '.join(schedule.families)} only"
    if spec.schedules is not None and schedule.name not in spec.schedules:
        return f"the sampler takes {_choices(spec.schedules)} only"
    return f"{spec.name} steps on its own timesteps, not on sigmas; A1111 ignores the schedule type there too"


def _missing_packages(schedule: ScheduleType) -> list[str]:
    return [p for p in schedule.requires if importlib.util.find_spec(p) is None]


def _require_packages(spec: SamplerSpec) -> None:
    for package in spec.requires:
        if importlib.util.find_spec(package) is None:
            raise SamplerError(
                f"Sampler {spec.name!r} needs the Python package {package!r}, which is not installed; "
                f"install it (pip install {package}) or choose another"
            )


def _needs_scale_noise(spec: SamplerSpec, task: str) -> bool:
    """Flow img2img/inpaint call scale_noise, which only our subclasses of the multistep solvers add."""
    return spec.kind == "flow" and task != "txt2img" and not spec.scheduler_class.startswith("FlowMatch")


def _scheduler_class(spec: SamplerSpec, custom: bool = False) -> type:
    """The diffusers class the spec names, or (``custom``) our subclass of it that takes any sigmas."""
    import diffusers

    cls = getattr(diffusers, spec.scheduler_class, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_config"):
        raise SamplerError(
            f"sampler {spec.name!r} names {spec.scheduler_class!r}, which is not a diffusers scheduler class; "
            "fix the sampler spec"
        )
    if custom:
        from webui.generation.sigma_schedulers import SIGMA_SCHEDULERS

        return SIGMA_SCHEDULERS[spec.scheduler_class]
    return cls


def _init_params(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


# --- A1111 API views ------------------------------------------------------------------------------


def samplers_json(table: SamplerTable, family: FamilyAdapter | None = None, task: str = "txt2img") -> list[dict]:
    """GET /sdapi/v1/samplers: [{"name", "aliases", "options"}]; option values are strings, as in A1111."""
    kind = None if family is None else kind_of(family)
    names = table.sampler_names() if family is None else table.samplers_for(family, task)
    items = []
    for name in names:
        spec = table.sampler(name, kind or ("noise" if name in table.sampler_names("noise") else "flow"))
        options = {}
        if spec.default_schedule != AUTOMATIC:
            options["scheduler"] = table.schedule(spec.default_schedule).api_name
        options.update((key, str(value)) for key, value in spec.api_options.items())
        items.append({"name": spec.name, "aliases": list(spec.aliases), "options": options})
    return items


def schedulers_json(table: SamplerTable) -> list[dict]:
    """GET /sdapi/v1/schedulers: [{"name", "label", "aliases", "default_rho", "need_inner_model"}]."""
    return [
        {
            "name": s.api_name,
            "label": s.label,
            "aliases": list(s.aliases[1:]) or None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in (table.schedule(name) for name in table.schedule_names())
    ]
