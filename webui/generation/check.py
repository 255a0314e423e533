"""One check of a generation request, and what it resolves: the engine and the API's early answer call it.

``check_request(request, context)`` runs every check a request gets, once: the field checks of
``validate_request`` (limits, sizes that follow from other fields), a mask with nothing to repaint,
the names it uses (checkpoint, VAE, refiner, the LoRAs of its ``<lora:...>`` tags, samplers) and
what runs for them on the checkpoint's family (a sampler or schedule type it cannot run falls back,
with a warning). It returns a ``CheckedRequest``: the request plus everything the engine would
otherwise look up again (catalog entries, the sampler choice, the prompts without their tags, the
size, steps and CFG the family's defaults fill in).

The API calls it before it queues a request (a bad field is a 422, an unknown name a 404, and
nothing is queued); the engine calls it when the job starts (after ``webui_before_job``, which may
change the request, and against the model loaded then). ``UnknownName`` is the error for a name that
is not installed, with the valid names.

No torch here: catalog entries, sampler specs and PIL images only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from webui.generation.requests import GenerationRequest, Limits, RequestError, check_fields

log = logging.getLogger(__name__)

VAE_NONE = ("", "Automatic", "None")  # sd_vae values meaning "the checkpoint's own VAE"
PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
NO_CHECKPOINT = "no checkpoint is installed; put a .safetensors file in models/Stable-diffusion or use the Models tab to download one"


class UnknownName(RequestError):
    """A checkpoint, VAE, LoRA or sampler that is not installed or not known; ``valid`` lists those that are."""

    def __init__(self, field_name: str, message: str, valid: Any, kind: str) -> None:
        super().__init__(field_name, message, valid)
        self.kind = kind  # "checkpoint", "vae", "lora" or "sampler"


@dataclass(frozen=True)
class CheckContext:
    """What a check reads besides the request: limits, the catalog, the sampler table, the loaded model."""

    limits: Limits
    catalog: Any  # webui.models.catalog.ModelCatalog
    samplers: Any  # webui.generation.samplers.SamplerTable
    families: Any  # Registry of FamilySpec (families.get(id))
    current: Any = None  # CatalogEntry of the loaded checkpoint (None: none is loaded)
    current_family: Any = None  # its family as loaded
    default_model: str = ""  # the checkpoint a job naming none runs on while none is loaded
    # (name, args, request) -> (owned, checked args): the extensions' ``webui_script_args`` (None: no extensions)
    scripts: Any = None


@dataclass(frozen=True)
class CheckedRequest:
    """A request that passed ``check_request``, with what it resolved.

    ``family`` is None only when the checkpoint's family is known after loading (a ``.ckpt``): the
    sampler and the family defaults are then resolved by the engine's check once it is loaded.
    """

    request: GenerationRequest
    model: Any  # CatalogEntry of the checkpoint the job runs on
    family: Any  # its FamilySpec (None: known once loaded)
    sampler: Any = None  # SamplerChoice of the first pass (spec, schedule, how, warnings)
    hires_sampler: Any = None  # SamplerChoice of the hires pass (the first pass's when not asked otherwise)
    prompt: str = ""  # the prompts without their <lora:...> tags
    negative: str = ""
    hr_prompt: str | None = None  # None: the first pass's prompt
    hr_negative: str | None = None
    loras: tuple[tuple[Any, Any], ...] = ()  # (LoraTag, CatalogEntry) of the prompt's tags: the LoRAs applied
    vae: Any = None  # CatalogEntry of the asked VAE (None: the checkpoint's own, or no change)
    set_vae: bool = False  # whether the request asks for a VAE (sd_vae not ""); None with it = the checkpoint's own
    refiner: Any = None  # CatalogEntry of the refiner checkpoint, if any
    steps: int = 0
    cfg: float = 0.0
    width: int = 0
    height: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)  # what runs other than asked (sampler fallbacks)

    @property
    def complete(self) -> bool:
        """Whether everything is resolved (the family is known)."""
        return self.family is not None


def check_request(request: GenerationRequest, context: CheckContext) -> CheckedRequest:
    """Every check of ``request``, once; raises ``RequestError`` (``UnknownName`` for a name) for the first problem."""
    check_fields(request, context.limits, weights=False)  # the weights are checked where _prompts splits them
    request = _scripts(request, context)
    model = _checkpoint(request, context)
    family = _family_of(model, context)
    vae = _find(context, request.sd_vae, "vae", "sd_vae") if request.sd_vae not in VAE_NONE else None
    texts, loras = _prompts(request, context)
    if request.task != "txt2img" and request.subseed_strength > 0:
        raise RequestError(
            "subseed_strength", "variation seeds work for txt2img only for now; set the variation strength to 0"
        )
    refiner = (
        _find(context, request.refiner_checkpoint, "checkpoint", "refiner_checkpoint")
        if request.refiner_checkpoint
        else None
    )
    checked = CheckedRequest(
        request=request,
        model=model,
        family=family,
        prompt=texts["prompt"],
        negative=texts["negative_prompt"],
        hr_prompt=texts["hr_prompt"] if request.hr_prompt else None,
        hr_negative=texts["hr_negative_prompt"] if request.hr_negative_prompt else None,
        loras=loras,
        vae=vae,
        set_vae=bool(request.sd_vae),
        refiner=refiner,
    )
    if family is None:
        _check_sampler_names(request, context)
        return checked
    return _for_family(checked, family, context)


def next_checkpoint(context: CheckContext) -> Any:
    """The checkpoint a job naming none runs on: the loaded one, else the default, else the first usable one.

    A default that is not installed falls back to the first one found, as A1111 does. None: none is installed.
    """
    if context.current is not None:
        return context.current
    if context.default_model:
        try:
            return context.catalog.find(context.default_model, kind="checkpoint")
        except KeyError:
            log.warning("default checkpoint %r is not installed; using the first one found", context.default_model)
    return next(iter(context.catalog.usable("checkpoint")), None)


# --- the parts -------------------------------------------------------------------------------


def _scripts(req: GenerationRequest, context: CheckContext) -> GenerationRequest:
    """``alwayson_scripts`` checked by the extensions that own them (A1111: an unknown script is refused)."""
    if not req.alwayson_scripts:
        return req
    from webui.hooks import JobRefused

    checked = {}
    for name, args in req.alwayson_scripts.items():
        owned, value = False, None
        if context.scripts is not None:
            try:
                owned, value = context.scripts(name, args, req)
            except JobRefused as exc:
                raise RequestError(exc.field or "alwayson_scripts", f"{name}: {exc}") from None
        if not owned:
            raise RequestError(
                "alwayson_scripts",
                f"always on script {name} not found: no installed extension runs it; remove it from alwayson_scripts",
            )
        checked[name] = value
    return req.replace(alwayson_scripts=checked)


def _find(context: CheckContext, name: str, kind: str, field_name: str, suffix: str = "") -> Any:
    try:
        return context.catalog.find(name, kind=kind)
    except KeyError as exc:
        message = str(exc).strip("'\"") + suffix
        raise UnknownName(field_name, message, [e.name for e in context.catalog.usable(kind)], kind) from None


def _checkpoint(req: GenerationRequest, context: CheckContext) -> Any:
    if req.sd_model_checkpoint:
        return _find(context, req.sd_model_checkpoint, "checkpoint", "sd_model_checkpoint")
    entry = next_checkpoint(context)
    if entry is None:
        raise RequestError("sd_model_checkpoint", NO_CHECKPOINT)
    return entry


def _family_of(entry: Any, context: CheckContext) -> Any:
    current = context.current
    if current is not None and (current.path, current.mtime_ns) == (entry.path, entry.mtime_ns):
        return context.current_family
    families = context.families
    if entry.family and families is not None and entry.family in families:
        return families.get(entry.family)
    return None


def _prompts(req: GenerationRequest, context: CheckContext) -> tuple[dict[str, str], tuple]:
    """The prompts without their tags, and the prompt's LoRAs; every tag must name an installed LoRA."""
    from webui.generation.prompts import extract_loras, tags_problem

    texts: dict[str, str] = {}
    loras: tuple = ()
    for name in PROMPT_FIELDS:
        try:
            texts[name], tags = extract_loras(getattr(req, name))
        except ValueError as exc:
            raise RequestError(name, str(exc)) from None
        problem = tags_problem(texts[name], tags)
        if problem:
            raise RequestError(name, problem)
        found = tuple((tag, _find(context, tag.name, "lora", name, " (from a <lora:...> tag)")) for tag in tags)
        if name == "prompt":
            loras = found  # only the prompt's LoRAs are applied (as A1111)
    return texts, loras


def _choose(context: CheckContext, family: Any, task: str, sampler: str, schedule: str, field_name: str) -> Any:
    from webui.generation.samplers import SamplerError, UnknownSampler

    try:
        return context.samplers.choose(family, task, sampler, schedule)
    except UnknownSampler as exc:
        raise UnknownName(field_name, str(exc), exc.valid, "sampler") from None
    except SamplerError as exc:
        from webui.generation.requests import listed_choices

        raise RequestError(field_name, str(exc), listed_choices(exc)) from None


def _check_sampler_names(req: GenerationRequest, context: CheckContext) -> None:
    """Without the family (known once loaded) only the names are checked: a name no model kind knows."""
    from webui.generation.samplers import UnknownSampler

    names = [("sampler_name", req.sampler_name)]
    if req.enable_hr:
        names.append(("hr_sampler_name", req.hr_sampler_name))
    for field_name, name in names:
        if name:
            try:
                context.samplers.resolve(name)
            except UnknownSampler as exc:
                raise UnknownName(field_name, str(exc), exc.valid, "sampler") from None


def _for_family(checked: CheckedRequest, family: Any, context: CheckContext) -> CheckedRequest:
    """The sampler choices and the family's defaults (size, steps, CFG)."""
    req = checked.request
    sampler = req.sampler_name or context.samplers.default_sampler(family)
    first = _choose(context, family, req.task, sampler, req.scheduler, "sampler_name")
    hires = first
    if req.enable_hr and (req.hr_sampler_name or req.hr_scheduler):
        # A1111: "use same scheduler" is the schedule type as asked, so another sampler gets its own Automatic
        hr_sampler = req.hr_sampler_name or first.spec.name
        hires = _choose(context, family, "img2img", hr_sampler, req.hr_scheduler or req.scheduler, "hr_sampler_name")
    width = req.width or family.default_size[0]
    height = req.height or family.default_size[1]
    if req.task != "txt2img" and not (req.width and req.height):
        width, height = req.init_image.size[0] // 8 * 8, req.init_image.size[1] // 8 * 8
    warnings = (*first.warnings, *(hires.warnings if hires is not first else ()))
    return replace(
        checked,
        family=family,
        sampler=first,
        hires_sampler=hires,
        steps=req.steps or family.default_steps,
        cfg=family.default_cfg if req.cfg_scale is None else req.cfg_scale,
        width=width,
        height=height,
        warnings=tuple(dict.fromkeys(warnings)),
    )
