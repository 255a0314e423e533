"""img2img "SD upscale": the init image upscaled, then redrawn tile by tile with img2img, as A1111's script.

The init image is scaled by ``scale_factor`` with an upscaler (a model, Lanczos, Nearest or None), cut
into tiles of the request's width x height that overlap by at least ``overlap`` pixels (spread evenly,
the last tile flush with the edge), and each tile runs through img2img with the request's prompt,
sampler, steps and denoising strength. Seeds as A1111's script with one tile per batch: tile ``i`` of
the ``n``-th image gets ``seed + n + i``. The tiles are blended back with weights that ramp linearly
over ``overlap`` pixels at every edge that has a neighbour, so seams do not show; the result is
saved once, with the first tile's infotext plus ``SD upscale overlap`` and ``SD upscale upscaler``
(A1111's keys). The whole run is one job on the queue: progress counts every tile's steps, an
interrupt lands between tiles (or inside one) and leaves nothing written.

The options ride on the request (``GenerationRequest.sd_upscale``); ``Engine.run`` hands such a
request to ``run_sd_upscale``. The tile plan is pure functions (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from webui.generation.requests import RequestError, SdUpscale

__all__ = ["SdUpscale", "Tile", "blend_tiles", "check_sd_upscale", "plan_tiles", "run_sd_upscale"]

FIELD = "sd_upscale"
OVERLAP_KEY = "SD upscale overlap"
UPSCALER_KEY = "SD upscale upscaler"
MAX_SCALE = 8.0


@dataclass(frozen=True)
class Tile:
    x: int
    y: int
    width: int
    height: int


# --- the tile plan (pure) ---------------------------------------------------------------------------


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start: evenly spread, neighbours overlapping by >= ``overlap``."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / max(1, tile - overlap))
    count = max(count, 2)
    step = (size - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def plan_tiles(width: int, height: int, tile_width: int, tile_height: int, overlap: int) -> list[Tile]:
    """The tiles covering a ``width`` x ``height`` image, row by row (an image smaller than a tile is padded)."""
    tw, th = min(tile_width, width), min(tile_height, height)
    return [
        Tile(x, y, tw, th)
        for y in tile_starts(height, tile_height, overlap)
        for x in tile_starts(width, tile_width, overlap)
    ]


def feather(tile: Tile, width: int, height: int, overlap: int) -> Any:
    """The tile's blend weights (numpy, height x width): a linear ramp over ``overlap`` px at inner edges."""
    import numpy as np

    def ramp(length: int, head: bool, tail: bool) -> Any:
        weight = np.ones(length, dtype=np.float32)
        fade = min(overlap, length)
        if fade <= 0:
            return weight
        rise = (np.arange(fade, dtype=np.float32) + 0.5) / fade
        if head:
            weight[:fade] = np.minimum(weight[:fade], rise)
        if tail:
            weight[length - fade :] = np.minimum(weight[length - fade :], rise[::-1])
        return weight

    wy = ramp(tile.height, tile.y > 0, tile.y + tile.height < height)
    wx = ramp(tile.width, tile.x > 0, tile.x + tile.width < width)
    return wy[:, None] * wx[None, :]


def blend_tiles(width: int, height: int, tiles: list[Tile], images: list[Any], overlap: int) -> Any:
    """The tiles' images (PIL) laid back into one ``width`` x ``height`` RGB image, feathered on the overlaps."""
    import numpy as np
    from PIL import Image

    total = np.zeros((height, width, 3), dtype=np.float32)
    weights = np.zeros((height, width, 1), dtype=np.float32)
    for tile, image in zip(tiles, images):
        pixels = np.asarray(image.convert("RGB").resize((tile.width, tile.height)), dtype=np.float32)
        mask = feather(tile, width, height, overlap)[:, :, None]
        total[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += pixels * mask
        weights[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += mask
    out = total / np.maximum(weights, 1e-6)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, int(width * scale)), max(1, int(height * scale))


# --- checking ---------------------------------------------------------------------------------------


def tile_size(request: Any, family: Any) -> tuple[int, int]:
    """The tiles' size: the request's width x height, a 0 the family's default side (512 while unknown)."""
    default = tuple(getattr(family, "default_size", None) or (512, 512))
    return request.width or int(default[0]), request.height or int(default[1])


def check_with(engine: Any, request: Any) -> Any:
    """``Engine.check`` of an SD upscale request: the request's own checks, then the options' (a ``CheckedRequest``)."""
    from dataclasses import replace

    from webui.generation.check import check_request

    checked = check_request(request, engine.check_context())
    size = tile_size(request, checked.family)
    resolved = check_sd_upscale(request, engine.upscalers, engine.limits.max_hires_side, size)
    return replace(checked, request=resolved.replace(width=size[0], height=size[1]), width=size[0], height=size[1])


def check_sd_upscale(request: Any, upscalers: Any, max_side: int, tile: tuple[int, int] = (512, 512)) -> Any:
    """The request with its options checked and the upscaler resolved to a name; ``RequestError`` otherwise."""
    options = request.sd_upscale
    if not isinstance(options, SdUpscale):
        raise RequestError(FIELD, "must be the SD upscale options (upscaler, scale_factor, overlap)")
    if request.task != "img2img" or request.init_image is None:
        raise RequestError(FIELD, "SD upscale runs on img2img with an init image; send one in init_images")
    names = [e.name for e in upscalers.entries()] if upscalers is not None else ["None", "Lanczos", "Nearest"]
    name = options.upscaler
    if options.upscaler_index is not None:
        if not 0 <= options.upscaler_index < len(names):
            raise RequestError(
                "script_args",
                f"upscaler index {options.upscaler_index} is out of range; 0 to {len(names) - 1}: "
                f"{', '.join(names)} (GET /sdapi/v1/upscalers)",
                names,
            )
        name = names[options.upscaler_index]
    match = [n for n in names if n.lower() == str(name).strip().lower()]
    if not match:
        raise RequestError(FIELD, f"no upscaler named {name!r}; available: {', '.join(names)}", names)
    if not 1.0 <= float(options.scale_factor) <= MAX_SCALE:
        raise RequestError(FIELD, f"scale factor must be between 1 and {MAX_SCALE:g}, got {options.scale_factor}")
    width, height = upscaled_size(*request.init_image.size, float(options.scale_factor))
    if max(width, height) > max_side:
        raise RequestError(
            FIELD,
            f"the upscaled image would be {width}x{height}, above the limit of {max_side}; lower the scale factor",
        )
    tile_side = min(request.width or tile[0], request.height or tile[1])
    if not 0 <= int(options.overlap) <= tile_side // 2:
        raise RequestError(
            FIELD, f"tile overlap must be between 0 and {tile_side // 2} (half the tile), got {options.overlap}"
        )
    resolved = SdUpscale(match[0], None, float(options.scale_factor), int(options.overlap))
    return request.replace(sd_upscale=resolved)


# --- the run ----------------------------------------------------------------------------------------


class _TileContext:
    """The job's context as one tile's img2img sees it: its steps add to the job's, its saves are the script's."""

    def __init__(self, ctx: Any, tiles: int, images: int) -> None:
        self._ctx, self._tiles, self._images = ctx, tiles, images
        self.label = ""
        self.planned = False

    @property
    def job_id(self) -> str:
        return self._ctx.job_id

    def check(self) -> None:
        self._ctx.check()

    def plan(self, total_steps: int, images_total: int) -> None:
        if not self.planned:  # the first tile tells how many steps each takes
            self._ctx.plan(total_steps * self._tiles, self._images)
            self.planned = True

    def begin_pass(self, steps: int, label: str = "") -> None:
        self._ctx.begin_pass(steps, self.label)

    def on_step(self, step: int, latents: Any = None, preview: Any = None) -> None:
        self._ctx.on_step(step, latents, preview)

    def finish_pass(self, steps: int) -> None:
        self._ctx.finish_pass(steps)

    def image_done(self, count: int = 1) -> None:
        pass

    def partial(self, result: Any) -> None:
        pass


def _padded(image: Any, width: int, height: int) -> Any:
    """``image`` grown to at least ``width`` x ``height`` by repeating its edge pixels."""
    import numpy as np
    from PIL import Image

    if image.width >= width and image.height >= height:
        return image
    pixels = np.asarray(image.convert("RGB"))
    grown = np.pad(pixels, ((0, max(0, height - image.height)), (0, max(0, width - image.width)), (0, 0)), mode="edge")
    return Image.fromarray(grown, "RGB")


def _between(ctx: Any) -> Any:
    """The upscaler model's between-tiles call: an interrupt stops the job; Skip has no tile to drop there."""
    from webui.generation.service import BatchSkipped

    def between(_index: int, _total: int) -> None:
        try:
            ctx.check()
        except BatchSkipped:
            pass

    return between


def run_sd_upscale(engine: Any, request: Any, ctx: Any) -> Any:
    """Every image of the request (``n_iter``), upscaled and redrawn tile by tile; a ``JobResult``."""
    from webui.generation.noise import resolve_seed
    from webui.generation.service import BatchSkipped, JobInterrupted, JobResult

    request = engine.check(request).request  # options checked, upscaler named, the tile size set
    options, tile_w, tile_h = request.sd_upscale, request.width, request.height
    source = request.init_image.convert("RGB")
    if engine.upscalers is not None:
        big = engine.upscalers.upscale(source, options.scale_factor, options.upscaler, between=_between(ctx))
    else:
        from PIL import Image

        big = source.resize(upscaled_size(*source.size, options.scale_factor), Image.Resampling.LANCZOS)
    width, height = big.size
    work = _padded(big, tile_w, tile_h)
    tiles = plan_tiles(work.width, work.height, tile_w, tile_h, options.overlap)
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    extra = {**request.extra_generation_params, OVERLAP_KEY: options.overlap, UPSCALER_KEY: options.upscaler}
    result = JobResult()
    sub = _TileContext(ctx, len(tiles) * request.n_iter, request.n_iter)
    for n in range(request.n_iter):
        redrawn, first = [], None
        for index, tile in enumerate(tiles):
            try:
                ctx.check()  # an interrupt between tiles: nothing of this image is written
                skipped = False
            except BatchSkipped:  # Skip: this tile keeps its upscaled pixels
                skipped = True
            sub.label = f"SD upscale: tile {index + 1} of {len(tiles)}" + (
                f", image {n + 1}" if request.n_iter > 1 else ""
            )
            crop = work.crop((tile.x, tile.y, tile.x + tile.width, tile.y + tile.height))
            one = request.replace(
                sd_upscale=None,
                init_image=crop,
                width=tile.width,
                height=tile.height,
                batch_size=1,
                n_iter=1,
                seed=(seed + n + index) % 2**32,
                subseed=subseed,
                save_images=False,
                extra_generation_params=extra,
            )
            out = JobResult() if skipped else engine.run(one, sub)
            if out.interrupted:
                raise JobInterrupted()
            first = out if first is None and out.infotexts else first
            redrawn.append(out.images[0] if out.images else crop)  # a skipped tile keeps the upscaled pixels
        image = blend_tiles(work.width, work.height, tiles, redrawn, options.overlap).crop((0, 0, width, height))
        _finish(engine, request, result, image, first, seed + n, subseed)
        ctx.image_done(1)
        ctx.partial(result)
    return result


def _finish(engine: Any, request: Any, result: Any, image: Any, first: Any, seed: int, subseed: int) -> None:
    """The blended image saved with the first tile's infotext (A1111's), added to ``result``."""
    text = first.infotexts[0] if first is not None and first.infotexts else ""
    path = ""
    if request.save_images and engine.writer is not None:
        tokens = {"prompt": request.prompt, "width": image.width, "height": image.height}
        path = str(
            engine.writer.save(
                image, category="img2img", infotext=text, seed=seed, fmt=request.output_format, tokens=tokens
            )
        )
    result.images.append(image)
    result.infotexts.append(text)
    result.seeds.append(seed)
    result.subseeds.append(subseed)
    result.paths.append(path)
    info = dict(first.info) if first is not None else {}
    info.update(
        seed=result.seeds[0],
        all_seeds=list(result.seeds),
        all_subseeds=list(result.subseeds),
        infotexts=list(result.infotexts),
    )
    result.info = info
