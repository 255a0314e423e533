"""The UI's logic without a browser: request building, infotext pasting, model-bar choices, LoRA rows,
progress text, token counter, the results stream, and the whole page constructing over real services.

The UI talks to the backend only (``services.backend``); where a test sets what is loaded, it sets what
the backend answers."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.app_services import tmp_services
from webui.backend import LoadedModel, ModelInfo
from webui.backend.local import LocalBackend
from webui.generation.infotext_map import infotext_for
from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import GenerationService, JobResult, Progress
from webui.ui import choices, model_bar, runner
from webui.ui.control_events import count_text, family_updates
from webui.ui.control_values import (
    error_text,
    has_parameters,
    request_from_values,
    values_from_infotext,
)
from webui.ui.lora_browser import insert_lora, lora_rows
from webui.ui.page import PageContext


@pytest.fixture
def services(tmp_path):
    return tmp_services(tmp_path)


def _family(services, family_id):
    """The family as the backend describes it (what the page gets)."""
    return next(f for f in services.backend.families() if f.id == family_id)


def _spec(services, family_id):
    """The family spec the sampler table takes (to compare the page's choices with the table's)."""
    return services.families.get(family_id)


def _load_as(services, monkeypatch, family_id):
    """Make the backend answer that a model of ``family_id`` is loaded (nothing is loaded really)."""
    model = ModelInfo("fake.safetensors", "checkpoint", "/nowhere/fake.safetensors", "safetensors", 0, 0, "fake")
    loaded = LoadedModel(model, _family(services, family_id))
    monkeypatch.setattr(services.backend, "loaded", lambda: loaded)


# --- request_from_values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"seed": 5.0, "steps": 20.0, "width": 512.0}, {"seed": 5, "steps": 20, "width": 512}),
        ({"hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler"}, {"hr_sampler_name": ""}),
        (
            {"hr_sampler_name": "Euler", "hr_scheduler": "Karras"},
            {"hr_sampler_name": "Euler", "hr_scheduler": "Karras"},
        ),
        ({"refiner_checkpoint": "None"}, {"refiner_checkpoint": ""}),
        ({"refiner_checkpoint": "xl_refiner.safetensors"}, {"refiner_checkpoint": "xl_refiner.safetensors"}),
        ({"resize_mode": "Crop and resize"}, {"resize_mode": 1}),
        ({"inpainting_fill": "latent noise"}, {"inpainting_fill": 2}),
        ({"inpainting_mask_invert": "Inpaint not masked"}, {"inpainting_mask_invert": 1}),
        ({"inpaint_full_res": "Only masked"}, {"inpaint_full_res": True}),
        ({"inpaint_full_res": "Whole picture"}, {"inpaint_full_res": False}),
        ({"sampler_name": None, "scheduler": None}, {"sampler_name": "", "scheduler": "Automatic"}),
        ({"size_preset": "512x768", "editor": object()}, {}),  # not request fields: ignored
    ],
)
def test_request_from_values_converts_ui_values(values, expected):
    req = request_from_values("img2img", values)
    assert req.task == "img2img"
    for name, value in expected.items():
        assert getattr(req, name) == value
    assert type(req.seed) is int


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"steps": None}, "steps", "empty"),
        ({"seed": "abc"}, "seed", "not a number"),
        ({"width": 512.5}, "width", "whole number"),
        ({"cfg_scale": float("nan")}, "cfg_scale", "not a number"),
        ({"resize_mode": "Stretch"}, "resize_mode", "Just resize"),
    ],
)
def test_request_from_values_names_the_bad_field(values, field, words):
    with pytest.raises(RequestError) as info:
        request_from_values("txt2img", values)
    assert info.value.field == field
    assert words in info.value.message


def test_error_text_uses_the_control_label():
    text = error_text(RequestError("n_iter", "must be between 1 and 100, got 0"))
    assert text == "**Batch count:** must be between 1 and 100, got 0"


# --- values_from_infotext -----------------------------------------------------------------------------

A1111_OLD = (
    "a castle, (detailed:1.2)\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 640x448, Model hash: abc, "
    "Clip skip: 2, Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent"
)


def test_values_from_a1111_infotext():
    v = values_from_infotext(A1111_OLD)
    assert v["prompt"] == "a castle, (detailed:1.2)" and v["negative_prompt"] == "blurry"
    assert (v["sampler_name"], v["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (v["steps"], v["cfg_scale"], v["seed"], v["width"], v["height"]) == (30, 6.5, 1234, 640, 448)
    assert v["clip_skip"] == 2 and v["denoising_strength"] == 0.45
    assert v["enable_hr"] is True and v["hr_scale"] == 1.5 and v["hr_second_pass_steps"] == 10
    assert v["hr_sampler_name"] == "Use same sampler" and v["hr_scheduler"] == "Use same scheduler"
    assert v["inpaint_full_res"] == "Whole picture" and v["inpainting_fill"] == "original"


def test_values_from_text_without_parameters():
    assert values_from_infotext("") == {}
    assert values_from_infotext("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}
    assert not has_parameters("just a prompt") and has_parameters(A1111_OLD)


def test_infotext_round_trip_through_the_controls():
    """Our own infotext, pasted into the controls, gives back the request it was made from."""
    req = GenerationRequest(
        task="inpaint",
        prompt="a dog <lora:x:0.5>",
        negative_prompt="cat",
        sampler_name="Euler a",
        steps=12,
        cfg_scale=5.0,
        width=576,
        height=768,
        seed=42,
        clip_skip=3,
        denoising_strength=0.6,
        mask_blur=8,
        inpainting_fill=0,
        inpaint_full_res=True,
        inpaint_full_res_padding=48,
        inpainting_mask_invert=1,
        use_t5=False,
        shift=3.0,
    )
    text = infotext_for(
        req, req.prompt, req.negative_prompt, seed=42, subseed=-1, width=576, height=768,
        sampler_name="Euler a", schedule="Automatic", steps=12, cfg_scale=5.0,
    )  # fmt: skip
    back = request_from_values("inpaint", values_from_infotext(text))
    for name in (
        "prompt", "negative_prompt", "sampler_name", "steps", "cfg_scale", "width", "height", "seed",
        "clip_skip", "denoising_strength", "mask_blur", "inpainting_fill", "inpaint_full_res",
        "inpaint_full_res_padding", "inpainting_mask_invert", "use_t5", "shift",
    ):  # fmt: skip
        assert getattr(back, name) == getattr(req, name), name


# --- choices per family ----------------------------------------------------------------------------


def test_family_view_follows_the_family(services):
    backend = services.backend
    none = choices.family_view(backend, None, "txt2img")
    assert (none.width, none.height, none.steps) == (512, 512, 20) and none.sampler == "DPM++ 2M"
    assert "Euler a" in none.samplers and none.family_id == "" and not none.is_flow
    xl = choices.family_view(backend, _family(services, "sdxl"), "txt2img")
    assert (xl.width, xl.height, xl.steps, xl.cfg) == (1024, 1024, 25, 6.0)
    assert ("1216 × 832", "1216x832") in xl.presets
    sd3 = choices.family_view(backend, _family(services, "sd3"), "txt2img")
    assert sd3.is_flow and sd3.sampler == "Euler" and "Euler a" not in sd3.samplers
    img2img = choices.family_view(backend, _family(services, "sd3"), "img2img")
    assert img2img.samplers == sd3.samplers  # every flow sampler has scale_noise


def test_family_updates_show_the_defaults_only_on_page_load(services):
    controls = SimpleNamespace(task="txt2img", fields={"hr_sampler_name": None})
    sd3 = _family(services, "sd3")
    changed = family_updates(services.backend, controls, sd3, True)
    assert changed[0]["value"] == "Euler"
    assert changed[0]["choices"] == services.samplers.samplers_for(_spec(services, "sd3"), "txt2img")
    assert (changed[2], changed[4], changed[5]) == (28, 1024, 1024)
    assert changed[8] == {"__type__": "update", "visible": True}
    kept = family_updates(services.backend, controls, sd3, False, "DPM++ 2M", "Automatic", "Use same sampler")
    assert kept[0]["value"] == "DPM++ 2M" and kept[2] == {"__type__": "update"} and kept[4] == {"__type__": "update"}
    assert kept[-1] == {"__type__": "update"}  # nothing to say: the error box keeps a job's message
    assert family_updates(services.backend, controls, _family(services, "sd15"), False)[8]["visible"] is False


def _lacking(services, family, task):
    """A sampler SD 1.5 offers for ``task`` and ``family`` does not."""
    table = services.samplers
    offered = table.samplers_for(_spec(services, family.id), task)
    return next(n for n in table.samplers_for(_spec(services, "sd15"), task) if n not in offered)


def test_a_model_switch_changes_only_what_the_new_family_cannot_use_and_says_so(services):
    controls = SimpleNamespace(task="txt2img", fields={"hr_sampler_name": None})
    sd3 = _family(services, "sd3")
    sampler, hr_sampler = _lacking(services, sd3, "txt2img"), _lacking(services, sd3, "img2img")
    got = family_updates(services.backend, controls, sd3, False, sampler, "Automatic", hr_sampler)
    assert got[0]["value"] == "Euler" and got[1]["value"] == "Automatic"
    assert got[1]["choices"] == services.samplers.schedules_for(_spec(services, "sd3"), "Euler")
    assert got[2:6] == [{"__type__": "update"}] * 4  # steps, CFG, width, height stay
    assert got[9]["value"] == "Use same sampler"
    assert sampler in got[-1] and hr_sampler in got[-1]


def test_usable_values_drop_what_the_loaded_family_cannot_use(services, monkeypatch):
    _load_as(services, monkeypatch, "sd3")
    got = choices.usable_values(
        services.backend,
        "txt2img",
        {"sampler_name": "Euler a", "scheduler": "Karras", "steps": 9, "refiner_checkpoint": "gone.safetensors"},
    )
    assert got == {"steps": 9, "refiner_checkpoint": "None"}
    got = choices.usable_values(services.backend, "txt2img", {"sampler_name": "Euler", "scheduler": "Align Your Steps"})
    assert got == {"sampler_name": "Euler", "scheduler": "Automatic"}


def test_parse_preset():
    assert choices.parse_preset("832x1216") == (832, 1216)
    assert choices.parse_preset(None) is None and choices.parse_preset("big") is None


# --- model bar --------------------------------------------------------------------------------------


def _entry(name, family=None, demo=False, kind="checkpoint"):
    """A catalog entry as the catalog makes them (the backend turns it into a ModelInfo)."""
    fmt = "ckpt" if name.endswith(".ckpt") else "safetensors"
    return SimpleNamespace(
        name=name, path=Path("/nowhere") / name, kind=kind, format=fmt, size=1, mtime_ns=1, family=family,
        demo=demo, error=None, info={}, stem=name.rsplit(".", 1)[0],
    )  # fmt: skip


def test_checkpoint_choices_show_each_family(services):
    services.catalog = SimpleNamespace(
        usable=lambda kind: {
            "checkpoint": [_entry("a.safetensors", "sdxl"), _entry("b.ckpt"), _entry("demo.safetensors", "sd3", True)],
            "vae": [_entry("sdxl_vae.safetensors", kind="vae")],
        }[kind]
    )
    assert model_bar.checkpoint_choices(services.backend) == [
        ("a.safetensors (SDXL)", "a.safetensors"),
        ("b.ckpt (family found when loaded)", "b.ckpt"),
        ("demo.safetensors (SD3 Medium, demo: makes noise)", "demo.safetensors"),
    ]
    assert model_bar.vae_choices(services.backend) == ["Automatic", "sdxl_vae.safetensors"]


def test_failed_load_is_reported_through_the_worker(services):
    bad = services.paths.models / "Stable-diffusion" / "broken.safetensors"
    bad.write_bytes(b"not a model at all")
    services.catalog.refresh()
    services.generation.start()
    try:
        lines = list(model_bar.load_checkpoint(services.backend, "broken.safetensors", timeout=60))
        vae = list(model_bar.set_vae(services.backend, "x.safetensors", timeout=60))
    finally:
        services.generation.stop()
    assert lines[0] == "Loading broken.safetensors ..."
    assert lines[-1].startswith("**Could not load broken.safetensors:**") and "Traceback" not in lines[-1]
    assert vae == ["VAE x.safetensors is used once a checkpoint is loaded."]
    assert list(model_bar.load_checkpoint(services.backend, None)) == ["No checkpoint selected."]


# --- LoRA browser -----------------------------------------------------------------------------------


def _write_lora(path: Path, module: str, fin: int, fout: int) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            f"{module}.lora_down.weight": np.zeros((4, fin), np.float16),
            f"{module}.lora_up.weight": np.zeros((fout, 4), np.float16),
        },
        str(path),
    )


def test_lora_rows_mark_what_fits_the_loaded_model(services, monkeypatch):
    lora_dir = services.paths.models / "Lora"
    _write_lora(
        lora_dir / "style15.safetensors",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        768,
        320,
    )
    _write_lora(
        lora_dir / "sub" / "xlstyle.safetensors",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
        2048,
        640,
    )
    _write_lora(lora_dir / "sd3thing.safetensors", "lora_unet_joint_blocks_0_x_block_attn_qkv", 64, 192)
    (lora_dir / "broken.safetensors").write_bytes(b"\x00" * 10)
    services.catalog.refresh()
    import webui.models.safetensors_header as headers

    backend, read, real_read = services.backend, [], headers.read_header

    def counting_read(path):
        read.append(path)
        return real_read(path)

    monkeypatch.setattr(headers, "read_header", counting_read)
    rows = {r.name: r for r in lora_rows(backend, _family(services, "sd15"))}
    sd35 = {r.name: r for r in lora_rows(backend, _family(services, "sd35_medium"))}
    unloaded = lora_rows(backend, None)
    assert rows["style15"].usable and rows["style15"].made_for == "SD 1.5"
    assert not rows["xlstyle"].usable and rows["xlstyle"].status == "made for SDXL; the loaded model is SD 1.5"
    assert rows["sd3thing"].made_for == "SD3" and not rows["sd3thing"].usable
    assert not rows["broken"].usable
    assert sd35["sd3thing"].usable and not sd35["style15"].usable
    assert all(r.usable for r in unloaded if r.name != "broken")
    # three listings read each header once (the broken file's error comes from the catalog's scan)
    assert len(read) == 3 and len(set(read)) == 3


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("", "<lora:x:1>"), ("a cat  ", "a cat <lora:x:1>"), ("a cat,\n", "a cat, <lora:x:1>")],
)
def test_insert_lora(prompt, expected):
    assert insert_lora(prompt, "x") == expected


# --- progress and results ------------------------------------------------------------------------------


def test_progress_html():
    assert "position 3 in the queue" in runner.progress_html("queued", 3, Progress())
    assert "next to run" in runner.progress_html("queued", 1, Progress())
    running = Progress(step=5, steps=20, done_steps=25, total_steps=100, images_done=1, images_total=4, eta_seconds=75)
    text = runner.progress_html("running", 0, running)
    assert "Step 25/100" in text and "image 2/4" in text and "25%" in text and "ETA: 1 min 15 s" in text
    assert 'style="width:25%"' in text
    assert runner.progress_html("done", 0, running) == ""
    assert runner.format_eta(None) == "ETA: estimating" and runner.format_eta(4.4) == "ETA: 4 s"


def test_token_counter_uses_the_bundled_clip_tokenizer_without_a_model(services):
    backend = services.backend
    assert count_text(backend, "a photo of a cat") == "5/75"
    assert count_text(backend, " ".join(["cat"] * 80)) == "80/150"
    assert count_text(backend, "a cat <lora:style:0.8>") == "2/75"
    assert backend.loaded() is None and services.manager.current_entry is None  # no model was loaded for it


def _fake_runner(gates: dict[str, threading.Event]):
    def run(request, ctx):
        gate = gates[request.prompt]
        ctx.plan(4, 2)
        ctx.begin_pass(4, "txt2img")
        for step in range(1, 5):
            ctx.on_step(step, latents="x", preview=lambda _: Image.new("RGB", (8, 8), "red"))
            if step == 2:
                gate.wait(10)
        images = [Image.new("RGB", (8, 8), c) for c in ("blue", "green")]
        return JobResult(images=images, infotexts=["one\nSteps: 4, Seed: 7", "two\nSteps: 4, Seed: 8"], seeds=[7, 8])

    return run


def test_stream_shows_progress_preview_then_gallery_and_infotext():
    gates = {"first": threading.Event(), "second": threading.Event()}
    service = GenerationService(_fake_runner(gates), preview_every=1)
    service.start()
    try:
        blocker = service.submit(GenerationRequest(prompt="first"), source="ui")
        while blocker.progress.step < 2:  # the first job runs and waits at step 2
            blocker.wait(0.01)
        job = service.submit(GenerationRequest(prompt="second"), source="ui")
        frames = runner._stream(LocalBackend(SimpleNamespace(generation=service)), job.id)
        first = next(frames)
        assert "Waiting: next to run" in first[0]
        gates["first"].set()
        running = next(frames)
        while "Step 2/4" not in running[0]:
            running = next(frames)
        assert running[1]["visible"] is True  # the live preview
        gates["second"].set()
        rest = list(frames)
    finally:
        service.stop()
    assert blocker.state == "done"
    progress, preview, gallery, infotext, error, outcome, selected = rest[-1]
    assert progress == "" and preview["visible"] is False and error == ""
    assert [im.info["parameters"] for im in gallery] == ["one\nSteps: 4, Seed: 7", "two\nSteps: 4, Seed: 8"]
    assert infotext == "one\nSteps: 4, Seed: 7" and outcome["seeds"] == [7, 8] and selected == 0
    assert runner.selected_infotext(outcome, 1).startswith("two") and runner.selected_seed(outcome, 1) == 8


def test_failed_job_shows_words_next_to_generate():
    def run(request, ctx):
        raise RequestError("sampler_name", "unknown sampler 'Foo'; choose one of: Euler")

    service = GenerationService(run)
    service.start()
    try:
        job = service.submit(GenerationRequest(), source="ui")
        with pytest.warns(UserWarning):
            *_, last = runner._stream(LocalBackend(SimpleNamespace(generation=service)), job.id)
    finally:
        service.stop()
    assert last[2] == {"__type__": "update"} and last[5] == {"__type__": "update"}  # earlier results stay
    assert last[4] == "**Sampling method:** unknown sampler 'Foo'; choose one of: Euler"


def test_submit_from_page_reports_request_errors_without_queueing(services):
    def bad():
        return request_from_values("txt2img", {"steps": None})

    assert runner.submit_from_page(services.backend, bad) == ("", "**Sampling steps:** is empty; enter a number")
    assert services.generation.waiting() == []


# --- the whole page -------------------------------------------------------------------------------------


def test_the_page_builds_with_every_tab_and_control_id(services):
    import gradio as gr

    from webui.app import build_page

    blocks = build_page(services)
    assert isinstance(blocks, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    tabs = {block.id for block in blocks.blocks.values() if isinstance(block, gr.Tab)}
    assert {"txt2img", "img2img", "inpaint", "png_info", "extensions", "settings", "models"} <= tabs
    for name in (
        "checkpoint", "refresh-checkpoints", "sd_vae", "txt2img_prompt", "txt2img_neg_prompt", "txt2img_generate",
        "txt2img_interrupt", "txt2img_skip", "txt2img_sampler", "txt2img_scheduler", "txt2img_progress",
        "txt2img_preview", "txt2img_gallery", "txt2img_infotext", "txt2img_seed", "txt2img_enable_hr",
        "txt2img_sd3_options", "txt2img_lora_table", "txt2img_paste", "txt2img_token_counter",
    ):  # fmt: skip
        assert name in ids, name
    assert all("Traceback" not in str(getattr(b, "value", "")) for b in blocks.blocks.values())


def test_page_sync_and_paste_updates_line_up_with_their_outputs(services):
    import gradio as gr

    from webui.ui import txt2img_tab
    from webui.ui.model_bar import build_model_bar

    page = PageContext(services.backend)
    with gr.Blocks():
        build_model_bar(services.backend, page)
        with gr.Tabs() as page.tabs, gr.Tab("txt2img", id="txt2img"):
            txt2img_tab.build(services.backend, page)
        page.finish()
    outputs = page.sync_outputs()
    updates = page.sync_updates("")
    assert len(updates) == len(outputs) and updates[1] == ""
    target = page.paste_targets["txt2img"]
    pasted = page.paste_updates(target, None, A1111_OLD)
    fields = list(target.controls.fields)
    assert len(pasted) == len(fields)
    assert pasted[fields.index("steps")]["value"] == 30
    assert pasted[fields.index("sampler_name")]["value"] == "DPM++ 2M"
    assert pasted[fields.index("enable_hr")]["value"] is True
    assert pasted[fields.index("hr_resize_x")]["value"] == 0


def _txt2img_page(services):
    import gradio as gr

    from webui.ui import txt2img_tab
    from webui.ui.model_bar import build_model_bar

    page = PageContext(services.backend)
    with gr.Blocks():
        build_model_bar(services.backend, page)
        with gr.Tabs() as page.tabs, gr.Tab("txt2img", id="txt2img"):
            txt2img_tab.build(services.backend, page)
        page.finish()
    return page, page.paste_targets["txt2img"]


def test_a_pasted_schedule_type_comes_in_one_update_with_the_choices_of_the_pasted_sampler(services, monkeypatch):
    page, target = _txt2img_page(services)
    _load_as(services, monkeypatch, "sd15")
    only = {"DPM++ 2M": ["Automatic", "Exponential"], "Euler a": ["Automatic"]}
    monkeypatch.setattr(services.samplers, "schedules_for", lambda family, name: only.get(name, ["Automatic"]))
    fields = list(target.controls.fields)
    text = "a boat\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Exponential, Seed: 1, Size: 64x64"
    updates, notes = page.paste_parts(target, None, text, current_sampler="Euler a")
    expected = {"__type__": "update", "choices": only["DPM++ 2M"], "value": "Exponential"}
    assert updates[fields.index("scheduler")] == expected
    assert notes == []


def test_a_pasted_value_the_page_cannot_use_is_never_dropped_silently(services, monkeypatch):
    page, target = _txt2img_page(services)
    _load_as(services, monkeypatch, "sd3")
    monkeypatch.setattr(services.samplers, "schedules_for", lambda family, name: ["Automatic", "Beta"])
    fields = list(target.controls.fields)
    offered = services.samplers.samplers_for(_spec(services, "sd3"), "txt2img")
    lacking = next(n for n in services.samplers.sampler_names() if n not in offered)
    _, notes = page.paste_parts(target, None, f"x\nSteps: 3, Sampler: {lacking}, Schedule type: Karras, Seed: 1")
    assert any(lacking in note for note in notes)
    updates, notes = page.paste_parts(target, None, "x\nSteps: 300, Sampler: Euler, Schedule type: Karras, Seed: 1")
    assert updates[fields.index("scheduler")]["value"] == "Automatic" and updates[fields.index("steps")]["value"] == 150
    assert any("Karras" in note for note in notes) and any("300" in note for note in notes)


def test_extension_tabs_join_the_page_and_a_broken_one_says_why(tmp_path):
    import shutil
    import textwrap

    import gradio as gr

    from tests.app_services import tmp_services
    from webui.app import build_page

    ext = tmp_path / "ext"
    shutil.copytree(Path(__file__).resolve().parent.parent / "extensions" / "example-tab", ext / "example-tab")
    broken = ext / "broken-tab"
    broken.mkdir()
    (broken / "extension.toml").write_text('name = "broken-tab"\nversion = "1"\n')
    (broken / "__init__.py").write_text(
        textwrap.dedent(
            """
            def webui_ui_tabs(services):
                def build():
                    raise RuntimeError("no luck")
                return [("Broken", build)]
            """
        )
    )
    services = tmp_services(tmp_path)
    blocks = build_page(services)
    labels = {b.label for b in blocks.blocks.values() if isinstance(b, gr.Tab)}
    assert {"Step stats", "Broken"} <= labels
    texts = [str(getattr(b, "value", "")) for b in blocks.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("**broken-tab** could not build this tab" in t for t in texts)
    assert "no luck" in (services.extensions.get("broken-tab").error or "")
