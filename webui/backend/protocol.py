"""``Backend``: everything the UI and the API ask of the app, as methods that take and return plain data.

Arguments and results are the records of ``webui.backend.records``, ``GenerationRequest`` /
``Limits`` (``webui.generation.requests``), ``Settings`` (``webui.config``), the extension host's
``Extension`` records and ``SettingSpec`` (``webui.hooks``), builtins and PIL images: nothing a
process boundary cannot carry. The in-process implementation is ``webui.backend.local.LocalBackend``;
a second one (Ray Serve replicas, issue 17) implements the same methods across processes.

Jobs are named by id. A caller follows a job by asking for its snapshot (``job``/``wait``), never
by holding it. The streaming actions (demo models, downloads) are generators of ``Step`` records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from webui.backend.records import (
    ControlResult,
    DownloadChoice,
    EmbeddingInfo,
    ExtensionSetting,
    FamilyChoices,
    FamilyInfo,
    Folders,
    JobSnapshot,
    LoadedModel,
    LoadReport,
    LoraInfo,
    MemoryUsage,
    ModelInfo,
    QueueList,
    QueueState,
    RuntimeOptions,
    SamplerInfo,
    ScheduleInfo,
    Step,
    StyledPrompt,
    StyleInfo,
    TokenCount,
    UpscalerInfo,
)

if TYPE_CHECKING:
    from webui.backend.output_records import OutputInfo, OutputPage, OutputTrashed
    from webui.config import Settings
    from webui.extensions import Extension
    from webui.generation.requests import GenerationRequest, Limits
    from webui.settings_edit import SaveResult
    from webui.upscale.extras import ExtrasRequest


@runtime_checkable
class Backend(Protocol):
    # --- jobs ---------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, source: str = "api", job_id: str | None = None) -> JobSnapshot:
        """Queue a generation; raises ``QueueFull``. The request is not validated here (see ``validate``).

        ``source`` is who asked ("txt2img tab", "api 127.0.0.1"); ``job_id`` names the job (A1111's
        ``force_task_id``; None: a new id), ``RequestError`` on ``force_task_id`` for an id in use.
        """
        ...

    def job(self, job_id: str, preview_after: int | None = None) -> JobSnapshot:
        """A job's snapshot; raises ``NotFound`` for an unknown (or long finished) job.

        ``preview_after``: the preview id the caller has; the preview comes along only when it is
        newer (None: never).
        """
        ...

    def wait(self, job_id: str, timeout: float, preview_after: int | None = None) -> JobSnapshot:
        """``job`` after the job finished or ``timeout`` seconds passed, whichever comes first."""
        ...

    def queue(self, preview: bool = True) -> QueueState:
        """The running job or task (with its latest preview when ``preview``) and how many wait."""
        ...

    def queue_list(self, history: int = 50) -> QueueList:
        """Every job waiting or running (owner, position, ETA) and up to ``history`` finished ones, newest first."""
        ...

    def cancel(self, job_id: str) -> ControlResult:
        """Take a waiting job out of the queue (it never runs); ``NotFound`` for an unknown id, ``Refused`` for a
        job that runs (stop it with ``interrupt``) or has finished."""
        ...

    def move_job(self, job_id: str, position: int) -> ControlResult:
        """Put a waiting job at ``position`` (1 = next); ``NotFound`` / ``Refused`` as ``cancel``."""
        ...

    def interrupt(self, job_id: str | None = None) -> ControlResult:
        """Stop a job (queued: it never runs) or, with no id, the running one. ``NotFound`` for an unknown id."""
        ...

    def skip(self, job_id: str | None = None) -> ControlResult:
        """Drop the current batch of a job (no id: the running one) and go on with the next."""
        ...

    # --- requests -----------------------------------------------------------------------------------

    def limits(self) -> Limits:
        """The limits requests are checked against now (the Settings page changes them)."""
        ...

    def validate(self, request: GenerationRequest, names: bool = True) -> GenerationRequest:
        """Check a request before it is queued; raises ``RequestError`` (422) or ``NotFound`` (404).

        Always the request's own checks (sizes, steps, an empty mask ...); with ``names`` also that
        its checkpoint, refiner, VAE and LoRAs are installed and its samplers known.
        """
        ...

    def count_tokens(self, text: str) -> TokenCount:
        """The prompt's CLIP tokens and the limit A1111's counter shows (75 per chunk)."""
        ...

    # --- prompt styles (A1111's styles.csv) -----------------------------------------------------------

    def styles(self) -> list[StyleInfo]:
        """The styles of the styles file, in file order ([] when there is no file)."""
        ...

    def apply_styles(self, prompt: str, negative_prompt: str, names: list[str]) -> StyledPrompt:
        """The prompts with the named styles applied in order (A1111's ``{prompt}`` / ", " rule)."""
        ...

    def extract_styles(self, prompt: str, negative_prompt: str) -> StyledPrompt:
        """The styles a styled prompt pair was made with (``applied``, in order) and the prompts without them."""
        ...

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> StyleInfo:
        """Add or replace a style and write the file atomically (a .bak of the old one); ``RequestError`` for a
        bad name, ``TaskFailed`` when the file cannot be written."""
        ...

    # --- models -------------------------------------------------------------------------------------

    def families(self) -> list[FamilyInfo]: ...

    def models(self, kind: str = "checkpoint", usable: bool = True) -> list[ModelInfo]:
        """The models of a kind in the models folder (``usable``: only those that can be used)."""
        ...

    def find_model(self, name: str, kind: str = "checkpoint") -> ModelInfo:
        """A model by name, stem, A1111 title or short hash; ``NotFound`` listing the usable ones."""
        ...

    def loaded(self) -> LoadedModel | None: ...

    def next_checkpoint(self) -> ModelInfo | None:
        """The checkpoint a job naming none runs on: the loaded one, else the default, else the first."""
        ...

    def load_model(
        self, name: str, timeout: float | None = None, source: str = "model load", client: str = ""
    ) -> LoadReport:
        """Load a checkpoint on the worker (after the jobs already queued); ``TaskFailed`` / ``Busy``.

        ``source`` names the task while it waits or runs (``queue()`` shows it). ``client``: who asked (a job's
        ``source``, "api 127.0.0.1"); on the Ray backend the checkpoint becomes that client's default for the
        jobs it sends without one, instead of a load every client's jobs see.
        """
        ...

    def unload_model(self, timeout: float | None = None, source: str = "unloading the checkpoint") -> None: ...

    def set_vae(self, name: str | None, timeout: float | None = None, source: str = "VAE switch") -> str:
        """Use a VAE from models/VAE on the loaded checkpoint (None, "Automatic": its own); the VAE in use."""
        ...

    def refresh_models(self) -> None:
        """Rescan the models folder."""
        ...

    def family_choices(self, family: str | None) -> FamilyChoices:
        """Samplers and defaults the controls offer for a family id (None: no model loaded)."""
        ...

    def schedules_for(self, family: str | None, sampler: str | None) -> list[str]:
        """Schedule types the sampler runs as asked on the family; every one when either is unknown."""
        ...

    def samplers(self, family: str | None) -> list[SamplerInfo]:
        """A1111's sampler list for a family (None: every sampler)."""
        ...

    def schedules(self) -> list[ScheduleInfo]: ...

    def loras(self, family: str | None) -> list[LoraInfo]:
        """The LoRAs, each marked usable or not for a family (None: no model loaded, all are)."""
        ...

    def embeddings(self) -> list[EmbeddingInfo]:
        """The textual-inversion embeddings (read again from disk), each usable or not by the loaded model."""
        ...

    def create_demo_models(self) -> Iterator[Step]:
        """Write the tiny demo checkpoints and LoRAs (random weights) and rescan; a step per family."""
        ...

    def download_choices(self) -> list[DownloadChoice]: ...

    def download_checkpoint(self, name: str) -> Iterator[Step]:
        """Download a default checkpoint (resumable, hash-checked) into models/; steps with the fraction done."""
        ...

    def download_t5_tokenizer(self) -> Iterator[Step]: ...

    # --- settings and options -----------------------------------------------------------------------

    def settings(self) -> Settings:
        """The settings as they are now (a frozen copy; change them with ``save_settings``)."""
        ...

    def folders(self) -> Folders: ...

    def device_description(self, wait: bool = True) -> str | None:
        """What the app computes with and why (``--precision auto``'s choice).

        The device is chosen in the background while the app starts (it needs torch): ``wait=False``
        answers None instead of waiting while it is still being chosen.
        """
        ...

    def memory_usage(self) -> MemoryUsage:
        """What the RAM cache and the GPU hold now, against their budgets."""
        ...

    def options(self) -> RuntimeOptions: ...

    def set_options(self, changes: Mapping[str, Any]) -> RuntimeOptions:
        """Change live options for this run (not saved); ``RequestError`` for an unknown or bad one."""
        ...

    def setting_values(self) -> dict[str, Any]:
        """The current value of every setting the page edits, the extensions' too."""
        ...

    def default_setting_values(self) -> dict[str, Any]: ...

    def extension_settings(self) -> list[ExtensionSetting]: ...

    def save_settings(self, values: Mapping[str, Any], reset: bool = False) -> SaveResult:
        """Check, apply what applies live, persist to the config file; nothing changes when one is wrong."""
        ...

    # --- extensions ---------------------------------------------------------------------------------

    def extensions(self) -> list[Extension] | None:
        """Every extension the host knows (None: the app runs without an extension host)."""
        ...

    def set_extension_enabled(self, name: str, enabled: bool) -> Extension:
        """Turn an extension on or off (saved); ``Refused`` with the reason."""
        ...

    def install_extension_requirements(self, name: str) -> str:
        """pip-install an extension's requirements (where allowed); pip's output, or ``Refused``."""
        ...

    # --- upscalers and Extras ----------------------------------------------------------------------

    def upscalers(self, refresh: bool = False) -> list[UpscalerInfo]:
        """Resampling (None, Lanczos, Nearest) and the upscaler models (models/ESRGAN, upscale_models ...)."""
        ...

    def check_extras(self, request: ExtrasRequest) -> ExtrasRequest:
        """An Extras request as it will run; ``RequestError`` for a bad field or an unknown upscaler."""
        ...

    def submit_extras(self, request: ExtrasRequest, source: str = "api", job_id: str | None = None) -> JobSnapshot:
        """Queue an Extras job (checked first); follow it with ``job``/``wait``, stop it with ``interrupt``."""
        ...

    def extras_folder_images(self, folder: str) -> tuple[tuple[Any, ...], tuple[str, ...]]:
        """The images and file names of a batch folder inside the outputs folder; ``RequestError`` otherwise."""
        ...

    # --- outputs browser ----------------------------------------------------------------------------

    def list_outputs(self, page: int = 1, folder: str = "all", date: str = "", per_page: int = 36) -> OutputPage:
        """A page of the images in the outputs folder, newest first; ``Refused`` for an unknown folder filter."""
        ...

    def output_info(self, output_id: str) -> OutputInfo:
        """An image's details and infotext; ``NotFound`` for an id the listing does not hold now."""
        ...

    def output_image(self, output_id: str) -> Any:
        """The image itself (a loaded PIL image); ``NotFound`` as ``output_info``."""
        ...

    def output_thumbnail(self, output_id: str) -> Any:
        """The image's thumbnail (PIL, made once and cached in ``cache/thumbnails``); ``NotFound`` as above."""
        ...

    def trash_output(self, output_id: str) -> OutputTrashed:
        """Move an image (and its sidecar ``.txt``) to ``outputs/.trash/<today>/``; never deletes."""
        ...
