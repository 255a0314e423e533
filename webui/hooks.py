"""The hook specs: every point where built-ins and extensions plug into the app.

A hook spec is a documented function below; an implementation is a function with the same name in
an extension's module (or any plugin object), marked ``@hookimpl``, that takes any subset of the
spec's arguments, by name. ``webui.extensions.ExtensionHost`` checks implementations against these
specs when it registers them and calls them; see ``docs/EXTENSIONS.md`` for the author's guide.

Rules that hold for every hook:

- Errors are isolated. An exception raised by an implementation is caught, logged with the
  extension's name and shown in the Extensions tab; the other implementations still run and the job
  goes on. An extension that keeps failing is turned off for the session. (One exception:
  ``JobRefused`` raised in ``webui_before_job``, ``webui_job_models`` or ``webui_stage_arguments``
  fails the job on purpose, with its message.)
- Order: implementations marked ``@hookimpl(tryfirst=True)`` run first, ``trylast=True`` last, the
  rest in between; within each group they run in registration order: built-ins, then extensions
  from ``extensions/`` in folder-name order, then installed packages in entry-point name order.
- Chaining: for hooks that may return a replacement (request, latents, image), each implementation
  sees the previous one's result. Returning None keeps the value unchanged.
- ``options`` (every hook but ``webui_settings``): a read-only mapping of the extension settings'
  current values (name -> value), declared through ``webui_settings``.
- Threads: start-up hooks run on the main thread; job hooks on the generation worker thread (the one
  thread that owns the GPU, so they may use torch freely but should be quick); UI hooks on a web
  server thread.

This module imports nothing from the app, so an extension can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

PROJECT = "webui"
ENTRY_POINT_GROUP = "webui.extensions"  # pip-installed plugins: [project.entry-points."webui.extensions"]

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# A tab an extension adds: (title, build) where build() creates Gradio components (it runs inside gr.Tab).
TabBuilder = tuple[str, Callable[[], Any]]


class JobRefused(Exception):
    """Raise it to fail the job with this message (the only hook error that is not isolated).

    Allowed in ``webui_before_job``, ``webui_job_models`` and ``webui_stage_arguments`` (e.g. a
    ControlNet model of another family than the checkpoint). ``field`` names the request field at
    fault, so the UI and the API can point at it ("" = none).
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SettingSpec:
    """A setting an extension adds to the Settings tab (``webui_settings``).

    ``name`` is global across extensions: prefix it with your extension's name ("my_ext_strength").
    The value has the type of ``default`` (bool, int, float or str); ``choices`` limits a str/int
    setting to a list. Read the current value from the ``options`` argument of any other hook.
    """

    name: str
    default: Any
    label: str
    section: str = "Extensions"
    choices: Sequence[Any] | None = None
    info: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"setting name {self.name!r} must be letters, digits, '_' or '.'")
        if not isinstance(self.default, (bool, int, float, str)):
            raise TypeError(f"setting {self.name!r}: default must be a bool, int, float or str")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
            if self.default not in self.choices:
                raise ValueError(f"setting {self.name!r}: default {self.default!r} is not one of {self.choices}")

    def problem(self, value: Any) -> str:
        """Why ``value`` cannot be this setting's value ("" when it can): the type of the default, one of choices."""
        kind = type(self.default)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        fits = (
            is_int
            if kind is int
            else (is_int or isinstance(value, float))
            if kind is float
            else isinstance(value, kind)
        )
        if not fits:
            return f"setting {self.name!r} takes a {kind.__name__}, not {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"setting {self.name!r} must be one of {list(self.choices)}, not {value!r}"
        return ""


@dataclass(frozen=True)
class ModelLoadedEvent:
    name: str  # checkpoint name as listed in the UI
    family: str  # family id (webui.families): sd15, sdxl, sdxl_refiner, sd3, ...
    pipeline: Any  # the loaded diffusers pipeline (do not move it between devices)
    path: str = ""


@dataclass(frozen=True)
class StepEvent:
    job_id: str
    step: int  # 1-based step within the current pass
    total_steps: int  # steps of the current pass
    latents: Any  # torch tensor (batch, channels, height / 8, width / 8) after this step
    timestep: Any  # the scheduler's timestep for this step (tensor or number)
    family: str  # family id of the model that runs this pass
    pass_label: str = ""  # "txt2img", "img2img", "hires fix", "refiner", "inpaint"


@dataclass(frozen=True)
class ImageEvent:
    image: Any  # PIL.Image.Image, decoded
    index: int  # position of the image in the job (0-based)
    seed: int
    request: Any  # the GenerationRequest that made it (after webui_before_job)
    job_id: str = ""


@dataclass(frozen=True)
class SaveEvent:
    image: Any  # PIL.Image.Image about to be / just written
    infotext: str  # A1111 "parameters" text
    index: int
    seed: int
    request: Any
    job_id: str = ""
    path: str = ""  # set for webui_after_save: where the file was written


@dataclass(frozen=True)
class JobModelsEvent:
    """What ``webui_job_models`` sees: the job, and the checkpoint it runs on (loaded)."""

    job_id: str
    request: Any  # the GenerationRequest (after webui_before_job)
    family: str  # family id of the checkpoint
    task: str  # "txt2img", "img2img" or "inpaint"
    pipeline: Any  # the checkpoint's loaded pipeline: read its modules (unet / transformer, vae ...), do not move it
    device: str  # where the job computes ("cuda", "cpu" ...)
    dtype: Any  # the torch dtype the checkpoint computes in


@dataclass(frozen=True)
class ModelAddition:
    """What an extension adds to the checkpoint for one job (the return value of ``webui_job_models``).

    - ``components``: modules handed to the pipeline beside the checkpoint's own, by the name of the
      pipeline class's ``__init__`` argument (``{"controlnet": model}``, ``{"adapter": t2i_adapter}``,
      ``{"image_encoder": encoder}``). Put them on ``event.device`` in ``event.dtype`` yourself.
    - ``pipelines``: task -> the diffusers pipeline class (its name) that the passes of that task run,
      built from the checkpoint's components plus ``components`` (no copy of the weights), e.g.
      ``{"txt2img": "StableDiffusionControlNetPipeline", "img2img": "StableDiffusionControlNetImg2ImgPipeline"}``.
      Without it the components go to the task's usual class, which must take them.
    - ``patch(pipeline)``: change the checkpoint's loaded pipeline for this job (``pipeline.load_ip_adapter``);
      return the call that undoes it. The undo runs when the job ends, however it ends.
    """

    name: str
    components: Mapping[str, Any] = field(default_factory=dict)
    pipelines: Mapping[str, str] = field(default_factory=dict)
    patch: Callable[[Any], Callable[[], None] | None] | None = None


@dataclass(frozen=True)
class StageEvent:
    """One denoising pass about to call its pipeline (``webui_stage_arguments``, ``webui_step_callbacks``)."""

    job_id: str
    stage: str  # "txt2img", "img2img", "inpaint", "refiner", "hires fix"
    task: str  # the pipeline task of this pass ("refiner" and "hires fix" run img2img)
    request: Any  # the GenerationRequest
    family: str  # family id of the model this pass runs on (the refiner's for "refiner")
    pipeline: Any  # the pipeline that will be called (a ModelAddition's class where one applies)
    width: int  # size of this pass's images (hires fix: the upscaled size)
    height: int
    steps: int  # num_inference_steps of the call
    batch_size: int  # images in this batch
    arguments: Mapping[str, Any]  # the call's arguments so far (read-only)


class HookSpecs:
    """The hook specifications. Implement any of them in your extension with ``@hookimpl``."""

    # --- start-up (main thread, once) -----------------------------------------------------------

    @hookspec
    def webui_register_samplers(self, table: Any, options: Mapping[str, Any]) -> None:
        """Add samplers or schedule types to the sampler table, before the UI is built.

        ``table`` is a ``webui.generation.samplers.SamplerTable``: call
        ``table.register_sampler(SamplerSpec(...))`` / ``table.register_schedule(ScheduleType(...))``.
        A name that is taken raises, and the error is reported against your extension.
        The built-in samplers are registered through this same hook, first. Return value ignored.
        """

    @hookspec
    def webui_register_memory_modes(self, registry: Any, options: Mapping[str, Any]) -> None:
        """Add memory modes (``webui.memory``) to the registry: ``registry.register(mode)``.

        The built-in modes (offloads, VAE tiling, ...) are registered through this same hook, first.
        """

    @hookspec
    def webui_settings(self) -> list[SettingSpec]:
        """Return the settings this extension adds (a list of ``SettingSpec``), shown in the Settings tab.

        Called when the extension is registered. Names must be unique across extensions.
        """

    @hookspec
    def webui_ui_tabs(self, webui: Any, services: Any, options: Mapping[str, Any]) -> list[TabBuilder]:
        """Return the tabs to add: a list of ``(title, build)``; ``build()`` creates Gradio components.

        ``build`` runs inside ``gr.Tab(title)`` while the page is built; an error in it shows in that tab.
        ``webui`` is the app as extensions see it (``webui.extension_facade.ExtensionFacade``): the
        backend (plain data in and out), the settings and options read-only, ``add_route``; keep what
        you need for event handlers. ``services`` is the same object under its old name.
        """

    @hookspec
    def webui_app_started(self, app: Any, webui: Any, services: Any, options: Mapping[str, Any]) -> None:
        """Add API routes: ``app`` is the FastAPI app (``@app.get("/my-ext/...")``), before the UI is mounted.

        ``webui`` is the ``ExtensionFacade`` (as in ``webui_ui_tabs``; ``webui.add_route`` adds a route
        too); ``services`` the same object under its old name. Prefix your paths with your extension's
        name. Return value ignored.
        """

    # --- models and jobs (generation worker thread) --------------------------------------------

    @hookspec
    def webui_model_loaded(self, event: ModelLoadedEvent, options: Mapping[str, Any]) -> None:
        """A checkpoint was loaded (or swapped in from the RAM cache). Return value ignored."""

    @hookspec
    def webui_before_job(self, request: Any, options: Mapping[str, Any]) -> Any:
        """Before a job runs: return a changed request (``dataclasses.replace(request, ...)``) or None.

        ``request`` is a frozen ``webui.generation.requests.GenerationRequest``; the next
        implementation sees your result. Returning another type is reported and ignored. Raise
        ``JobRefused("why")`` to fail the job with that message.
        """

    @hookspec
    def webui_step(self, event: StepEvent, options: Mapping[str, Any]) -> Any:
        """After each denoising step: return a tensor to replace the latents, or None.

        Like A1111's cfg-denoiser callback. The replacement must have the latents' shape (it is
        moved to their device and dtype); the next implementation and the sampler continue from it.
        Runs once per step of every pass: keep it fast.
        """

    @hookspec
    def webui_script_args(self, name: str, args: Any, request: Any, options: Mapping[str, Any]) -> Any:
        """Own a script of the request's ``alwayson_scripts`` (A1111's API field): return its checked args, or None.

        ``name`` is the script's name in lower case ("controlnet"), ``args`` what the client sent for it
        (A1111: the list under ``"args"``) or what you returned for it before: the request is checked when
        the API answers and again when the job starts, so accept your own result too. Return plain data
        (numbers, strings, lists, dicts, tuples of frozen dataclasses, PIL images decoded with
        ``webui.security.images``); the job then finds it in ``request.alwayson_scripts[name]``. Return None
        when the script is not yours; a script no extension owns is refused (A1111's "not found").
        Raise ``JobRefused("why", field="alwayson_scripts")`` for args you cannot use: nothing is queued.
        """

    @hookspec
    def webui_job_models(self, event: JobModelsEvent, options: Mapping[str, Any]) -> Any:
        """Extra models to load beside the checkpoint for this job: a ``ModelAddition``, a list of them, or None.

        Called once per job, after the checkpoint, its VAE and LoRAs are in place and before the first
        pass. An addition's ``components`` and ``pipelines`` decide which pipeline class each pass runs
        (a ControlNet pipeline built from the checkpoint's modules plus the ControlNet); its ``patch``
        changes the loaded pipeline for the job and is undone at the end (IP-Adapter). Load and cache
        your models yourself (on ``event.device``, in ``event.dtype``). Raise ``JobRefused("why", field)``
        when a model cannot run with this checkpoint (another family).
        """

    @hookspec
    def webui_stage_arguments(self, event: StageEvent, options: Mapping[str, Any]) -> dict[str, Any] | None:
        """Extra arguments for this pass's pipeline call: a dict, or None.

        Called for every pass of every batch (``event.stage``: first pass, refiner, hires fix), so the
        arguments can follow the pass's size and batch: ``{"image": control, "controlnet_conditioning_scale":
        0.8, "control_guidance_end": 0.5}``, ``{"ip_adapter_image_embeds": [embeds]}``. An argument the
        app sets itself (``prompt_embeds``, ``latents``, ``image`` of img2img ...) or one the pipeline does
        not take is reported and left out. Arguments of several extensions are merged; one that an earlier extension gave is reported.
        """

    @hookspec
    def webui_step_callbacks(self, event: StageEvent, options: Mapping[str, Any]) -> Any:
        """Per-step changes for this pass: a callback, a list of them, or None.

        A callback is what diffusers' ``callback_on_step_end`` takes: ``callback(pipeline, step_index,
        timestep, tensors) -> dict`` (step_index 0-based), with a ``tensor_inputs`` attribute naming the
        tensors it reads or replaces (from the pipeline's ``_callback_tensor_inputs``: ``latents``,
        ``prompt_embeds``, ``image`` ...; default ``["latents"]``). diffusers' own callbacks
        (``diffusers.callbacks.SDCFGCutoffCallback``, ``IPAdapterScaleCutoffCallback``) work as they are.
        The returned tensors replace the named ones for the next step (per-step conditioning); it may
        also change the pipeline's settings (``pipeline.set_ip_adapter_scale``). Callbacks run after each
        step, before ``webui_step`` and the progress update. Pipelines with only the older ``callback``
        argument (``StableDiffusionAdapterPipeline``) get ``latents`` alone, changed in place.
        """

    @hookspec
    def webui_image(self, event: ImageEvent, options: Mapping[str, Any]) -> Any:
        """Each finished image, before it is saved: return a PIL image to replace it, or None."""

    @hookspec
    def webui_before_save(self, event: SaveEvent, options: Mapping[str, Any]) -> dict[str, Any] | None:
        """Before an image is written: return extra infotext fields ``{"My field": "value"}``, or None.

        Fields of all implementations are merged (a later one wins on the same key); they never
        replace the core fields (Steps, Sampler, Seed ...). Keys may not contain ':' or newlines.
        """

    @hookspec
    def webui_after_save(self, event: SaveEvent, options: Mapping[str, Any]) -> None:
        """After an image was written: ``event.path`` and ``event.infotext`` are final. Return value ignored."""

    # --- UI (web server thread) ------------------------------------------------------------------

    @hookspec
    def webui_infotext_pasted(self, text: str, fields: dict[str, Any], options: Mapping[str, Any]) -> None:
        """Infotext was pasted into the UI and parsed into ``fields``; update ``fields`` in place.

        Use it to read your own fields back (A1111's on_infotext_pasted). Return value ignored.
        """


HOOK_NAMES: tuple[str, ...] = tuple(name for name in vars(HookSpecs) if name.startswith(f"{PROJECT}_"))


__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_NAMES",
    "PROJECT",
    "HookSpecs",
    "ImageEvent",
    "JobModelsEvent",
    "JobRefused",
    "ModelAddition",
    "ModelLoadedEvent",
    "SaveEvent",
    "SettingSpec",
    "StageEvent",
    "StepEvent",
    "TabBuilder",
    "hookimpl",
    "hookspec",
]
