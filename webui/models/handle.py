"""ModelHandle: the checkpoint one job runs on, held from its first stage to its last.

As InvokeAI's ``LoadedModel``, a job gets its model once, as a context manager, and asks the handle
(not the manager) for everything it needs while it runs: the pipeline of each task, the scheduler
config the checkpoint came with, the refiner beside it, the memory escalation after out of memory.
The handle also holds what extensions add to the checkpoint for this job (``ModelAddition``: extra
components such as a ControlNet, another pipeline class, a patch such as an IP-Adapter), and undoes
the patches when the job ends, so one job's additions never reach the next (ComfyUI's
``ModelPatcher.clone``: the weights are shared, the per-run changes are kept apart).

    with manager.handle(entry) as model:
        pipe = model.pipeline("txt2img")

Everything goes through the manager's public methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

log = logging.getLogger(__name__)

Report = Callable[[str, str, str], None]  # (extension, hook, problem)


@dataclass(frozen=True)
class RefinerModel:
    """A second checkpoint used beside the job's (the SDXL refiner): its pipeline, family and scheduler config."""

    entry: Any
    pipeline: Any
    family: Any
    scheduler_config: dict


class ModelChanged(RuntimeError):
    """The manager switched to another checkpoint while a job held this one."""


class ModelHandle:
    """The loaded checkpoint of one job; use it as a context manager (``with manager.handle(entry) as model``)."""

    def __init__(self, manager: Any, entry: Any) -> None:
        self._manager = manager
        self.entry = entry
        self.family = manager.family
        self._additions: list[tuple[str, Any]] = []  # (extension, ModelAddition)
        self._derived: dict[str, Any] = {}  # task -> the pipeline built with the additions
        self._undo: list[Callable[[], None]] = []
        self._patched: Any = None  # the pipeline the patches were applied to
        self._report: Report | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._unpatch()
        self._additions, self._derived = [], {}

    # -- what the job reads ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.entry.stem

    @property
    def device(self) -> str:
        return self._manager.device.device

    @property
    def dtype(self) -> Any:
        return self._manager.device.dtype

    @property
    def checkpoint_pipeline(self) -> Any:
        """The checkpoint's loaded pipeline (its modules; every task's pipeline shares them)."""
        self._check()
        return self._manager.loaded.pipeline

    def pipeline(self, task: str) -> Any:
        """The pipeline the passes of ``task`` run: the checkpoint's, or the class an addition asks for."""
        self._check()
        if not self._applies(task):
            return self._manager.pipeline(task)
        if task not in self._derived:
            self._derived[task] = self._build(task)
        return self._derived[task]

    def scheduler_config(self) -> dict:
        """The scheduler config the checkpoint came with (every sampler is built from it)."""
        return self._manager.scheduler_config()

    @property
    def inpainting(self) -> bool:
        """Whether the checkpoint is a 9-channel inpainting model."""
        pipe = self.checkpoint_pipeline
        model = getattr(pipe, "unet", None) or pipe.transformer
        return getattr(model.config, "in_channels", 4) == 9

    def refiner(self, entry: Any, task: str = "img2img") -> RefinerModel:
        """The refiner checkpoint, loaded beside this one and kept (``KeyError`` / ``ValueError`` as the manager)."""
        pipe, family = self._manager.secondary(entry, task)
        return RefinerModel(entry, pipe, family, self._manager.scheduler_config(secondary=True))

    # -- what the job changes on it ----------------------------------------------------------
    def use_vae(self, entry: Any) -> None:
        """A VAE from models/VAE for this and later jobs (None: the checkpoint's own)."""
        self._manager.set_vae(entry)
        self._derived.clear()

    def vae_name(self) -> str:
        return self._manager.vae_name()

    def use_loras(self, loras: Sequence[tuple[Any, float]]) -> None:
        """Exactly these LoRAs (catalog entry or name, weight) active; ``LoraError`` for one that does not fit."""
        self._manager.apply_loras(list(loras))

    def add(self, additions: Sequence[tuple[str, Any]], report: Report) -> None:
        """Extensions' ``ModelAddition``s for this job: components and pipeline classes now, patches applied now.

        A patch that fails is reported against its extension and left out; the job goes on.
        """
        self._additions = list(additions)
        self._report = report
        self._derived.clear()
        self._patch()

    # -- out of memory -----------------------------------------------------------------------
    def release_memory(self) -> None:
        from webui.memory.apply import release_memory

        release_memory(self.device)

    def escalate_memory(self, batch_size: int, allowed: bool = True) -> bool:
        """After out of memory: switch to the next stronger memory mode (when allowed and one is left)."""
        from webui.memory.planner import escalate

        self.release_memory()
        manager = self._manager
        registry = getattr(manager, "memory_registry", None)
        if not allowed or registry is None:
            return False
        new = escalate(manager.memory_plan, registry, self.family, self.device, batch_size=batch_size)
        if new is None:
            return False
        log.warning("out of memory: retrying with memory modes %s", new.describe())
        manager.set_memory_plan(new)
        self._derived.clear()  # a reload gives new modules: the additions' pipelines are built again
        if self._undo and manager.loaded.pipeline is not self._patched:
            self._undo = []  # the patched pipeline is gone with its patches
            self._patch()
        return True

    def oom_message(self, width: int, height: int, batch_size: int) -> str:
        """What to turn on (Settings > Memory) after out of memory at this size."""
        from webui.memory.planner import oom_message

        manager = self._manager
        registry = getattr(manager, "memory_registry", None)
        if registry is None:
            return "Out of memory. Use a smaller size or batch size; the app keeps running."
        return oom_message(
            manager.memory_plan, registry, self.family, self.device, width=width, height=height, batch_size=batch_size
        )

    # -- internals ---------------------------------------------------------------------------
    def _check(self) -> None:
        current = self._manager.current_entry
        if self.entry is not None and (
            current is None or (current.path, current.mtime_ns) != (self.entry.path, self.entry.mtime_ns)
        ):
            raise ModelChanged(f"the checkpoint {self.entry.name} was unloaded or switched while a job was using it")

    def _applies(self, task: str) -> bool:
        return any(task in a.pipelines or (a.components and not a.pipelines) for _, a in self._additions)

    def _build(self, task: str) -> Any:
        """The task's pipeline class (or an addition's) over the checkpoint's modules plus the additions' components."""
        from webui.memory.apply import share_offload_state
        from webui.models.manager import derive_pipeline

        base = self._manager.pipeline(task)
        class_name, chosen_by = type(base).__name__, ""
        components: dict[str, Any] = {}
        for ext, addition in self._additions:
            if addition.pipelines and task not in addition.pipelines:
                continue
            wanted = addition.pipelines.get(task)
            if wanted and chosen_by and wanted != class_name:
                self._tell(
                    ext, f"{addition.name}: {task} already runs {class_name} (from {chosen_by}); {wanted} left out"
                )
                continue
            if wanted:
                class_name, chosen_by = wanted, ext
            components.update(addition.components)
        source = self._manager.loaded.pipeline
        try:
            pipe = derive_pipeline(source, class_name, components)
        except Exception as exc:  # the message names the extension and the class
            raise ValueError(
                f"cannot build {class_name} for {task} (asked by {chosen_by or 'an extension'}): {exc}"
            ) from exc
        share_offload_state(source, pipe)
        return pipe

    def _patch(self) -> None:
        pipe = self._manager.loaded.pipeline
        for ext, addition in self._additions:
            if addition.patch is None:
                continue
            try:
                undo = addition.patch(pipe)
            except Exception as exc:  # noqa: BLE001 - isolated: reported against the extension
                self._tell(ext, f"{addition.name}: the patch failed: {type(exc).__name__}: {exc}")
                continue
            if callable(undo):
                self._undo.append(undo)
        self._patched = pipe

    def _unpatch(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:  # the next job must still start
                log.exception("undoing an extension's model patch failed")
        self._patched = None

    def _tell(self, extension: str, problem: str) -> None:
        if self._report is not None:
            self._report(extension, "webui_job_models", problem)
        else:
            log.warning("extension %r: %s", extension, problem)
