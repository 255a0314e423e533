"""img2img "SD upscale": the tile plan, a run on the tiny SD 1.5 demo model, interrupts, and the A1111 API."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from tests.app_services import tmp_services
from tests.upscaler_files import compact_state, save_safetensors
from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.sd_upscale import SdUpscale, Tile, blend_tiles, feather, plan_tiles, tile_starts
from webui.generation.service import DONE, Job, JobContext, JobInterrupted
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.outputs.infotext import parse_infotext

SD15 = demo_checkpoint_name("sd15")
MODEL = "2x_tiny_compact"


# --- the tile plan ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, tile, overlap, starts",
    [
        (64, 64, 16, [0]),  # one tile
        (40, 64, 16, [0]),  # smaller than a tile
        (128, 64, 16, [0, 32, 64]),  # ceil((128-16)/48) = 3 tiles, spread evenly
        (112, 64, 16, [0, 48]),  # exactly two tiles overlapping by 16
        (100, 64, 0, [0, 36]),  # no overlap asked: still covered, the last tile flush with the edge
        (1024, 512, 64, [0, 256, 512]),  # A1111's default tile and overlap at 2x of 512
    ],
)
def test_tile_starts(size, tile, overlap, starts):
    assert tile_starts(size, tile, overlap) == starts


@pytest.mark.parametrize(
    "size, tile, overlap", [(128, 64, 16), (200, 64, 8), (1000, 512, 64), (96, 64, 32), (65, 64, 0)]
)
def test_tiles_cover_the_image_and_overlap_by_at_least_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts)), starts


def test_plan_tiles_table():
    tiles = plan_tiles(128, 96, 64, 64, 16)
    assert [(t.x, t.y) for t in tiles] == [(0, 0), (32, 0), (64, 0), (0, 32), (32, 32), (64, 32)]
    assert {(t.width, t.height) for t in tiles} == {(64, 64)}
    assert plan_tiles(40, 30, 64, 64, 16) == [Tile(0, 0, 40, 30)]  # smaller than a tile: one, the image's size


def test_feather_ramps_only_at_inner_edges():
    left, right = Tile(0, 0, 64, 64), Tile(48, 0, 64, 64)
    wl, wr = feather(left, 112, 64, 16), feather(right, 112, 64, 16)
    assert wl[:, :48].min() == 1.0 and wl[:, -1].max() < 0.1  # the image border keeps full weight
    assert wr[:, 0].max() < 0.1 and wr[:, 16:].min() == 1.0
    share = wl[0, 48:] / (wl[0, 48:] + wr[0, :16])  # the left tile's share across the overlap falls 1 -> 0
    assert np.all(np.diff(share) < 0) and share[0] > 0.9 and share[-1] < 0.1


def test_blend_of_tiles_cut_from_an_image_gives_the_image_back():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), "RGB")
    tiles = plan_tiles(128, 96, 64, 64, 16)
    crops = [image.crop((t.x, t.y, t.x + t.width, t.y + t.height)) for t in tiles]
    out = blend_tiles(128, 96, tiles, crops, 16)
    assert out.size == (128, 96)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int)).max() <= 1


def test_blend_feathers_two_different_tiles_across_the_overlap():
    tiles = [Tile(0, 0, 64, 64), Tile(48, 0, 64, 64)]
    black, white = Image.new("RGB", (64, 64), 0), Image.new("RGB", (64, 64), (255, 255, 255))
    row = np.asarray(blend_tiles(112, 64, tiles, [black, white], 16))[10, :, 0].astype(int)
    assert row[:48].max() == 0 and row[64:].min() == 255
    assert all(a <= b for a, b in itertools.pairwise(row[48:65]))
    assert 0 < row[50] < row[56] < row[62] < 255  # a ramp across the overlap, not a step or a flat average


# --- a run on the demo model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-upscale")
    write_demo_models(root / "models", ("sd15",))
    save_safetensors(compact_state(scale=2), root / "models" / "ESRGAN" / f"{MODEL}.safetensors")
    return tmp_services(root)


def init_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), "RGB")


def request(**fields) -> GenerationRequest:
    values = {
        "task": "img2img",
        "prompt": "a lighthouse",
        "seed": 5,
        "steps": 4,
        "width": 64,
        "height": 64,
        "denoising_strength": 0.75,
        "init_image": init_image(),
        "sd_model_checkpoint": SD15,
        "save_images": False,
        "sd_upscale": SdUpscale(upscaler="Lanczos", scale_factor=2.0, overlap=16),
    }
    values.update(fields)
    return GenerationRequest(**values)


class Counting(JobContext):
    """Counts the sampling passes (one per tile) and may press Interrupt after ``stop_after`` of them."""

    def __init__(self, req: GenerationRequest, stop_after: int | None = None) -> None:
        super().__init__(Job(req, "test", 1), preview_every=0)
        self.passes, self.labels, self.stop_after = 0, [], stop_after

    def begin_pass(self, steps, label=""):
        self.labels.append(label)
        super().begin_pass(steps, label)

    def finish_pass(self, steps):
        self.passes += 1
        super().finish_pass(steps)
        if self.passes == self.stop_after:
            self._job.interrupt()


def saved(services) -> set:
    outputs = services.paths.outputs
    return {p for p in outputs.rglob("*") if p.is_file()} if outputs.exists() else set()


def test_a_run_upscales_and_redraws_every_tile(services):
    req = request(save_images=True)
    ctx = Counting(req)
    before = saved(services)
    result = services.engine.run(req, ctx)
    image = result.images[0]
    assert image.size == (96, 96)  # 48 x 2
    tiles = plan_tiles(96, 96, 64, 64, 16)
    assert len(tiles) == 4 and ctx.passes == 4  # one img2img pass per tile
    assert ctx.labels[-1] == "SD upscale: tile 4 of 4"
    progress = ctx._job.progress
    assert progress.total_steps == progress.done_steps == 4 * 3  # 4 tiles x (0.75 x 4 steps)
    lanczos = np.asarray(init_image().resize((96, 96), Image.Resampling.LANCZOS), dtype=int)
    out = np.asarray(image, dtype=int)
    for t in tiles:  # each tile's own corner (no neighbour reaches it) was denoised, not kept as upscaled
        cx, cy = (0 if t.x == 0 else 80), (0 if t.y == 0 else 80)
        assert np.abs(out[cy : cy + 16, cx : cx + 16] - lanczos[cy : cy + 16, cx : cx + 16]).mean() > 5, t
    fields = parse_infotext(result.infotexts[0])
    assert fields["SD upscale overlap"] == "16" and fields["SD upscale upscaler"] == "Lanczos"
    assert fields["Size"] == "64x64"  # A1111 writes the tile size
    new = saved(services) - before
    assert len(new) == 1 and Image.open(next(iter(new))).size == (96, 96)
    assert result.paths == [str(next(iter(new)))]


def test_an_upscaler_model_makes_the_upscaled_image(services):
    req = request(sd_upscale=SdUpscale(upscaler=MODEL, scale_factor=2.0, overlap=16))
    ctx = Counting(req)
    result = services.engine.run(req, ctx)
    assert result.images[0].size == (96, 96) and ctx.passes == 4
    assert parse_infotext(result.infotexts[0])["SD upscale upscaler"] == MODEL


def test_the_same_seed_gives_the_same_image_and_another_seed_another(services):
    a = services.engine.run(request(), Counting(request())).images[0]
    b = services.engine.run(request(), Counting(request())).images[0]
    c = services.engine.run(request(seed=6), Counting(request())).images[0]
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(c, dtype=int)).mean() > 1


def test_interrupt_between_tiles_writes_nothing(services):
    req = request(save_images=True)
    ctx = Counting(req, stop_after=2)
    before = saved(services)
    with pytest.raises(JobInterrupted):
        services.engine.run(req, ctx)
    assert ctx.passes == 2  # the third tile never started
    assert saved(services) == before


def test_skip_keeps_the_tile_upscaled_and_finishes_the_image(services):
    class SkipSecond(Counting):
        def finish_pass(self, steps):
            super().finish_pass(steps)
            if self.passes == 1:
                self._job.skip()

    req = request()
    ctx = SkipSecond(req)
    result = services.engine.run(req, ctx)
    assert ctx.passes == 3 and result.images[0].size == (96, 96)  # tile 2 skipped, the rest redrawn
    lanczos = np.asarray(init_image().resize((96, 96), Image.Resampling.LANCZOS), dtype=int)
    corner = np.asarray(result.images[0], dtype=int)[0:16, 80:96]  # only tile 2 covers it
    assert np.abs(corner - lanczos[0:16, 80:96]).max() <= 1


def test_a_width_of_0_tiles_at_the_familys_size(services):
    checked = services.engine.check(request(width=0, height=0))
    assert checked.request.width == checked.family.default_size[0] == checked.width
    assert checked.request.height == checked.family.default_size[1]


def test_bad_options_are_refused_with_the_field(services):
    with pytest.raises(RequestError, match="no upscaler named"):
        services.engine.check(request(sd_upscale=SdUpscale(upscaler="nope")))
    with pytest.raises(RequestError, match="out of range"):
        services.engine.check(request(sd_upscale=SdUpscale(upscaler_index=99)))
    with pytest.raises(RequestError, match="tile overlap"):
        services.engine.check(request(sd_upscale=SdUpscale(upscaler="Lanczos", overlap=40)))
    with pytest.raises(RequestError, match="above the limit"):
        services.engine.check(
            request(
                sd_upscale=SdUpscale(upscaler="Lanczos", scale_factor=8.0), init_image=Image.new("RGB", (1024, 1024))
            )
        )
    checked = services.engine.check(request(sd_upscale=SdUpscale(upscaler_index=1, overlap=16))).request
    assert checked.sd_upscale.upscaler == services.upscalers.names()[1]


def test_as_one_job_on_the_queue(services):
    services.generation.start()
    try:
        job = services.generation.submit(request())
        assert job.wait(300), "job did not finish"
        assert job.state == DONE, job.error
        assert job.result.images[0].size == (96, 96)
        assert job.progress.images_done == 1 and job.progress.fraction == 1.0
    finally:
        services.generation.stop()


# --- the A1111 API ----------------------------------------------------------------------------------


def b64(image: Image.Image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def api_body(**fields) -> dict:
    body = {
        "prompt": "a lighthouse",
        "seed": 5,
        "steps": 4,
        "width": 64,
        "height": 64,
        "denoising_strength": 0.75,
        "init_images": [b64(init_image())],
        "script_name": "SD upscale",
        "script_args": [None, 16, 1, 2.0],  # [_, overlap, upscaler_index, scale_factor]; 1 = Lanczos
        "override_settings": {"sd_model_checkpoint": SD15},
    }
    body.update(fields)
    return body


def test_script_args_become_the_options():
    from webui.api.convert import request_from_api
    from webui.api.schemas import Img2ImgRequest, Txt2ImgRequest

    call = request_from_api(Img2ImgRequest(**api_body()), "img2img", validate=False)
    assert call.request.sd_upscale == SdUpscale(upscaler_index=1, scale_factor=2.0, overlap=16)
    short = request_from_api(Img2ImgRequest(**api_body(script_args=[""])), "img2img", validate=False)
    assert short.request.sd_upscale == SdUpscale(upscaler_index=0, scale_factor=2.0, overlap=64)  # A1111's defaults
    with pytest.raises(RequestError, match="img2img only"):
        request_from_api(Txt2ImgRequest(prompt="x", script_name="sd upscale"), "txt2img", validate=False)
    with pytest.raises(RequestError, match="overlap, upscaler_index, scale_factor"):
        request_from_api(Img2ImgRequest(**api_body(script_args=[None, "wide", 1, 2])), "img2img", validate=False)
    with pytest.raises(RequestError, match="not supported"):
        request_from_api(Img2ImgRequest(**api_body(script_name="some other script")), "img2img", validate=False)


def test_api_round_trip(services):
    import base64
    import io
    import json

    import httpx

    from tests.api_server import serve_api
    from webui.outputs.writer import read_infotext

    services.generation.start()
    try:
        with serve_api(services) as url, httpx.Client(base_url=url, timeout=300) as client:
            r = client.post("/sdapi/v1/img2img", json=api_body())
            assert r.status_code == 200, r.text
            image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
            assert image.size == (96, 96)
            fields = parse_infotext(read_infotext(image) or json.loads(r.json()["info"])["infotexts"][0])
            assert fields["SD upscale upscaler"] == "Lanczos" and fields["SD upscale overlap"] == "16"
            bad = client.post("/sdapi/v1/img2img", json=api_body(script_args=[None, 16, 99, 2.0]))
            assert bad.status_code == 422 and "out of range" in bad.text
    finally:
        services.generation.stop()


# --- the page's accordion (plain data) --------------------------------------------------------------


def test_the_accordion_values_become_the_options_when_ticked():
    from webui.ui.sd_upscale_section import ENABLED, OVERLAP, SCALE, UPSCALER, with_sd_upscale

    build = with_sd_upscale(lambda values: GenerationRequest(task="img2img"))
    values = {ENABLED: True, UPSCALER: "Nearest", SCALE: 1.5, OVERLAP: 32}
    assert build(values).sd_upscale == SdUpscale(upscaler="Nearest", scale_factor=1.5, overlap=32)
    assert build({**values, ENABLED: False}).sd_upscale is None


def test_a_pasted_infotext_ticks_the_accordion():
    from webui.ui.sd_upscale_section import ENABLED, OVERLAP, UPSCALER, SdUpscaleSection

    text = "a lighthouse\nSteps: 4, Seed: 5, Size: 64x64, SD upscale overlap: 32, SD upscale upscaler: Nearest"
    assert SdUpscaleSection().read_infotext(text)[0] == {ENABLED: True, UPSCALER: "Nearest", OVERLAP: 32}
    assert SdUpscaleSection().read_infotext("x\nSteps: 4, Seed: 5")[0] == {ENABLED: False}
