"""Running a grid as one queue job: its cells are ordinary jobs run one after another on the worker.

``with_grids(run, writer)`` is the queue's runner: a ``GridRequest`` runs its cells through ``run`` (the
engine) in ``run_order`` (the checkpoint axis outermost), each with a ``CellContext`` that adds the cell's
steps and images to the grid's progress, so Interrupt stops the grid (the finished cells are kept and
drawn), Skip drops the current cell's batch, and the bar covers every cell. Then the grid image is drawn and
saved to ``outputs/<task>-grids`` with the first cell's infotext plus A1111's ``Script:``/``X Type:`` fields.
The result lists the grid first, then the sub-grids and cells as the options ask (A1111's order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from webui.generation.passes import steps_run
from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import BatchSkipped, JobContext, JobInterrupted, JobResult
from webui.xyz.draw import blank_like, draw_grids
from webui.xyz.grid import Cell, GridRequest, cells, is_grid, run_order, script_fields

log = logging.getLogger(__name__)

Runner = Callable[[GenerationRequest, JobContext], JobResult]
DEFAULT_STEPS = 20  # a cell's estimate until it plans (steps None: the family's default)


def estimate_steps(req: GenerationRequest) -> int:
    """Steps a request will run, before its model is known (the grid's bar until each cell plans)."""
    steps = req.steps or DEFAULT_STEPS
    if req.task == "txt2img":
        total = steps + (steps_run(req.hr_second_pass_steps or steps, req.denoising_strength) if req.enable_hr else 0)
    else:
        total = max(1, steps_run(steps, req.denoising_strength))
    return total * req.n_iter


class GridProgress:
    """Each cell's planned steps and images; the grid's totals are their sums."""

    def __init__(self, ordered: list[Cell]) -> None:
        self.steps = [estimate_steps(c.request) for c in ordered]
        self.images = [c.request.total_images for c in ordered]

    def totals(self) -> tuple[int, int]:
        return sum(self.steps), sum(self.images)


class CellContext:
    """The ``JobContext`` one cell's run sees: the grid job's flags, with the cell's share of progress."""

    def __init__(self, ctx: JobContext, progress: GridProgress, index: int, label: str, done: JobResult) -> None:
        self._ctx, self._progress, self._index, self._label, self._done = ctx, progress, index, label, done

    job_id = property(lambda self: self._ctx.job_id)
    preview_every = property(lambda self: self._ctx.preview_every)
    preview_fn = property(lambda self: self._ctx.preview_fn)
    timeout = property(lambda self: self._ctx.timeout)

    def check(self) -> None:
        self._ctx.check()

    def plan(self, total_steps: int, images_total: int) -> None:
        self._progress.steps[self._index] = int(total_steps)
        self._progress.images[self._index] = int(images_total)
        self._ctx.plan(*self._progress.totals())

    def begin_pass(self, steps: int, label: str = "") -> None:
        self._ctx.begin_pass(steps, f"{self._label}: {label}" if label else self._label)

    def on_step(self, step: int, latents: Any = None, preview: Any = None) -> None:
        self._ctx.on_step(step, latents, preview)

    def finish_pass(self, steps: int) -> None:
        self._ctx.finish_pass(steps)

    def image_done(self, count: int = 1) -> None:
        self._ctx.image_done(count)

    def partial(self, result: JobResult) -> None:
        merged = JobResult(
            images=[*self._done.images, *result.images],
            infotexts=[*self._done.infotexts, *result.infotexts],
            seeds=[*self._done.seeds, *result.seeds],
            subseeds=[*self._done.subseeds, *result.subseeds],
            paths=[*self._done.paths, *result.paths],
        )
        self._ctx.partial(merged)


def with_grids(run: Runner, writer: Any) -> Runner:
    """The queue's runner: grids run here, every other request goes to ``run`` as before."""

    def runner(request: Any, ctx: JobContext) -> JobResult:
        if is_grid(request):
            return run_grid(request, ctx, run, writer)
        return run(request, ctx)

    return runner


def run_grid(grid: GridRequest, ctx: JobContext, run: Runner, writer: Any) -> JobResult:
    layout = cells(grid)
    ordered = run_order(grid, layout)
    progress = GridProgress(ordered)
    ctx.plan(*progress.totals())
    done = JobResult()
    results: dict[tuple[int, int, int], JobResult] = {}
    interrupted = False
    for index, cell in enumerate(ordered):
        label = f"cell {index + 1}/{len(ordered)}"
        try:
            ctx.check()
            result = run(cell.request, CellContext(ctx, progress, index, label, done))
        except BatchSkipped:
            continue
        except JobInterrupted:
            interrupted = True
            break
        except RequestError as exc:
            raise RequestError(exc.field, f"{cell.where}: {exc.message}", exc.valid) from None
        results[(cell.ix, cell.iy, cell.iz)] = result
        _extend(done, result)
        if result.interrupted:
            interrupted = True
            break
    return _finish(grid, layout, results, done, interrupted, writer)


def _extend(done: JobResult, result: JobResult) -> None:
    for name in ("images", "infotexts", "seeds", "subseeds", "paths"):
        getattr(done, name).extend(getattr(result, name))
    done.skipped_batches += result.skipped_batches


def _finish(
    grid: GridRequest,
    layout: list[Cell],
    results: dict[tuple[int, int, int], JobResult],
    done: JobResult,
    interrupted: bool,
    writer: Any,
) -> JobResult:
    out = JobResult(interrupted=interrupted, skipped_batches=done.skipped_batches)
    firsts = [results.get((c.ix, c.iy, c.iz)) for c in layout]
    shown = [r.images[0] if r is not None and r.images else None for r in firsts]
    if not any(im is not None for im in shown):
        out.info = {"grid": False}
        return out
    size = (grid.base.width or 512, grid.base.height or 512)
    images = [im if im is not None else blank_like(shown, size) for im in shown]
    labels = tuple(a.labels for a in grid.axes)
    whole, subs = draw_grids(images, grid.shape, labels, grid.options.draw_legend, grid.options.margin_size)  # type: ignore[arg-type]
    first = next(r for r in firsts if r is not None and r.images)
    text = _grid_infotext(first.infotexts[0] if first.infotexts else "", grid)
    seed = first.seeds[0] if first.seeds else 0
    grids = [whole] + (subs if grid.options.include_sub_grids and len(subs) > 1 else [])
    for image in grids:
        out.images.append(image)
        out.infotexts.append(text)
        out.seeds.append(seed)
        out.subseeds.append(first.subseeds[0] if first.subseeds else 0)
        out.paths.append(_save_grid(writer, grid, image, text, seed))
    if grid.options.include_lone_images:
        _extend(out, done)
        out.skipped_batches = done.skipped_batches
    out.info = {"grid": True, "cells": len(layout), "cell_images": len(done.images)}
    return out


def _grid_infotext(cell_text: str, grid: GridRequest) -> str:
    fields = script_fields(grid)
    return f"{cell_text}, {fields}" if cell_text else fields


def _save_grid(writer: Any, grid: GridRequest, image: Any, text: str, seed: int) -> str:
    if writer is None or not grid.base.save_images:
        return ""
    category = "txt2img-grids" if grid.base.task == "txt2img" else "img2img-grids"
    return str(writer.save(image, category=category, infotext=text, seed=seed, fmt=grid.base.output_format))
