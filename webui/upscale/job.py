"""The Extras job on the generation worker: progress per tile, an interrupt between tiles, results saved as they finish."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webui.upscale.extras import ExtrasRequest, infotext_for, infotext_params, postprocess_line, upscale_one
from webui.upscale.run import Upscalers


def run_extras(req: ExtrasRequest, upscalers: Upscalers, writer: Any, ctx: Any) -> Any:
    """Upscale every image of ``req`` (checked by ``check_extras``); a ``JobResult`` with the images and infotexts.

    ``writer``: the ``OutputWriter`` (None or ``req.save`` False: nothing is saved). An interrupt keeps
    the images finished before it.
    """
    from webui.generation.service import JobResult

    tiles = [_tiles(req, upscalers, image) for image in req.images]
    ctx.plan(sum(tiles) or len(req.images), len(req.images))
    result = JobResult(info={"warnings": list(req.warnings)})
    for index, image in enumerate(req.images):
        ctx.begin_pass(tiles[index], f"upscaling image {index + 1} of {len(req.images)}")
        out = upscale_one(req, image, upscalers, _between(ctx))
        line = postprocess_line(infotext_params(req, image))
        infotext = infotext_for(line, image)
        result.images.append(out)
        result.infotexts.append(infotext)
        result.info.setdefault("html_info", line)
        result.paths.append(_save(writer, req, out, infotext, index) if req.save and writer is not None else "")
        ctx.finish_pass(tiles[index])
        ctx.image_done()
        ctx.partial(result)
    return result


def _tiles(req: ExtrasRequest, upscalers: Upscalers, image: Any) -> int:
    from webui.upscale.extras import factor_for

    factor = factor_for(req, image)
    count = upscalers.tiles_for(req.upscaler_1, image.width, image.height, factor, req.tiles or upscalers.tiles)
    if req.upscaler_2 != "None" and req.extras_upscaler_2_visibility > 0:
        count += upscalers.tiles_for(req.upscaler_2, image.width, image.height, factor, req.tiles or upscalers.tiles)
    return count


def _between(ctx: Any) -> Callable[[int, int], None]:
    done = [0]

    def between(index: int, total: int) -> None:
        if done[0]:
            ctx.on_step(done[0])  # the tile before this one finished; raises on an interrupt
        else:
            ctx.check()
        done[0] += 1

    return between


def _save(writer: Any, req: ExtrasRequest, image: Any, infotext: str, index: int) -> str:
    name = req.names[index] if index < len(req.names) else ""
    if req.output_dir:
        return str(save_in_folder(Path(req.output_dir), image, infotext, name or f"{index:05}.png"))
    tokens = {"prompt": "", "model_name": "", "job_timestamp": ""}
    stem = name.rsplit(".", 1)[0] if name else ""
    path = writer.save(image, category="extras", infotext=infotext, seed=0, tokens={**tokens, "filename": stem})
    return str(path)


def save_in_folder(folder: Path, image: Any, infotext: str, name: str) -> Path:
    """``image`` as PNG named after its source in ``folder`` (``-1``, ``-2`` ... when taken), written atomically."""
    from webui.outputs.writer import sanitize_filename_part, write_image

    stem = sanitize_filename_part(Path(name).stem, replace_spaces=False) or "image"
    tmp = folder / f".{os.getpid()}-{secrets.token_hex(8)}.png.tmp"
    try:
        with open(tmp, "wb") as fp:
            write_image(image, infotext, "png", fp)
            fp.flush()
            os.fsync(fp.fileno())
        for number in range(10_000):
            final = folder / (f"{stem}.png" if number == 0 else f"{stem}-{number}.png")
            try:
                os.link(tmp, final)  # fails when the name is taken: nothing is overwritten
            except FileExistsError:
                continue
            return final
        raise OSError(f"no free file name for {stem}.png in {folder}")
    finally:
        tmp.unlink(missing_ok=True)
