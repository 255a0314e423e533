"""X/Y/Z plot without a model: A1111's value syntax, axis lookup, seeds, and a grid run on the real queue over a
fake runner (run order with the checkpoint axis outermost, the layout as asked, progress over the whole grid,
interrupt mid-grid)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import DONE, INTERRUPTED, GenerationService, JobResult
from webui.xyz.axes import find_axis
from webui.xyz.grid import cells, from_script_args, run_order
from webui.xyz.run import with_grids
from webui.xyz.values import parse_values

BASE = GenerationRequest(prompt="a red fox <lora:ink:0.5>", negative_prompt="blurry red", seed=7, steps=3)


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("1, 2,3", int, [1, 2, 3]),
        ("1-5", int, [1, 2, 3, 4, 5]),
        ("1-10 (+2)", int, [1, 3, 5, 7, 9]),
        ("10-1 (-3)", int, [10, 7, 4, 1]),
        ("1-10 [5]", int, [1, 3, 5, 7, 10]),
        ("-1, 5-6", int, [-1, 5, 6]),
        ("0.5-1.5 (+0.25)", float, [0.5, 0.75, 1.0, 1.25, 1.5]),
        ("1-2 [3]", float, [1.0, 1.5, 2.0]),
        ("7, 7.5", float, [7.0, 7.5]),
        ('Euler a, "DPM++ 2M, Karras", x', str, ["Euler a", "DPM++ 2M, Karras", "x"]),
        ("", int, []),
    ],
)
def test_value_syntax(text, kind, expected):
    assert parse_values(text, kind) == expected


@pytest.mark.parametrize(("text", "kind"), [("1, two", int), ("1.5", int), ("1-3 (+0)", int), ("a-b", float)])
def test_bad_values_name_the_value(text, kind):
    with pytest.raises(RequestError) as err:
        parse_values(text, kind, "script_args (x_values)")
    assert err.value.field == "script_args (x_values)" and repr(text.split(", ")[-1]) in err.value.message


def test_axes_by_a1111_index_and_by_name():
    assert find_axis("txt2img", 4).name == "Steps"
    assert find_axis("txt2img", 7).name == "Prompt S/R"  # A1111 clients send y_type=7 for it
    assert find_axis("txt2img", 11).name == "Checkpoint name"
    assert find_axis("img2img", 10).name == "Checkpoint name"  # img2img's list has no "Hires steps"
    assert find_axis("txt2img", "hires. steps").name == "Hires steps"
    with pytest.raises(RequestError, match="'Sigma Churn' is not supported"):
        find_axis("txt2img", 13)
    with pytest.raises(RequestError, match="unknown axis type 'Colour'"):
        find_axis("txt2img", "Colour")
    with pytest.raises(RequestError, match="out of range"):
        find_axis("txt2img", 99)


def args(x=("Nothing", ""), y=("Nothing", ""), z=("Nothing", ""), **options):
    out = []
    for kind, values in (x, y, z):
        out += [kind, values if isinstance(values, str) else "", values if isinstance(values, list) else []]
    flags = {"draw_legend": False, "lone": True, "subs": False, "no_fixed": False, "vx": False, "vy": False}
    flags.update(options)
    return out + [flags["draw_legend"], flags["lone"], flags["subs"], flags["no_fixed"], flags["vx"], flags["vy"],
                  False, 0, False]  # fmt: skip


def test_cells_apply_each_axis():
    grid = from_script_args(BASE, args(("Prompt S/R", "red, blue"), ("LoRA weight", "0.2, 1"), ("Size", "64x96")))
    reqs = [c.request for c in cells(grid)]
    assert [r.prompt for r in reqs] == ["a red fox <lora:ink:0.2>", "a blue fox <lora:ink:0.2>",
                                        "a red fox <lora:ink:1>", "a blue fox <lora:ink:1>"]  # fmt: skip
    assert reqs[1].negative_prompt == "blurry blue" and {(r.width, r.height) for r in reqs} == {(64, 96)}
    with pytest.raises(RequestError, match="'green' .* is in neither"):
        from_script_args(BASE, args(("Prompt S/R", "green, blue")))
    with pytest.raises(RequestError, match="no <lora"):
        from_script_args(BASE.replace(prompt="a fox"), args(("LoRA weight", "1")))


def test_random_seed_is_fixed_once_unless_kept():
    base = BASE.replace(seed=-1)
    seeds = {c.request.seed for c in cells(from_script_args(base, args(("Steps", "1-3"))))}
    assert len(seeds) == 1 and -1 not in seeds
    kept = {c.request.seed for c in cells(from_script_args(base, args(("Steps", "1-3"), no_fixed=True)))}
    assert kept == {-1}
    axis = [c.request.seed for c in cells(from_script_args(BASE, args(("Seed", "-1, -1, 5"))))]
    assert axis[2] == 5 and -1 not in axis
    varied = [c.request.seed for c in cells(from_script_args(BASE, args(("Steps", "1-3"), vx=True)))]
    assert varied == [7, 8, 9]


def test_checkpoint_axis_runs_outermost_and_the_layout_stays():
    grid = from_script_args(BASE, args(("Checkpoint name", ["a.safetensors", "b.safetensors"]), ("Steps", "1-3")))
    layout = cells(grid)
    ordered = run_order(grid, layout)

    def swaps(seq):
        names = [c.request.sd_model_checkpoint for c in seq]
        return sum(1 for a, b in pairwise(names) if a != b)

    assert swaps(layout) == 5 and swaps(ordered) == 1
    assert sorted((c.ix, c.iy) for c in ordered) == sorted((c.ix, c.iy) for c in layout)


COLORS = {("a.safetensors", 1): 10, ("a.safetensors", 2): 60, ("b.safetensors", 1): 120, ("b.safetensors", 2): 200}


class FakeEngine:
    """A runner that reports its steps like the engine and paints a colour that says what it was asked."""

    def __init__(self, interrupt_in_cell: int | None = None, service=None, skip_in_cell: int | None = None) -> None:
        self.seen: list[GenerationRequest] = []
        self.interrupt_in_cell, self.service, self.skip_in_cell = interrupt_in_cell, service, skip_in_cell

    def __call__(self, req, ctx):
        self.seen.append(req)
        ctx.plan(req.steps, 1)
        ctx.begin_pass(req.steps, "sampling")
        for step in range(1, req.steps + 1):
            if len(self.seen) == self.interrupt_in_cell and step == 1:
                self.service.interrupt()
            if len(self.seen) == self.skip_in_cell and step == 1:
                self.service.skip()
            ctx.on_step(step)
        ctx.finish_pass(req.steps)
        image = Image.new("RGB", (16, 16), (COLORS[(req.sd_model_checkpoint, req.steps)], 0, 0))
        ctx.image_done()
        return JobResult(images=[image], infotexts=[f"cell {req.steps}"], seeds=[req.seed], subseeds=[0], paths=[""])


def run_grid(fake, grid, writer=None):
    service = GenerationService(with_grids(fake, writer), preview_every=0)
    fake.service = service
    service.start()
    try:
        job = service.submit(grid)
        assert job.wait(30)
        return job
    finally:
        service.stop()


def test_grid_on_the_queue_runs_cells_in_checkpoint_order_and_draws_the_layout():
    fake = FakeEngine()
    grid = from_script_args(BASE, args(("Checkpoint name", ["a.safetensors", "b.safetensors"]), ("Steps", "1, 2")))
    job = run_grid(fake, grid)
    assert job.state == DONE
    assert [(r.sd_model_checkpoint, r.steps) for r in fake.seen] == [
        ("a.safetensors", 1), ("a.safetensors", 2), ("b.safetensors", 1), ("b.safetensors", 2)]  # fmt: skip
    result = job.result
    assert len(result.images) == 1 + 4  # the grid, then the cells (include sub images)
    pixels = np.asarray(result.images[0])
    assert pixels.shape == (32, 32, 3)  # no legend, no margin: the cells side by side
    for (ckpt, steps), red in COLORS.items():
        ix, iy = ("a.safetensors", "b.safetensors").index(ckpt), steps - 1
        assert pixels[iy * 16 + 8, ix * 16 + 8, 0] == red  # x = checkpoint, y = steps, as asked
    assert job.progress.total_steps == job.progress.done_steps == 1 + 2 + 1 + 2
    assert job.progress.images_done == 4
    assert "Script: X/Y/Z plot, X Type: Checkpoint name" in result.infotexts[0]


def test_interrupt_mid_grid_keeps_the_finished_cells():
    fake = FakeEngine(interrupt_in_cell=3)
    grid = from_script_args(BASE, args(("Checkpoint name", ["a.safetensors", "b.safetensors"]), ("Steps", "1, 2")))
    job = run_grid(fake, grid)
    assert job.state == INTERRUPTED and len(fake.seen) == 3  # the fourth cell never ran
    assert len(job.result.images) == 1 + 2  # the grid (two cells blank) and the two finished cells
    pixels = np.asarray(job.result.images[0])
    assert pixels[8, 8, 0] == COLORS[("a.safetensors", 1)] and pixels[24, 24, 0] == 255  # a blank (white) cell
    assert job.progress.done_steps < job.progress.total_steps


def test_legend_draws_labels_with_the_default_font():
    fake = FakeEngine()
    grid = from_script_args(
        BASE, args(("Checkpoint name", ["a.safetensors", "b.safetensors"]), ("Steps", "1, 2"), draw_legend=True)
    )
    job = run_grid(fake, grid)
    image = job.result.images[0]
    assert image.width > 32 and image.height > 32
    top = np.asarray(image)[: image.height - 32]
    assert (top < 128).any()  # some text was drawn above the cells


def test_skip_drops_the_current_cell_and_the_grid_goes_on():
    fake = FakeEngine(skip_in_cell=2)
    grid = from_script_args(BASE, args(("Checkpoint name", ["a.safetensors", "b.safetensors"]), ("Steps", "1, 2")))
    job = run_grid(fake, grid)
    assert job.state == DONE and len(fake.seen) == 4
    assert len(job.result.images) == 1 + 3  # the grid (one cell blank) and the three cells that ran
    pixels = np.asarray(job.result.images[0])
    assert pixels[24, 8, 0] == 255 and pixels[8, 8, 0] == COLORS[("a.safetensors", 1)]  # cell 2 ran x=a, steps=2


class FakeWriter:
    def __init__(self) -> None:
        self.saved: list[tuple[str, str]] = []

    def save(self, image, *, category, infotext, seed, fmt="png"):
        self.saved.append((category, infotext))
        return f"/outputs/{category}/grid-0001.png"


@pytest.mark.parametrize(("task", "folder"), [("txt2img", "txt2img-grids"), ("img2img", "img2img-grids")])
def test_the_grid_is_saved_in_its_tasks_grid_folder(task, folder):
    writer = FakeWriter()
    grid = from_script_args(BASE.replace(task=task), args(("Checkpoint name", ["a.safetensors"]), ("Steps", "1, 2")))
    job = run_grid(FakeEngine(), grid, writer)
    assert [category for category, _ in writer.saved] == [folder]
    assert writer.saved[0][1].startswith("cell 1, Script: X/Y/Z plot")  # the first cell's infotext, then the script's
    assert job.result.paths[0] == f"/outputs/{folder}/grid-0001.png"
