"""Opt-in ``torch.compile`` of the denoiser, regional where possible, falling back to eager on failure.

Regional compile compiles each repeated block (the UNet's transformer blocks, the MMDiT's joint
blocks) once instead of the whole model: the cost is paid once per model and input shape and is
a fraction of a full compile. Compilation is lazy, so failures show on the first call (no C++
compiler, an unsupported op, ...): that call then runs eagerly, every region goes back to eager
for good, and the log says why. An error that eager mode raises too is a real error: it is raised
and compilation stays on.

Never call this from a test with the real ``torch.compile``: pass ``compile_fn``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webui.speed.forwards import instance_forward, restore_forward

log = logging.getLogger(__name__)


@dataclass
class CompileState:
    """Shared by the regions of one model: one failure turns all of them back to eager."""

    # (module, the instance-level forward it had before: an offload hook's, or None for the class's)
    regions: list[tuple[Any, Any]] = field(default_factory=list)
    failed: str = ""


def denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def regions_of(model: Any) -> list[Any]:
    """The repeated blocks to compile: diffusers' ``_repeated_blocks``, else the blocks of
    ``transformer_blocks``, else the whole model."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names] if names else []
    if not found:
        blocks = getattr(model, "transformer_blocks", None)
        found = list(blocks) if blocks is not None else []
    return found or [model]


def _guarded(state: CompileState, eager: Callable[..., Any], compiled: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        if state.failed:
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compile failure; eager below re-raises real errors
            out = eager(*args, **kwargs)  # raises when the inputs are wrong: then compilation stays on
            state.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("torch.compile failed (%s); running this model without compilation", state.failed)
            _restore(state)
            return out

    return forward


def _restore(state: CompileState) -> None:
    """Every region back to the forward it had before compiling (a class method or an offload hook)."""
    for module, previous in state.regions:
        restore_forward(module, previous)


def compile_denoiser(
    pipe: Any,
    *,
    compile_fn: Callable[..., Callable[..., Any]] | None = None,
    **compile_kwargs: Any,
) -> CompileState:
    """Compile the pipeline's UNet/transformer regions with ``torch.compile`` (or ``compile_fn``)."""
    if compile_fn is None:
        import torch

        compile_fn = torch.compile
    model = denoiser(pipe)
    if model is None:
        raise ValueError("this pipeline has neither a UNet nor a transformer to compile")
    existing = getattr(model, "_webui_compile_state", None)
    if existing is not None:
        return existing
    state = CompileState()
    for module in regions_of(model):
        eager = module.forward
        try:
            compiled = compile_fn(eager, **compile_kwargs)
        except Exception as exc:  # noqa: BLE001 - torch.compile itself can refuse (unsupported Python, ...)
            state.failed = f"{type(exc).__name__}: {exc}"
            log.warning("torch.compile is not available (%s); running without compilation", state.failed)
            _restore(state)
            break
        state.regions.append((module, instance_forward(module)))
        module.forward = _guarded(state, eager, compiled)
    model._webui_compile_state = state
    return state


def uncompile_denoiser(pipe: Any) -> None:
    """Back to the eager forwards (after a memory-mode change, before a LoRA swap that needs it...)."""
    model = denoiser(pipe)
    state = getattr(model, "_webui_compile_state", None) if model is not None else None
    if state is None:
        return
    _restore(state)
    state.regions.clear()
    del model._webui_compile_state
