"""A grid request: the base request, three axes of values and A1111's options; its cells and their run order.

``GridRequest`` reads like the base request (``task``, ``n_iter``, ``save_images`` ... come from it) so the
queue, the backend and the API's waiting code treat it as one job. ``from_script_args`` reads A1111's
positional ``script_args`` of "x/y/z plot":

    x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
    z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode

(18 values, A1111 1.7+), or the older 14 without ``vary_seeds_*`` and ``csv_mode``, or only the first 3, 6
or 9 (the X, Y, Z axes; the options take A1111's defaults, legend on). Types are A1111 indices
in its txt2img/img2img list, or names. An axis with a dropdown (sampler, checkpoint ...) takes its dropdown
list when one is sent (A1111 reads only that one unless ``csv_mode``), else its text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from webui.generation.requests import GenerationRequest, RequestError
from webui.xyz.axes import AXES, AxisType, find_axis
from webui.xyz.values import parse_values, to_csv

SCRIPT_NAME = "x/y/z plot"  # A1111's script title in lower case, as its API matches it
SCRIPT_TITLE = "X/Y/Z plot"
MAX_CELLS = 1000


@dataclass(frozen=True)
class Axis:
    type: AxisType = AXES[0]
    values: tuple[Any, ...] = (None,)

    @property
    def labels(self) -> list[str]:
        if self.type.name == "Nothing":
            return [""]
        return [f"{self.type.name}: {_label(v)}" for v in self.values]


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class GridOptions:
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin_size: int = 0


@dataclass(frozen=True)
class Cell:
    ix: int
    iy: int
    iz: int
    request: GenerationRequest

    @property
    def where(self) -> str:
        return f"cell x={self.ix + 1}, y={self.iy + 1}, z={self.iz + 1}"


@dataclass(frozen=True)
class GridRequest:
    base: GenerationRequest
    axes: tuple[Axis, Axis, Axis] = (Axis(), Axis(), Axis())
    options: GridOptions = field(default_factory=GridOptions)

    def __getattr__(self, name: str) -> Any:  # read like the base request (task, n_iter, save_images ...)
        if name in ("base", "axes", "options") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def replace(self, **changes: Any) -> GridRequest:
        """The same grid over a base request with ``changes``."""
        return replace(self, base=self.base.replace(**changes))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a.values) for a in self.axes)  # type: ignore[return-value]

    @property
    def total_images(self) -> int:
        x, y, z = self.shape
        return x * y * z * self.base.total_images


def is_grid(request: Any) -> bool:
    return isinstance(request, GridRequest)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _axis(task: str, which: Any, text: Any, dropdown: Any, csv_mode: bool, name: str) -> Axis:
    if which in (None, ""):
        which = 0
    axis_type = find_axis(task, which, f"script_args ({name}_type)")
    if axis_type.name == "Nothing":
        return Axis()
    source: Any = text or ""
    if axis_type.choices and not csv_mode and isinstance(dropdown, (list, tuple)) and dropdown:
        source = [str(v) for v in dropdown]
    values = parse_values(source, axis_type.kind, f"script_args ({name}_values)")
    if not values:
        raise RequestError(f"script_args ({name}_values)", f"the {axis_type.name} axis ({name}) has no values")
    return Axis(axis_type, tuple(values))


def from_script_args(base: GenerationRequest, args: Sequence[Any]) -> GridRequest:
    """A grid from A1111's positional ``script_args`` (see the module docstring); ``RequestError`` names the bad one."""
    if not isinstance(args, (list, tuple)):
        raise RequestError("script_args", "must be a list (A1111's x/y/z plot arguments, in order)")
    args = list(args)
    if len(args) not in (3, 6, 9, 14, 18):
        raise RequestError(
            "script_args",
            f"x/y/z plot takes A1111's 18 arguments (x_type, x_values, x_values_dropdown, y_type ... margin_size,"
            f" csv_mode), its older 14, or the first 3, 6 or 9 (the axes, the rest default); got {len(args)}",
        )
    args += [None] * (18 - len(args)) if len(args) != 14 else []
    if len(args) == 14:  # the older layout: no vary_seeds_x/y/z, no csv_mode
        args = [*args[:13], False, False, False, args[13], False]
    csv_mode = _flag(args[17])
    axes = tuple(_axis(base.task, args[3 * i], args[3 * i + 1], args[3 * i + 2], csv_mode, "xyz"[i]) for i in range(3))
    try:
        margin = int(args[16] or 0)
    except (TypeError, ValueError):
        raise RequestError("script_args (margin_size)", f"must be a whole number of pixels, got {args[16]!r}") from None
    options = GridOptions(
        draw_legend=True if args[9] is None else _flag(args[9]),
        include_lone_images=_flag(args[10]),
        include_sub_grids=_flag(args[11]),
        no_fixed_seeds=_flag(args[12]),
        vary_seeds=(_flag(args[13]), _flag(args[14]), _flag(args[15])),
        margin_size=max(0, min(margin, 500)),
    )
    return make_grid(base, axes, options)  # type: ignore[arg-type]


def make_grid(base: GenerationRequest, axes: tuple[Axis, Axis, Axis], options: GridOptions) -> GridRequest:
    """The grid with its seeds fixed (A1111: a -1 seed becomes one random seed for every cell unless
    ``no_fixed_seeds``; each -1 of a Seed axis its own); checks that it is not too large and every cell builds."""
    if not options.no_fixed_seeds:
        base = base.replace(seed=_fixed(base.seed), subseed=_fixed(base.subseed))
        axes = tuple(
            replace(a, values=tuple(_fixed(v) for v in a.values)) if a.type.name in ("Seed", "Var. seed") else a
            for a in axes
        )  # type: ignore[assignment]
    grid = GridRequest(base, axes, options)
    x, y, z = grid.shape
    if x * y * z > MAX_CELLS:
        raise RequestError("script_args", f"the grid has {x * y * z} cells; the most one grid may have is {MAX_CELLS}")
    cells(grid)  # every cell's request builds (Prompt S/R finds its text, sizes read ...)
    return grid


def _fixed(seed: Any) -> Any:
    return random.randrange(2**32) if seed in (-1, None) else seed


def cell_request(grid: GridRequest, ix: int, iy: int, iz: int) -> GenerationRequest:
    req = grid.base
    for axis, i in zip(grid.axes, (ix, iy, iz)):
        req = axis.type.apply(req, axis.values[i], axis.values)  # type: ignore[misc]
    vx, vy, vz = grid.options.vary_seeds
    if (vx or vy or vz) and req.seed >= 0:
        x, y, _ = grid.shape
        xdim, ydim = (x if vx else 1), (y if vy else 1)
        offset = (ix if vx else 0) + (iy * xdim if vy else 0) + (iz * xdim * ydim if vz else 0)
        req = req.replace(seed=(req.seed + offset) % 2**32)
    return req


def cells(grid: GridRequest) -> list[Cell]:
    """Every cell, in the grid's layout order (x fastest, then y, then z)."""
    x, y, z = grid.shape
    return [Cell(ix, iy, iz, cell_request(grid, ix, iy, iz)) for iz in range(z) for iy in range(y) for ix in range(x)]


def run_order(grid: GridRequest, layout: list[Cell]) -> list[Cell]:
    """The order the cells run in: the dearest axis (checkpoint, then VAE) outermost, as A1111, so each
    checkpoint loads once; otherwise z, then y, then x. The layout stays as asked."""
    dims = [2, 1, 0]  # z outermost, x innermost
    dims.sort(key=lambda d: -grid.axes[d].type.cost)  # stable: ties keep z, y, x
    return sorted(layout, key=lambda c: tuple((c.ix, c.iy, c.iz)[d] for d in dims))


def script_fields(grid: GridRequest) -> str:
    """A1111's infotext fields of the grid image: ``Script: X/Y/Z plot, X Type: Steps, X Values: "1,2"``."""
    parts = [f"Script: {SCRIPT_TITLE}"]
    for letter, axis in zip("XYZ", grid.axes):
        if axis.type.name != "Nothing":
            values = to_csv(list(axis.values)).replace('"', "'")
            parts += [f"{letter} Type: {axis.type.name}", f'{letter} Values: "{values}"']
    return ", ".join(parts)


def validate_grid(grid: GridRequest, validate: Any) -> GridRequest:
    """``validate`` (the backend's one check) on every cell; an error names the cell and keeps its field."""
    base = validate(grid.base)
    for cell in cells(grid):
        try:
            validate(cell.request)
        except RequestError as exc:
            raise RequestError(exc.field, f"{cell.where}: {exc.message}", exc.valid) from None
    return replace(grid, base=base)
