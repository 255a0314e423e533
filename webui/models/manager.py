"""ModelManager: owns the loaded checkpoint, hot-swaps it, and derives task pipelines.

One checkpoint is active on the device. Switching releases it (no reference
survives here), or parks it in a bounded RAM cache so switching back is fast.
txt2img, img2img and inpaint pipelines are built from the active pipeline's
modules: one set of weights, no copy, no dtype change.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from webui.models.catalog import CatalogEntry, ModelCatalog
from webui.models.device_budget import DeviceFootprint, DeviceMemoryProbe
from webui.models.devices import DeviceChoice
from webui.models.families import TASKS, FamilySpec
from webui.models.ram_budget import (
    SAFETY_MARGIN_BYTES,
    MemoryProbe,
    NotEnoughMemoryError,
    SystemMemory,
    budget_bytes,
    checkpoint_estimate,
    gib,
    measured_bytes,
    refusal_message,
)

log = logging.getLogger(__name__)


class ModelNotLoadedError(RuntimeError):
    pass


@dataclass
class _Slot:
    entry: CatalogEntry
    loaded: Any  # webui.models.loader.LoadedModel
    tasks: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    # LoRA adapters live on this model's modules, so their bookkeeping lives with the model.
    loras: Any = None
    vae: Any = None  # webui.models.vae.VaeOverride while a VAE from models/VAE is in use
    # The checkpoint's scheduler config as loaded: every sampler is built from it, never from a
    # scheduler a previous job replaced.
    scheduler_config: dict = field(default_factory=dict)
    plan: Any = None  # webui.memory.planner.MemoryPlan the model was loaded with
    nbytes: int = 0  # parameter + buffer bytes as measured after the load (the RAM cache's accounting)
    device_footprint: DeviceFootprint | None = None  # what it holds on the GPU (None: not on a GPU)

    def __post_init__(self) -> None:
        if self.plan is None:
            self.plan = getattr(self.loaded, "plan", None)
        if not self.scheduler_config:
            scheduler = getattr(self.loaded.pipeline, "scheduler", None)
            self.scheduler_config = dict(getattr(scheduler, "config", {}))

    @property
    def key(self) -> tuple[Path, int]:
        return (self.entry.path, self.entry.mtime_ns)


@dataclass(frozen=True)
class _DeviceRoom:
    """A load that fits on the device: its plan and footprint, and what must leave the device first."""

    plan: Any  # the memory plan the load uses
    footprint: DeviceFootprint
    evict: tuple[tuple[Path, int], ...] = ()  # RAM-cache keys whose weights still sit on the device
    drop_secondary: bool = False


@dataclass(frozen=True)
class LoadReport:
    name: str
    family: str
    seconds: float
    from_cache: bool
    notes: tuple[str, ...]


def _return_freed_memory_to_os() -> None:
    """glibc keeps freed model weights in its heap; hand them back so RSS falls after a swap."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


def _residue(slot: _Slot) -> int:
    """Bytes a parked model still holds on the GPU: what its offload mode keeps there (moved-off models: 0)."""
    fp = slot.device_footprint
    placed = slot.plan is not None and slot.plan.manages_placement
    return fp.at_rest if fp is not None and placed else 0


def derive_pipeline(pipe: Any, class_name: str, extra: dict[str, Any] | None = None) -> Any:
    """A pipeline of another class over the same module objects (no copy, no cast).

    ``from_pipe`` would cast every shared module to one dtype; building the
    class from the components keeps each module exactly as it is. ``extra``:
    components beside the pipeline's own (an extension's ControlNet).
    """
    import diffusers

    if type(pipe).__name__ == class_name and not extra:
        return pipe
    cls = getattr(diffusers, class_name)
    params = inspect.signature(cls.__init__).parameters
    components = {**pipe.components, **(extra or {})}
    kwargs = {}
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in components:
            kwargs[name] = components[name]
        elif name in pipe.config and not name.startswith("_"):
            kwargs[name] = pipe.config[name]
        elif param.default is inspect.Parameter.empty:
            kwargs[name] = None
    return cls(**kwargs)


class ModelManager:
    def __init__(
        self,
        catalog: ModelCatalog,
        device: DeviceChoice,
        cache_dir: Path,
        families: Any,
        ram_cache_models: int = 0,
        t5_tokenizer_dir: Path | None = None,
        loader: Callable[..., Any] | None = None,
        on_loaded: Callable[[LoadReport], None] | None = None,
        memory_registry: Any = None,
        memory_modes: str = "none",
        speed: Any = None,
        ram_cache_gib: float | None = None,
        memory: MemoryProbe | None = None,
        converted_cache_gib: float = 0.0,
        device_memory: DeviceMemoryProbe | None = None,
    ) -> None:
        self.catalog = catalog
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.families = families
        self.t5_tokenizer_dir = t5_tokenizer_dir
        self._ram_cache_models = ram_cache_models
        # The machine's memory (available / total bytes); the RAM cache's budget in bytes (None or a
        # negative number of GiB: derived from the machine's RAM, see webui.models.ram_budget).
        self._memory = memory if memory is not None else SystemMemory()
        self._ram_budget = budget_bytes(-1 if ram_cache_gib is None else ram_cache_gib, self._memory)
        # The GPU's memory (free / total bytes), read before a load moves weights there (None: torch.cuda's,
        # made when first needed on a CUDA device: the device may still be being chosen now).
        self._device_memory = device_memory
        self._loader = loader
        # The disk the converted copies of checkpoints may take, in GiB (-1: half the free space; 0: none; the
        # app passes its setting, whose default is -1).
        self._converted_cache_gib = converted_cache_gib
        self._on_loaded = on_loaded
        self._lock = threading.RLock()
        self._current: _Slot | None = None
        self.switches = 0  # how often ``load`` made another checkpoint active (the first load counts)
        self._ram: "OrderedDict[tuple[Path, int], _Slot]" = OrderedDict()
        # A second checkpoint used beside the active one (the SDXL refiner).
        self._secondary: _Slot | None = None
        # Memory modes (webui.memory): the registry, and the user's choice ("auto", "none" or names).
        self.memory_registry = memory_registry
        self.memory_modes = memory_modes
        # webui.speed.optimize.SpeedTuner: VAE precision, layout, attention and compile, applied to
        # every model after its memory modes (None: the pipelines as diffusers loads them).
        self.speed = speed

    # -- state -----------------------------------------------------------------
    @property
    def current_entry(self) -> CatalogEntry | None:
        slot = self._current
        return slot.entry if slot else None

    @property
    def family(self) -> FamilySpec | None:
        slot = self._current
        return slot.loaded.family if slot else None

    @property
    def loaded(self) -> Any:
        return self._require_slot().loaded

    def cached_names(self) -> list[str]:
        with self._lock:
            return [s.entry.name for s in self._ram.values()]

    def set_ram_cache_models(self, n: int) -> None:
        with self._lock:
            self._ram_cache_models = max(0, int(n))
            self._trim_ram_cache("the model count went down")
        self._collect()

    def set_ram_cache_gib(self, value: float) -> None:
        """The RAM cache's budget in GiB from now on (negative: derived from the machine's RAM; 0: keep none)."""
        with self._lock:
            self._ram_budget = budget_bytes(float(value), self._memory)
            self._trim_ram_cache("the budget went down")
        self._collect()

    def ram_cache_usage(self) -> dict[str, Any]:
        """What the RAM cache holds: its models (name, bytes, least recently used first) and its bounds."""
        with self._lock:
            models = [(s.entry.name, s.nbytes) for s in self._ram.values()]
            return {
                "models": models,
                "bytes": sum(n for _, n in models),
                "budget_bytes": self._ram_budget,
                "max_models": self._ram_cache_models,
                "active_bytes": self._current.nbytes if self._current else 0,
                "secondary_bytes": self._secondary.nbytes if self._secondary else 0,
            }

    def estimate_bytes(self, name_or_entry: str | CatalogEntry) -> int:
        """The bytes a checkpoint will take once loaded in this manager's precision (from its file header)."""
        entry = name_or_entry if isinstance(name_or_entry, CatalogEntry) else self.catalog.find(name_or_entry)
        return self._estimate(entry)

    def estimate_device(self, name_or_entry: str | CatalogEntry) -> DeviceFootprint:
        """What a checkpoint will hold on the GPU under the current memory plan (from its file header)."""
        entry = name_or_entry if isinstance(name_or_entry, CatalogEntry) else self.catalog.find(name_or_entry)
        return self._footprint(entry, self._plan_for(entry))

    def _estimate(self, entry: CatalogEntry) -> int:
        from webui.models.config_folder import t5_tokenizer_files

        # the loader leaves T5 out without a tokenizer or under "Drop T5" (auto may drop it too: over, not under)
        with_t5 = bool(t5_tokenizer_files(self.t5_tokenizer_dir)) and "drop_t5" not in (self.memory_modes or "")
        return checkpoint_estimate(
            entry, self.device.dtype, self._text_encoder_files(), with_t5=with_t5, families=self.families
        )

    # -- loading ---------------------------------------------------------------
    def load(self, name_or_entry: str | CatalogEntry) -> LoadReport:
        """Make a checkpoint active; returns what happened and how long it took."""
        entry = name_or_entry if isinstance(name_or_entry, CatalogEntry) else self.catalog.find(name_or_entry)
        if entry.error:
            raise ValueError(entry.error)
        with self._lock:
            start = time.perf_counter()
            key = (entry.path, entry.mtime_ns)
            if self._current is not None and self._current.key == key:
                return self._report(self._current, 0.0, True)
            cached = self._ram.pop(key, None)
            estimate = available = 0
            try:  # refused here, before anything changes, when it cannot fit in RAM or on the GPU
                if cached is None:
                    estimate, available = self._check_room(entry, leaving=self._current)
                room = self._device_room(entry, cached, leaving=self._current)
            except NotEnoughMemoryError:
                if cached is not None:
                    self._ram[key] = cached  # still cached (now as the most recently asked for)
                raise
            leaving = self._current
            leaving_ram = leaving.nbytes if leaving is not None and self._in_ram(leaving) else 0
            parked = self._park_current()
            self._make_device_room(room)
            if cached is not None:
                self._to_device(cached, self.device.device)
                slot, from_cache = cached, True
            else:
                if parked and not leaving_ram:  # moved off the device into RAM
                    available -= leaving.nbytes
                freed = 0 if parked else leaving_ram
                del leaving
                self._evict_for(entry, estimate, available + freed)
                freeing = time.perf_counter()
                self._collect()  # free the old model before reading the new one
                freeing = time.perf_counter() - freeing
                loaded = self._load_fresh(entry, room.plan if room is not None else None)
                if getattr(loaded, "times", None) is not None and freeing >= 0.005:
                    loaded.times.parts = {"free the last model": freeing, **loaded.times.parts}
                slot, from_cache = _Slot(entry, loaded), False
                slot.nbytes = measured_bytes(loaded.pipeline)
                slot.device_footprint = room.footprint if room is not None else None
            slot.load_seconds = time.perf_counter() - start
            self._current = slot
            self.switches += 1
            report = self._report(slot, slot.load_seconds, from_cache)
        usage = self.ram_cache_usage()
        on_device = slot.device_footprint
        log.info(
            "loaded %s (%s) in %.2f s%s: %s%s; RAM cache %d model(s), %s of %s%s",
            entry.name,
            report.family,
            report.seconds,
            " from RAM cache" if from_cache else _times(slot.loaded),
            gib(slot.nbytes),
            "" if from_cache else f" (estimated {gib(estimate)} before reading)",
            len(usage["models"]),
            gib(usage["bytes"]),
            gib(usage["budget_bytes"]),
            f"; GPU: needs about {gib(on_device.needed)} ({on_device.how})" if on_device is not None else "",
        )
        if self._on_loaded:
            self._on_loaded(report)
        return report

    def unload(self) -> None:
        with self._lock:
            self._current = None
            self._secondary = None
            self._ram.clear()
        self._collect()

    def scheduler_config(self, secondary: bool = False) -> dict:
        """The scheduler config the active (or secondary) checkpoint came with."""
        with self._lock:
            slot = self._secondary if secondary else self._require_slot()
            if slot is None:
                raise ModelNotLoadedError("no secondary checkpoint is loaded")
            return dict(slot.scheduler_config)

    def secondary(self, name: str | CatalogEntry, task: str = "img2img") -> tuple[Any, FamilySpec]:
        """A second checkpoint kept on the device beside the active one (SDXL refiner): (pipeline, family).

        Loaded once and kept until another one is asked for or the manager unloads.
        """
        entry = name if isinstance(name, CatalogEntry) else self.catalog.find(name)
        if entry.error:
            raise ValueError(entry.error)
        with self._lock:
            slot = self._secondary
            if slot is None or slot.key != (entry.path, entry.mtime_ns):
                estimate, available = self._check_room(entry, leaving=slot)
                room = self._device_room(entry, None, leaving=slot, leaving_parks=False)
                freed = slot.nbytes if slot is not None and self._in_ram(slot) else 0
                self._secondary = slot = None
                self._evict_for(entry, estimate, available + freed)
                self._make_device_room(room)
                self._collect()
                start = time.perf_counter()
                slot = _Slot(entry, self._load_fresh(entry, room.plan if room is not None else None))
                slot.load_seconds = time.perf_counter() - start
                slot.nbytes = measured_bytes(slot.loaded.pipeline)
                slot.device_footprint = room.footprint if room is not None else None
                self._secondary = slot
                log.info(
                    "loaded %s as secondary model in %.2f s: %s (estimated %s before reading)",
                    entry.name,
                    slot.load_seconds,
                    gib(slot.nbytes),
                    gib(estimate),
                )
            pipe = slot.tasks.get(task)
            if pipe is None:
                pipe = derive_pipeline(slot.loaded.pipeline, slot.loaded.family.pipelines[task])
                slot.tasks[task] = pipe
            return pipe, slot.loaded.family

    def handle(self, entry: CatalogEntry) -> Any:
        """``entry`` loaded and held for one job: ``with manager.handle(entry) as model`` (webui.models.handle)."""
        from webui.models.handle import ModelHandle

        self.load(entry)
        return ModelHandle(self, entry)

    def release_secondary(self) -> None:
        with self._lock:
            self._secondary = None
        self._collect()

    def pipeline(self, task: str = "txt2img") -> Any:
        """The active model's pipeline for a task, sharing its weights."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
        with self._lock:
            slot = self._require_slot()
            pipe = slot.tasks.get(task)
            if pipe is None:
                pipe = self._derive(slot, task)
            return pipe

    @property
    def memory_plan(self) -> Any:
        """The memory plan of the active model (an empty plan when none is loaded)."""
        from webui.memory.planner import NO_PLAN

        slot = self._current
        return slot.plan if slot is not None and slot.plan is not None else NO_PLAN

    def set_memory_modes(self, choice: str) -> list[str]:
        """Use ``choice`` from now on; the active model switches in place or is reloaded. Returns notes.

        Raises ``PlanError`` (unknown or conflicting modes) before anything changes.
        """
        from webui.memory.apply import change_plan, update_plan

        with self._lock:
            self.memory_modes = choice
            self._ram.clear()  # parked models carry the old plan; they reload when asked for
            slot = self._current
            if slot is None:
                return []
            new = self._plan_for(slot.entry)
            return self._switch_plan(slot, new, change_plan, update_plan)

    def set_memory_plan(self, new: Any) -> list[str]:
        """Switch the active model to an explicit plan (the out-of-memory retry); reloads when needed."""
        from webui.memory.apply import change_plan, update_plan

        with self._lock:
            return self._switch_plan(self._require_slot(), new, change_plan, update_plan)

    def _switch_plan(self, slot: _Slot, new: Any, change_plan: Any, update_plan: Any) -> list[str]:
        old = slot.plan or self.memory_plan
        if change_plan(old, new) == "in place":
            # offload hooks wrap forward: compiled regions must not be in the way while they change
            self._untune(slot.loaded.pipeline, old)
            notes = update_plan(
                slot.loaded.pipeline, old, new, self.device.device, dtype=self.device.dtype, family=slot.loaded.family
            )
            slot.plan = new
            slot.device_footprint = self._footprint_on_device(slot.entry, new)
            slot.tasks.clear()
            self._tune(slot.loaded.pipeline, slot.loaded.family, new)
            return notes
        entry = slot.entry
        self._current = None
        del slot
        self._collect()
        fresh = _Slot(entry, self._load_fresh(entry, new))
        fresh.nbytes = measured_bytes(fresh.loaded.pipeline)
        fresh.device_footprint = self._footprint_on_device(entry, new)
        self._current = fresh
        return list(fresh.loaded.notes)

    # -- LoRA and VAE --------------------------------------------------------
    def apply_loras(self, requests: list[tuple[str | CatalogEntry, float]]) -> Any:
        """Make exactly these LoRAs (catalog name or entry, weight) active on the loaded model.

        Adapters are loaded once and switched by weight; the checkpoint is never reloaded.
        An empty list turns LoRA off. Raises ``LoraError`` for a LoRA that does not fit.
        """
        from webui.models.lora import inspect_lora
        from webui.models.lora_manager import LoraManager
        from webui.models.safetensors_header import read_header

        with self._lock:
            slot = self._require_slot()
            if not requests and slot.loras is None:
                return None  # no LoRA asked and none was ever loaded on this model: nothing to switch
            infos = []
            for name, weight in requests:
                entry = name if isinstance(name, CatalogEntry) else self.catalog.find(name, kind="lora")
                if entry.error:
                    raise ValueError(entry.error)
                infos.append((inspect_lora(read_header(entry.path)), weight))
            if slot.loras is None:
                slot.loras = LoraManager()
            return slot.loras.apply(slot.loaded.pipeline, slot.loaded.family, infos)

    def vae_name(self) -> str:
        """The VAE override in use ('' = the checkpoint's own)."""
        with self._lock:
            slot = self._current
            return slot.vae.path.stem if slot is not None and slot.vae is not None else ""

    def set_vae(self, name: str | CatalogEntry | None) -> str:
        """Use a VAE from models/VAE, by name or entry (None or "" = the checkpoint's own); returns the VAE in use."""
        from webui.models.vae import load_vae_override, restore_vae

        with self._lock:
            slot = self._require_slot()
            pipe = slot.loaded.pipeline
            if not name:
                if slot.vae is not None:
                    restore_vae(pipe, slot.vae)
                    slot.vae = None
                    slot.tasks.clear()
                    self._refresh_memory(slot)
                    self._tune(pipe, slot.loaded.family, slot.plan)
                return "checkpoint's own VAE"
            entry = name if isinstance(name, CatalogEntry) else self.catalog.find(name, kind="vae")
            if entry.error:
                raise ValueError(entry.error)
            if slot.vae is not None and slot.vae.path == entry.path:
                return entry.name
            slot.vae = load_vae_override(entry.path, pipe, slot.loaded.family, active=slot.vae)
            slot.tasks.clear()  # task pipelines are rebuilt around the new VAE
            self._refresh_memory(slot)
            self._tune(pipe, slot.loaded.family, slot.plan)  # the new VAE's decode precision and layout
            return entry.name

    # -- internals -------------------------------------------------------------
    def _require_slot(self) -> _Slot:
        if self._current is None:
            raise ModelNotLoadedError("no checkpoint is loaded; pick one in the checkpoint list")
        return self._current

    def _derive(self, slot: _Slot, task: str) -> Any:
        from webui.memory.apply import share_offload_state

        pipe = derive_pipeline(slot.loaded.pipeline, slot.loaded.family.pipelines[task])
        share_offload_state(slot.loaded.pipeline, pipe)
        slot.tasks[task] = pipe
        return pipe

    def _refresh_memory(self, slot: _Slot) -> None:
        """A component was swapped (VAE override): its memory modes must cover the new module too."""
        if slot.plan is None or not slot.plan.modes:
            return
        from webui.memory.apply import refresh_after_swap

        refresh_after_swap(
            slot.loaded.pipeline, slot.plan, self.device.device, dtype=self.device.dtype, family=slot.loaded.family
        )

    def _plan_for(self, entry: CatalogEntry, free_vram: int | None = None) -> Any:
        """The memory plan for loading ``entry`` under the current choice (``PlanError`` if it cannot be).

        ``free_vram``: the device memory "auto" plans for (None: what the device has free now)."""
        from webui.memory.planner import NO_PLAN, T5_XXL_PARAMS, auto_plan, plan

        if self.memory_registry is None:
            return NO_PLAN
        choice = (self.memory_modes or "none").strip()
        family = self.families.get(entry.family) if entry.family in self.families else entry.family
        device = self.device.device
        if choice.lower() == "none":
            return NO_PLAN
        if choice.lower() != "auto":
            return plan(choice, self.memory_registry, family, device)
        scale = 2 if str(self.device.dtype).endswith("float32") else 1  # file sizes are fp16
        has_t5 = "t5xxl" in entry.record.components
        t5 = T5_XXL_PARAMS * 2 * scale if has_t5 else 0
        if free_vram is None:
            free_vram = self._device_free()
        return auto_plan(
            free_vram,
            entry.size * scale,
            family,
            device,
            self.memory_registry,
            t5_bytes=t5,
            largest_bytes=t5 or None,
        )

    def _load_fresh(self, entry: CatalogEntry, memory_plan: Any = None) -> Any:
        from webui.memory.apply import apply_plan

        memory_plan = self._plan_for(entry) if memory_plan is None else memory_plan
        loaded = self._load_weights(entry, memory_plan)
        times = getattr(loaded, "times", None)
        start = time.perf_counter()
        if memory_plan.modes or memory_plan.notes:
            notes = apply_plan(
                loaded.pipeline, memory_plan, self.device.device, dtype=self.device.dtype, family=loaded.family
            )
            loaded.notes.extend(n for n in notes if n not in loaded.notes)
            loaded.plan = memory_plan
            if times is not None:
                times.add("memory modes", time.perf_counter() - start)
        start = time.perf_counter()
        loaded.notes.extend(self._tune(loaded.pipeline, loaded.family, memory_plan))
        if times is not None:
            times.add("tune", time.perf_counter() - start)
        return loaded

    # -- speed -------------------------------------------------------------------
    def set_speed_options(self, options: Any) -> list[str]:
        """Use these ``SpeedOptions`` from now on; the active model is re-tuned in place. Returns notes."""
        with self._lock:
            if self.speed is None:
                return []
            self._ram.clear()  # parked models carry the old layout / compiled blocks
            self.speed.options = options
            slot = self._current
            if slot is None:
                return []
            self._untune(slot.loaded.pipeline, slot.plan)
            slot.tasks.clear()
            return self._tune(slot.loaded.pipeline, slot.loaded.family, slot.plan)

    def _tune(self, pipe: Any, family: FamilySpec, plan: Any) -> list[str]:
        if self.speed is None:
            return []
        report = self.speed.apply(
            pipe,
            family.id,
            manages_placement=bool(plan is not None and plan.manages_placement),
            manages_attention=bool(plan is not None and plan.manages_attention),
        )
        return report.lines()

    def _untune(self, pipe: Any, plan: Any) -> None:
        """Back to eager forwards and the contiguous layout, so that a change starts from the loaded model."""
        if self.speed is None:
            return
        from webui.speed.compile import denoiser, uncompile_denoiser
        from webui.speed.layout import apply_layout
        from webui.speed.ov_engine import detach_engine

        uncompile_denoiser(pipe)
        detach_engine(denoiser(pipe))  # the OpenVINO engine's forward must not be under an offload hook
        if plan is None or not plan.manages_placement:  # offloaded weights are never moved by hand
            apply_layout(pipe, False)

    def _release_engine(self, slot: _Slot) -> None:
        """A parked model keeps no OpenVINO compiled copy of its weights (the budget counts torch's only)."""
        if self.speed is None:
            return
        from webui.speed.compile import denoiser
        from webui.speed.ov_engine import release_compiled

        if release_compiled(denoiser(slot.loaded.pipeline)):
            log.info("%s: its OpenVINO compiled UNet is dropped while it waits in the RAM cache", slot.entry.name)

    def _text_encoder_files(self) -> dict[str, Path]:
        te_files: dict[str, Path] = {}
        for te in self.catalog.usable("text_encoder"):
            slot = te.info.get("slot")
            if slot and slot not in te_files:
                te_files[slot] = te.path
        return te_files

    def _load_weights(self, entry: CatalogEntry, memory_plan: Any) -> Any:
        loader = self._loader
        if loader is None:
            from webui.models.loader import load_checkpoint as loader
        te_files = self._text_encoder_files()
        extra = {"load_kwargs": memory_plan.load_kwargs} if memory_plan.load_kwargs else {}
        if self._converted_cache_gib != 0:
            from webui.models.converted_copy import budget_bytes as copy_budget

            extra["copy_budget"] = copy_budget(self._converted_cache_gib, self.cache_dir)
        # The catalog's record goes with the path: the loader identifies nothing again.
        return loader(
            entry.path,
            record=entry.record,
            device=memory_plan.load_device(self.device.device),
            dtype=self.device.dtype,
            cache_dir=self.cache_dir,
            text_encoder_files=te_files,
            t5_tokenizer_dir=self.t5_tokenizer_dir,
            families=self.families,
            **extra,
        )

    def _park_current(self) -> bool:
        """Move the active model into the RAM cache if both bounds allow; True when it was parked."""
        slot, self._current = self._current, None
        if slot is None or self._ram_cache_models <= 0 or self._ram_budget <= 0:
            return False
        if slot.nbytes > self._ram_budget:
            log.info(
                "%s not kept in the RAM cache: %s is more than its whole budget of %s",
                slot.entry.name,
                gib(slot.nbytes),
                gib(self._ram_budget),
            )
            return False
        # older models leave first, so that the parked one's RAM is within the budget before it moves there
        self._trim_ram_cache("room for " + slot.entry.name, incoming=slot.nbytes, incoming_count=1)
        self._release_engine(slot)
        if self.device.device != "cpu":
            self._to_device(slot, "cpu")
        self._ram[slot.key] = slot
        return True

    def _cache_bytes(self) -> int:
        return sum(s.nbytes for s in self._ram.values())

    def _trim_ram_cache(self, reason: str, incoming: int = 0, incoming_count: int = 0) -> None:
        while self._ram and (
            len(self._ram) + incoming_count > self._ram_cache_models
            or self._cache_bytes() + incoming > self._ram_budget
        ):
            self._evict_oldest(reason)

    def _evict_oldest(self, reason: str) -> int:
        _key, slot = self._ram.popitem(last=False)
        log.info("evicted %s (%s) from the RAM cache: %s", slot.entry.name, gib(slot.nbytes), reason)
        return slot.nbytes

    def _in_ram(self, slot: _Slot) -> bool:
        """Whether a slot's weights live in RAM (on the CPU, or held there by an offload mode)."""
        return self.device.device == "cpu" or bool(slot.plan is not None and slot.plan.manages_placement)

    def _check_room(self, entry: CatalogEntry, leaving: _Slot | None) -> tuple[int, int]:
        """(estimate, available bytes) for loading ``entry``; ``NotEnoughMemoryError`` if it cannot fit even
        with the RAM cache emptied and ``leaving`` (the model it replaces) released. Changes nothing."""
        estimate = self._estimate(entry)
        if self.device.device == "cuda" and "offload" not in (self.memory_modes or ""):
            # the weights go to VRAM (the memory planner's business); RAM only passes them through.
            # "auto" may still pick an offload: then the RAM cache's budget is the bound that holds.
            return estimate, 1 << 62
        available = int(self._memory.available_bytes())
        leaving_ram = leaving.nbytes if leaving is not None and self._in_ram(leaving) else 0
        reachable = available + self._cache_bytes() + leaving_ram
        if estimate + SAFETY_MARGIN_BYTES > reachable:
            log.warning("refused to load %s: needs %s, %s can be had", entry.name, gib(estimate), gib(reachable))
            raise NotEnoughMemoryError(
                refusal_message(entry.name, estimate + SAFETY_MARGIN_BYTES, reachable, self._ram_budget)
            )
        return estimate, available

    def _evict_for(self, entry: CatalogEntry, estimate: int, available: int) -> None:
        """Evict cached models, least recently used first, until ``estimate`` fits in what is available."""
        while self._ram and available < estimate + SAFETY_MARGIN_BYTES:
            available += self._evict_oldest(f"{entry.name} needs {gib(estimate)}")

    # -- the GPU budget (webui.models.device_budget) ------------------------------------------
    def _footprint(self, entry: CatalogEntry, plan: Any, extra_modes: tuple[str, ...] = ()) -> DeviceFootprint:
        from webui.models.config_folder import t5_tokenizer_files
        from webui.models.device_budget import component_bytes, footprint

        family = self.families.get(entry.family) if entry.family in self.families else None
        names = (*plan.names, *extra_modes)
        with_t5 = bool(t5_tokenizer_files(self.t5_tokenizer_dir)) and "drop_t5" not in names
        skip = () if with_t5 else ("text_encoder_3",)
        sizes = component_bytes(entry, self.device.dtype, family, self._text_encoder_files(), skip)
        placement = [m.name for m in plan.modes if m.phase == "placement"]
        return footprint(sizes, names, self.device.dtype, placement)

    def _footprint_on_device(self, entry: CatalogEntry, plan: Any) -> DeviceFootprint | None:
        """``entry``'s GPU footprint under ``plan`` (None: no GPU budgeted here)."""
        return self._footprint(entry, plan) if self._device_free() is not None else None

    def _device_room(
        self, entry: CatalogEntry, cached: _Slot | None, leaving: _Slot | None, leaving_parks: bool = True
    ) -> _DeviceRoom | None:
        """How ``entry`` fits on the GPU once the models this app holds there make room (the one it replaces first,
        then parked models whose weights an offload mode left there, least recently used first, then the
        secondary model); ``NotEnoughMemoryError`` before anything changes when it cannot. None: no GPU."""
        free = self._device_free()
        if free is None:
            return None
        holders = [(k, _residue(s)) for k, s in self._ram.items() if _residue(s)]
        moved_off = 0
        if leaving is not None and leaving.device_footprint is not None:
            if leaving_parks and _residue(leaving):  # parked with its offload hooks: it stays there unless evicted
                holders.append((leaving.key, _residue(leaving)))
            else:
                moved_off = leaving.device_footprint.at_rest
        second = self._secondary if leaving_parks else None  # a secondary load replaces only the secondary
        second_bytes = second.device_footprint.at_rest if second is not None and second.device_footprint else 0
        reachable = free + moved_off + sum(b for _, b in holders) + second_bytes
        if cached is not None:
            plan = cached.plan if cached.plan is not None else self.memory_plan
            need = cached.device_footprint or self._footprint(entry, plan)
        else:
            plan = self._plan_for(entry, free_vram=reachable)
            need = self._footprint(entry, plan)
        if need.needed > reachable:
            self._refuse_device(entry, plan, need, free, reachable)
        have, evict = free + moved_off, []
        for key, nbytes in holders:
            if have >= need.needed:
                break
            evict.append(key)
            have += nbytes
        return _DeviceRoom(plan, need, tuple(evict), drop_secondary=second is not None and have < need.needed)

    def _refuse_device(self, entry: CatalogEntry, plan: Any, need: DeviceFootprint, free: int, reachable: int) -> None:
        from webui.models.device_budget import SUGGESTED, NotEnoughDeviceMemoryError, refusal_message

        suggestions = {}
        registry = self.memory_registry
        for name in SUGGESTED:
            if registry is None or name not in registry or plan.has(name):
                continue
            under = self._footprint(entry, plan, (name,)).needed
            if under < need.needed:
                suggestions[registry.get(name).label] = under
        log.warning(
            "refused to load %s: needs %s on the GPU, %s can be had", entry.name, gib(need.needed), gib(reachable)
        )
        message = refusal_message(
            entry.name, need, free, reachable, self.device.precision, plan.describe(), suggestions
        )
        raise NotEnoughDeviceMemoryError(message)

    def _make_device_room(self, room: _DeviceRoom | None) -> None:
        if room is None:
            return
        for key in room.evict:
            slot = self._ram.pop(key, None)
            if slot is not None:
                log.info(
                    "evicted %s from the RAM cache: its offloaded weights held %s on the GPU",
                    slot.entry.name,
                    gib(_residue(slot)),
                )
        if room.drop_secondary and self._secondary is not None:
            log.info("released the secondary model %s to make room on the GPU", self._secondary.entry.name)
            self._secondary = None
        if room.evict or room.drop_secondary:
            self._collect()

    def device_usage(self) -> dict[str, Any] | None:
        """What this app holds on the GPU (name, bytes between jobs) and what the device has; None without a GPU,
        or while the device is still being chosen at start (the page asks before torch is imported: no waiting)."""
        ready = getattr(self.device, "ready", None)
        if callable(ready) and not ready():
            return None
        free = self._device_free()
        if free is None:
            return None
        with self._lock:
            held = [
                (s.entry.name, s.device_footprint.at_rest)
                for s in (self._current, self._secondary)
                if s is not None and s.device_footprint is not None
            ]
            held += [(s.entry.name, _residue(s)) for s in self._ram.values() if _residue(s)]
            active = self._current.device_footprint if self._current is not None else None
        return {
            "models": held,
            "bytes": sum(n for _, n in held),
            "needed_bytes": active.needed if active is not None else 0,
            "free_bytes": free,
            "total_bytes": int(self._device_memory.total_bytes() or 0),
        }

    def _device_free(self) -> int | None:
        """Free bytes on the GPU now (None: no GPU to budget, or its memory cannot be read)."""
        if self.device.device != "cuda":
            return None
        if self._device_memory is None:
            from webui.models.device_budget import CudaMemory

            self._device_memory = CudaMemory()
        free = self._device_memory.free_bytes()
        return None if free is None else int(free)

    @staticmethod
    def _to_device(slot: _Slot, device: str) -> None:
        if slot.plan is not None and slot.plan.manages_placement:
            return  # an offload mode decides where the weights live; .to() would break its hooks
        slot.loaded.pipeline.to(device)

    def _collect(self) -> None:
        gc.collect()
        if self.device.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        _return_freed_memory_to_os()

    @staticmethod
    def _report(slot: _Slot, seconds: float, from_cache: bool) -> LoadReport:
        return LoadReport(
            name=slot.entry.name,
            family=slot.loaded.family.id,
            seconds=seconds,
            from_cache=from_cache,
            notes=tuple(slot.loaded.notes),
        )


def _times(loaded: Any) -> str:
    """`` (read+cast 2.10 s, build 0.20 s, ...)``: where a fresh load's time went."""
    times = getattr(loaded, "times", None)
    return f" ({times.describe()})" if times is not None and times.parts else ""
