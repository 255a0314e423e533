"""Apply a memory plan to a loaded pipeline, change it in place, or say that the model must be reloaded.

This module also holds what each built-in mode does to a pipeline (the functions that
``modes.builtin_memory_modes`` names as ``apply``/``undo``), and small helpers for the manager
and the engine (execution device, free VRAM, weight bytes).

What diffusers 0.42 can undo (``MemoryMode.undo``): VAE tiling and slicing, attention slicing,
xformers (flags and attention processors); model and sequential CPU offload
(``pipe.remove_all_hooks()``, then the weights move back). What it cannot: group offload (no
disable), fp8 layerwise casting (the weights were rounded), drop T5 (the encoder is gone); turning
those off means reloading the checkpoint ("rebuild").

Order: modes run in their plan order (phases load, weights, attention, vae, placement). A model
whose plan has a "weights" or "placement" mode is loaded on the CPU (``MemoryPlan.load_device``)
so that fp8 casting happens before the weights reach the GPU and offload never needs the whole
model there; ``apply_plan`` then moves it to the device unless an offload mode owns placement.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from collections.abc import Mapping
from typing import Any, Literal

from webui.memory.modes import ApplyContext, MemoryMode, MemoryModeError
from webui.memory.planner import MemoryPlan

log = logging.getLogger(__name__)

IN_PLACE = "in place"
REBUILD = "rebuild"
# modes of these phases must be applied before the offload hooks are installed
_BEFORE_PLACEMENT = ("load", "weights")


def _context(device: str, dtype: Any, family: str, options: Mapping[str, Any] | None) -> ApplyContext:
    return ApplyContext(device=device, dtype=dtype, family=family, options=dict(options or {}))


def _run(mode: MemoryMode, action: str, fn: Any, pipe: Any, ctx: ApplyContext) -> str | None:
    try:
        return fn(pipe, ctx)
    except Exception as exc:
        log.exception("memory mode %s: %s failed", mode.name, action)
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise MemoryModeError(
            f"could not {action} '{mode.label}' ({detail}); reload the model or pick another memory mode"
            " in Settings > Memory"
        ) from exc


def _move(pipe: Any, device: str) -> None:
    current = getattr(pipe, "device", None)
    if getattr(current, "type", current) != device:
        pipe.to(device)


def apply_plan(
    pipe: Any,
    plan: MemoryPlan,
    device: str,
    *,
    dtype: Any = None,
    family: Any = "",
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Turn on every mode of ``plan`` on a freshly loaded ``pipe``; returns notes for the user.

    ``device`` is where the model computes; the pipeline may still be on the CPU (see the module
    doc). Raises ``MemoryModeError`` naming the mode that failed (reload the model then).
    """
    ctx = _context(device, dtype, str(getattr(family, "id", family) or ""), options)
    notes = list(plan.notes)
    placed = False
    for mode in plan.modes:
        if mode.phase not in _BEFORE_PLACEMENT and not placed:
            placed = True
            if not plan.manages_placement:
                _move(pipe, device)
        note = _run(mode, "turn on", mode.apply, pipe, ctx)
        if note:
            notes.append(f"{mode.label}: {note}")
    if not placed and not plan.manages_placement:
        _move(pipe, device)
    notes.extend(plan.image_notes)
    return notes


def undo_plan(
    pipe: Any, plan: MemoryPlan, device: str, *, family: Any = "", options: Mapping[str, Any] | None = None
) -> None:
    """Turn every mode of ``plan`` off (last applied first) and put the weights on ``device``.

    Raises ``MemoryModeError`` before touching anything when a mode cannot be undone.
    """
    stuck = [m.label for m in plan.modes if not m.undoable]
    if stuck:
        raise MemoryModeError(f"{', '.join(stuck)} cannot be turned off on a loaded model; reload it")
    ctx = _context(device, None, str(getattr(family, "id", family) or ""), options)
    for mode in reversed(plan.modes):
        _run(mode, "turn off", mode.undo, pipe, ctx)
    _move(pipe, device)


def _redo(old: MemoryPlan, new: MemoryPlan) -> list[MemoryMode]:
    """Offload modes kept in both plans that must come off and on again around an added early mode."""
    old_names = set(old.names)
    added_early = any(m.phase in _BEFORE_PLACEMENT for m in new.modes if m.name not in old_names)
    if not added_early:
        return []
    return [m for m in old.modes if m.phase == "placement" and new.has(m.name)]


def rebuild_reasons(old: MemoryPlan, new: MemoryPlan) -> list[str]:
    """Why going from ``old`` to ``new`` needs the model reloaded (empty: it can change in place)."""
    reasons = []
    new_names = set(new.names)
    for mode in old.modes:
        if mode.name not in new_names and not mode.undoable:
            reasons.append(f"'{mode.label}' cannot be turned off on a loaded model")
    if old.load_kwargs != new.load_kwargs:
        changed = sorted(
            k
            for k in {*old.load_kwargs, *new.load_kwargs}
            if old.load_kwargs.get(k, ...) != new.load_kwargs.get(k, ...)
        )
        reasons.append(f"the model must be loaded differently ({', '.join(changed)})")
    for mode in _redo(old, new):
        if not mode.undoable:
            reasons.append(f"'{mode.label}' must be turned off to add a mode under it, and cannot be")
    return reasons


def change_plan(old: MemoryPlan, new: MemoryPlan) -> Literal["in place", "rebuild"]:
    """Whether the manager can switch the loaded model from ``old`` to ``new`` in place or must reload it."""
    return REBUILD if rebuild_reasons(old, new) else IN_PLACE


def update_plan(
    pipe: Any,
    old: MemoryPlan,
    new: MemoryPlan,
    device: str,
    *,
    dtype: Any = None,
    family: Any = "",
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Switch a loaded pipeline from ``old`` to ``new`` in place; returns notes.

    Raises ``MemoryModeError`` when ``change_plan`` says "rebuild" (reload the model with ``new``).
    Modes in both plans stay on, except offload modes that must be re-installed on top of an added
    fp8 casting. An offload being replaced leaves its weights on the CPU, so a switch from model to
    sequential offload never needs the whole model on the GPU.
    """
    reasons = rebuild_reasons(old, new)
    if reasons:
        raise MemoryModeError("the model must be reloaded to change memory modes: " + "; ".join(reasons))
    fam = str(getattr(family, "id", family) or "")
    new_names, old_names = set(new.names), set(old.names)
    redo = {m.name for m in _redo(old, new)}
    off = [m for m in old.modes if m.name not in new_names or m.name in redo]
    on = [m for m in new.modes if m.name not in old_names or m.name in redo]
    park = "cpu" if new.manages_placement else device
    undo_ctx = _context(park, dtype, fam, options)
    for mode in reversed(off):
        _run(mode, "turn off", mode.undo, pipe, undo_ctx)
    if any(m.phase == "placement" for m in off):
        _move(pipe, park)
    ctx = _context(device, dtype, fam, options)
    notes = []
    for mode in on:  # in the new plan's order (by phase)
        note = _run(mode, "turn on", mode.apply, pipe, ctx)
        if note:
            notes.append(f"{mode.label}: {note}")
    if not new.manages_placement:
        _move(pipe, device)
    return notes + [f"{m.label}: {m.image_note}" for m in on if m.changes_image]


def refresh_after_swap(
    pipe: Any,
    current: MemoryPlan,
    device: str,
    *,
    dtype: Any = None,
    family: Any = "",
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Re-apply ``current`` after a component was replaced on a loaded pipeline (a VAE override).

    The VAE modes are turned on for the new VAE, and undoable offload hooks are re-armed so that
    they cover the new module (group offload always leaves the VAE whole on the device).
    """
    fam = str(getattr(family, "id", family) or "")
    redo = [m for m in current.modes if m.phase == "placement" and m.undoable]
    for mode in reversed(redo):
        _run(mode, "turn off", mode.undo, pipe, _context("cpu", dtype, fam, options))
    ctx = _context(device, dtype, fam, options)
    notes = []
    for mode in [m for m in current.modes if m.phase == "vae"] + redo:
        note = _run(mode, "turn on", mode.apply, pipe, ctx)
        if note:
            notes.append(f"{mode.label}: {note}")
    return notes


# --- what the built-in modes do to a pipeline (MemoryMode.apply / undo) ---------------------------

# VAE tiling: tile side in pixels. diffusers' default is the VAE's sample_size (512 for SD1.5, 1024
# for SDXL/SD3), which would never tile a 1024x1024 SDXL image; 512 px tiles tile it into 4 (+ overlap).
DEFAULT_VAE_TILE_PX = 512

# fp8 casting of T5: keep the embeddings (their dtype is what transformers reports as the model's
# dtype), the norms, the relative position bias and the feed-forward output ("wo", which T5 itself
# keeps in fp32) in the compute dtype.
T5_FP8_SKIP = ("shared", "embed_tokens", "relative_attention_bias", "norm", r"\.wo$")


def _torch():
    import torch

    return torch


def _denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def drop_t5(pipe: Any, ctx: ApplyContext) -> str | None:
    if getattr(pipe, "text_encoder_3", None) is None:
        return None
    pipe.register_modules(text_encoder_3=None, tokenizer_3=None)
    return "T5 removed from the loaded model; its memory is freed once no task pipeline holds it"


def model_offload(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.enable_model_cpu_offload(device=ctx.device)
    return "model CPU offload does nothing on the CPU (the weights are already there)" if ctx.device == "cpu" else None


def sequential_offload(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.enable_sequential_cpu_offload(device=ctx.device)
    return None


def remove_offload(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.remove_all_hooks()
    for attr in ("_offload_device", "_offload_gpu_id"):
        if attr in pipe.__dict__:
            delattr(pipe, attr)
    pipe.to(ctx.device)
    return None


def group_offload(pipe: Any, ctx: ApplyContext) -> str | None:
    torch = _torch()
    cuda = ctx.device == "cuda"
    pipe.enable_group_offload(
        onload_device=torch.device(ctx.device),
        offload_device=torch.device("cpu"),
        offload_type=ctx.options.get("group_offload_type", "leaf_level"),
        num_blocks_per_group=ctx.options.get("group_offload_blocks", 1),
        use_stream=cuda,  # overlap the next layer's upload with this layer's compute
        # the VAE (~160 MB) stays on the device: SDXL's fp16 VAE is upcast to fp32 for decoding, and the
        # group hooks would copy the fp16 weights back over the upcast ones (seen on an H200)
        exclude_modules=["vae"],
    )
    return None if cuda else "group offload does nothing on the CPU (the weights are already there)"


def vae_tiling_on(pipe: Any, ctx: ApplyContext) -> str | None:
    vae = pipe.vae
    vae.enable_tiling()
    tile = int(ctx.options.get("vae_tile_px", DEFAULT_VAE_TILE_PX))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if tile < vae.tile_sample_min_size:
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = max(1, tile // factor)
    return None


def vae_tiling_off(pipe: Any, ctx: ApplyContext) -> str | None:
    vae = pipe.vae
    vae.disable_tiling()
    size = vae.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    vae.tile_sample_min_size = size
    vae.tile_latent_min_size = int(size / 2 ** (len(vae.config.block_out_channels) - 1))
    return None


def xformers_available(device: str) -> str | None:
    if device != "cuda":
        return f"not available on {device}: PyTorch's SDPA attention is already used"
    if importlib.util.find_spec("xformers") is None:
        return "not available: xformers is not installed; PyTorch's SDPA attention is already used"
    return None


def fp8_weights(pipe: Any, ctx: ApplyContext) -> str | None:
    from diffusers.hooks import apply_layerwise_casting

    torch = _torch()
    denoiser = _denoiser(pipe)
    compute = ctx.dtype or denoiser.dtype
    denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    t5 = getattr(pipe, "text_encoder_3", None)
    if t5 is not None:
        apply_layerwise_casting(t5, torch.float8_e4m3fn, t5.dtype, skip_modules_pattern=T5_FP8_SKIP)
    return None


def xformers_on(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.enable_xformers_memory_efficient_attention()
    return None


def xformers_off(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.disable_xformers_memory_efficient_attention()
    return None


def attention_slicing_on(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.enable_attention_slicing("auto")
    return None


def attention_slicing_off(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.disable_attention_slicing()
    return None


def vae_slicing_on(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.vae.enable_slicing()
    return None


def vae_slicing_off(pipe: Any, ctx: ApplyContext) -> str | None:
    pipe.vae.disable_slicing()
    return None


# --- helpers for the manager and the engine ----------------------------------------------------


def share_offload_state(source: Any, derived: Any) -> None:
    """Give a task pipeline built from ``source``'s modules the same model-offload bookkeeping.

    Offload hooks live on the shared modules, but ``maybe_free_model_hooks`` (run after each
    call) only re-arms them on a pipeline that knows it is offloaded; without this, an img2img
    pipeline would leave its last model on the GPU.
    """
    for attr in ("_all_hooks", "_offload_device", "_offload_gpu_id"):
        if attr in getattr(source, "__dict__", {}):
            object.__setattr__(derived, attr, getattr(source, attr))


def execution_device(pipe: Any) -> Any:
    """Where the pipeline computes, also under offload (the modules themselves then sit on the CPU).

    Use it for the noise and generators: ``pipe.unet.device`` is "cpu" under offload, which
    would draw different noise for the same seed.
    """
    return pipe._execution_device


def free_vram_bytes(device: str) -> int | None:
    """Free memory on the CUDA device (None elsewhere): what ``auto_plan`` needs."""
    if device != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free)


def module_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        key = t.data_ptr()
        if key in seen and key != 0:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def pipeline_bytes(pipe: Any) -> dict[str, int]:
    """Weight bytes per torch component of a pipeline (e.g. {"unet": ..., "vae": ...})."""
    import torch

    return {name: module_bytes(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def release_memory(device: str) -> None:
    """After an out-of-memory error or a plan change: collect garbage and return cached device blocks."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
