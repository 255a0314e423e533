"""The plain data the backend takes and returns, and the errors it raises.

Every record here is a dataclass of str / int / float / bool / None, tuples, lists, dicts and PIL
images: it pickles, so a backend in another process (a Ray Serve replica) can receive and return it.
None holds a live object (a manager, an engine, a pipeline, a job with its events) or a callable.
The records are frozen where the UI and API only read them.

Errors carry plain fields too (a message, the request field at fault, the valid names), so they
cross a process boundary the same way; ``RequestError`` (``webui.generation.requests``) is the
error for a bad request field, as it is everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VAE_NONE",
    "BackendError",
    "Busy",
    "ControlResult",
    "DownloadChoice",
    "ExtensionSetting",
    "FamilyChoices",
    "FamilyInfo",
    "Folders",
    "JobOutcome",
    "JobProgress",
    "JobSnapshot",
    "LoadReport",
    "LoadedModel",
    "LoraInfo",
    "MemoryUsage",
    "ModelInfo",
    "NotEnoughMemory",
    "NotFound",
    "QueueEntry",
    "QueueFull",
    "QueueList",
    "QueueState",
    "Refusal",
    "Refused",
    "RuntimeOptions",
    "SamplerInfo",
    "ScheduleInfo",
    "Step",
    "StyleInfo",
    "StyledPrompt",
    "TaskFailed",
    "TokenCount",
]

# "Automatic" / "None" / "": no VAE from models/VAE, the checkpoint's own.
VAE_NONE = ("", "Automatic", "None")

# --- errors ------------------------------------------------------------------------------------------


class BackendError(Exception):
    """Something the backend refused or could not do; ``message`` is written for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError subclasses would quote the message
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # pickles with its fields (a replica raises it to the ingress)
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[BackendError], fields: dict[str, Any]) -> BackendError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, fields.get("message", ""))
    exc.__dict__.update(fields)
    return exc


class NotFound(BackendError, KeyError):
    """No model, job or name like that; ``valid`` lists what exists, ``field`` the request field (or "")."""

    def __init__(self, message: str, kind: str = "", name: str = "", valid: list[str] | None = None, field: str = "") -> None:
        super().__init__(message)
        self.kind, self.name, self.valid, self.field = kind, name, valid, field


class QueueFull(BackendError):
    """The job queue is full; try again later."""


class Busy(BackendError, TimeoutError):
    """A task on the generation worker (a model load ...) did not finish within its time."""


class TaskFailed(BackendError):
    """A task on the generation worker failed; ``kind`` is what failed (the exception's class name)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class NotEnoughMemory(TaskFailed):
    """A model load refused before it started: the model cannot fit in RAM or on the GPU. The message says how
    much it needs, how much is free and what to free; the server and the model loaded before are unaffected."""


class Refused(BackendError):
    """An action the backend will not do as asked (an unknown extension, an install that is not allowed ...)."""


# --- models ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyInfo:
    """A model family as the page shows it: its name and defaults."""

    id: str
    label: str
    default_steps: int
    default_cfg: float
    default_size: tuple[int, int]
    resolution_presets: tuple[tuple[int, int], ...]
    is_flow: bool
    lora_group: str


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the models folder (a checkpoint, LoRA, VAE or text encoder)."""

    name: str  # path relative to its kind's folder: what the UI lists and requests name
    kind: str  # "checkpoint", "lora", "vae", "text_encoder"
    path: str
    format: str  # "safetensors", "diffusers" or "ckpt"
    size: int
    mtime_ns: int
    stem: str
    family: str | None = None  # family id, when the file says
    family_label: str = ""
    sha256: str | None = None  # only when already computed (never for a diffusers folder)
    demo: bool = False
    error: str | None = None  # why it cannot be used
    note: str = ""  # e.g. how a pickle-based file is loaded

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        """A1111's checkpoint title: ``name.safetensors [abcdef1234]`` (the name alone without a hash)."""
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name


@dataclass(frozen=True)
class LoadedModel:
    """The checkpoint the worker holds now."""

    model: ModelInfo
    family: FamilyInfo
    notes: tuple[str, ...] = ()  # the load's memory and speed notes
    vae: str = ""  # the VAE from models/VAE in use ("" = the checkpoint's own)

    @property
    def name(self) -> str:
        return self.model.name


@dataclass(frozen=True)
class LoadReport:
    """What a load did."""

    name: str
    family: str
    family_label: str
    seconds: float
    from_cache: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA file and whether it fits a family (the page's LoRA table)."""

    name: str  # what goes in <lora:name:weight>
    made_for: str
    usable: bool
    status: str


@dataclass(frozen=True)
class FamilyChoices:
    """What the controls offer for a family (``family`` None: no model loaded; ``defaults`` then the fallback's)."""

    family: FamilyInfo | None
    defaults: FamilyInfo
    samplers: dict[str, list[str]]  # task -> the samplers that run it as themselves
    all_samplers: list[str]
    default_sampler: str
    schedules: list[str]  # every schedule type


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    aliases: list[str]
    options: dict[str, str]


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    label: str
    aliases: list[str]
    default_rho: float | None
    need_inner_model: bool


@dataclass(frozen=True)
class TokenCount:
    used: int
    limit: int


@dataclass(frozen=True)
class DownloadChoice:
    name: str
    label: str


@dataclass(frozen=True)
class Step:
    """One step of a long action that streams (demo models, downloads): a line, and how far it got."""

    text: str
    fraction: float | None = None  # 0..1 when known
    final: bool = False  # the last step: ``text`` says what came of it


# --- jobs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobProgress:
    """A job's progress, as ``webui.generation.service.Progress`` (``preview`` None when left out)."""

    step: int = 0
    steps: int = 0
    done_steps: int = 0
    total_steps: int = 0
    images_done: int = 0
    images_total: int = 0
    eta_seconds: float | None = None
    preview: Any = None  # PIL image of the latest preview, when asked for and newer than the caller's
    preview_id: int = 0
    textinfo: str = ""

    @property
    def fraction(self) -> float:
        if not self.total_steps:
            return 0.0
        return min(1.0, self.done_steps / self.total_steps)


@dataclass(frozen=True)
class JobOutcome:
    """What a job made (while it runs: the images finished so far)."""

    images: list[Any] = field(default_factory=list)  # PIL images, in order
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # A1111 ``Processed.js()``-style summary
    interrupted: bool = False
    skipped_batches: int = 0


@dataclass(frozen=True)
class Refusal:
    """A job failed because of a request field (the API answers 422): which field, why, the valid values."""

    field: str
    message: str
    valid: list[str] | None = None


@dataclass(frozen=True)
class JobSnapshot:
    """A job as it is at one moment."""

    id: str
    state: str  # "queued", "running", "done", "interrupted", "failed"
    source: str  # "ui", "api", or what a task is ("model load")
    is_task: bool = False  # a model load or switch, not a generation
    position: int = 0  # 1 for the next job to run, 2 after it ...; 0 while running or finished
    created: float = 0.0  # time.time() when queued
    started: float | None = None  # time.time() when it began to run (None: not yet)
    progress: JobProgress = field(default_factory=JobProgress)
    error: str = ""  # why it failed, or why the app stopped it, in words
    error_field: str = ""  # the request field at fault ("" when none)
    stop_reason: str = ""  # why the app stopped it itself (the time budget)
    refusal: Refusal | None = None
    # the request field whose model could not fit in memory ("" when none): the load was refused before it
    # started, ``error`` says what it needs and what to free
    memory_refusal: str = ""
    interrupt_requested: bool = False
    skip_requested: bool = False
    n_iter: int = 1
    batch_size: int = 1
    result: JobOutcome | None = None  # once finished

    @property
    def finished(self) -> bool:
        return self.state in ("done", "interrupted", "failed")


@dataclass(frozen=True)
class QueueState:
    current: JobSnapshot | None
    waiting: int


@dataclass(frozen=True)
class ControlResult:
    """Interrupt / skip: whether a job was told, and which one ("" when none)."""

    done: bool
    job_id: str = ""


@dataclass(frozen=True)
class QueueEntry:
    """One job of the queue list (``Backend.queue_list``): waiting, running or finished this session."""

    id: str
    state: str  # "queued", "running", "done", "interrupted", "failed"
    owner: str  # who submitted it: "txt2img tab", "api 127.0.0.1", or what a task is ("model load")
    label: str  # what it makes, in a few words ("txt2img 512x512, 20 steps, 1 image: a cat ...")
    is_task: bool = False
    position: int = 0  # 1 for the next to run ...; 0 while running or finished
    created: float = 0.0  # time.time() when queued
    started: float | None = None  # time.time() when it began to run
    finished: float | None = None  # time.time() when it ended
    fraction: float = 0.0  # of the running job
    eta_seconds: float | None = None  # until it is done (queued: its wait plus its own run); None: unknown
    error: str = ""


@dataclass(frozen=True)
class QueueList:
    """Every job waiting or running, in the order they run, and the session's finished jobs (newest first)."""

    jobs: list[QueueEntry] = field(default_factory=list)
    history: list[QueueEntry] = field(default_factory=list)
    seconds_per_unit: float | None = None  # seconds per 512x512 image step, what waiting jobs' ETAs come from


# --- styles ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleInfo:
    """A prompt style of ``styles.csv`` (A1111's columns)."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


@dataclass(frozen=True)
class StyledPrompt:
    """Prompts with styles applied; ``unknown``: names asked for that no style has (left out, as A1111 does)."""

    prompt: str
    negative_prompt: str
    applied: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


# --- options and settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeOptions:
    """What the running app uses now and the API's options change (not saved to the config file).

    ``set_options`` takes ``preview_every``, ``ram_cache_models`` and ``ram_cache_gib`` (checkpoints kept in RAM
    besides the active one; write-only here, the Settings page shows the saved value).
    """

    preview_every: int
    outputs_dir: str  # read-only


@dataclass(frozen=True)
class MemoryUsage:
    """What the models take: the RAM cache (models parked there, least recently used first) against its budget,
    the active and secondary models, and on a GPU what this app holds there against what the device has."""

    cached: tuple[tuple[str, int], ...] = ()  # (checkpoint name, bytes) in the RAM cache
    cache_bytes: int = 0
    cache_budget_bytes: int = 0
    cache_max_models: int = 0
    active: str = ""  # the active checkpoint ("" when none)
    active_bytes: int = 0
    secondary_bytes: int = 0
    on_gpu: tuple[tuple[str, int], ...] | None = None  # (name, bytes between jobs); None: no GPU budgeted
    gpu_bytes: int = 0
    gpu_needed_bytes: int = 0  # the active model while it generates: its weights there + working memory
    gpu_free_bytes: int = 0
    gpu_total_bytes: int = 0


@dataclass(frozen=True)
class Folders:
    models: str
    outputs: str
    extensions: str
    config_file: str


@dataclass(frozen=True)
class ExtensionSetting:
    """A setting an extension declares (``webui.hooks.SettingSpec``: plain data)."""

    extension: str
    spec: Any


@dataclass(frozen=True)
class EmbeddingInfo:
    """A textual-inversion embedding and whether the loaded model can use it (``GET /sdapi/v1/embeddings``)."""

    name: str  # the word that uses it in a prompt (the file stem)
    step: int | None
    sd_checkpoint: str | None
    sd_checkpoint_name: str | None
    shape: int  # the vectors' width (SDXL: clip_l + clip_g)
    vectors: int
    usable: bool
    status: str  # "usable", or why it is skipped


@dataclass(frozen=True)
class UpscalerInfo:
    """One upscaler as A1111's ``/sdapi/v1/upscalers`` lists it (``model_path`` None for resampling)."""

    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None
