"""Prompt styles (A1111's styles.csv): parse, apply, save atomically, and the API's ``styles`` field and
``GET /sdapi/v1/prompt-styles`` through a real server (fake engine: the request the engine sees is checked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from webui.generation import styles as S
from webui.generation.requests import GenerationRequest, RequestError

SAMPLE = Path(__file__).parent / "fixtures" / "styles_a1111.csv"


# --- applying: A1111's rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "style, prompt, expected",
    [
        ("sharp focus", "a cat", "a cat, sharp focus"),
        ("photo of {prompt}, 8k", "a cat", "photo of a cat, 8k"),
        ("{prompt} and {prompt}", "x", "x and x"),  # every placeholder
        ("sharp focus", "", "sharp focus"),  # no separator around an empty side
        ("", "a cat", "a cat"),
        ("  sharp  ", "  a cat  ", "a cat, sharp"),  # appended texts are stripped
        ("{prompt}, 8k", "", ", 8k"),  # the placeholder takes the text as it is
    ],
)
def test_merge_prompt_follows_a1111(style, prompt, expected):
    assert S.merge_prompt(style, prompt) == expected


def test_styles_apply_in_order_to_both_prompts_and_unknown_names_are_skipped():
    styles = [S.Style("A", "{prompt} in a forest", "ugly"), S.Style("B", "oil painting", "{prompt}, blurry")]
    done = S.apply_styles("a fox", "text", styles, ["A", "missing", "B"])
    assert done.prompt == "a fox in a forest, oil painting"
    assert done.negative_prompt == "text, ugly, blurry"
    assert done.applied == ("A", "B") and done.unknown == ("missing",)
    other = S.apply_styles("a fox", "text", styles, ["B", "A"])
    assert other.prompt == "a fox, oil painting in a forest"  # the order matters


@pytest.mark.parametrize(
    "style, styled, bare",
    [
        ("sharp focus", "a cat, sharp focus", "a cat"),
        ("sharp focus", "sharp focus", ""),
        ("focus", "a cat, sharp focus", None),  # not after ", ": another text, not this style
        ("photo of {prompt}, 8k", "photo of a cat, 8k", "a cat"),
        ("photo of {prompt}, 8k", "a cat, 8k", None),
        ("", "a cat", "a cat"),  # an empty style text takes nothing off
        ("{prompt} and {prompt}", "x and x", None),  # two placeholders: not taken apart
    ],
)
def test_unmerge_prompt_undoes_merge_prompt(style, styled, bare):
    assert S.unmerge_prompt(style, styled) == bare


def test_extract_styles_finds_the_styles_a_prompt_pair_was_made_with():
    styles = [
        S.Style("Forest", "{prompt} in a forest", "ugly"),
        S.Style("Oil", "oil painting", "{prompt}, blurry"),
        S.Style("Empty"),
        S.Style("Sharp", "sharp focus", ""),
    ]
    for names in (["Forest", "Oil"], ["Oil", "Forest"], ["Sharp"], ["Forest", "Sharp", "Oil"]):
        done = S.apply_styles("a fox", "text", styles, names)
        back = S.extract_styles(done.prompt, done.negative_prompt, styles)
        assert (back.applied, back.prompt, back.negative_prompt) == (tuple(names), "a fox", "text"), names
    none = S.extract_styles("a fox, oil painting", "text", styles)  # the negative lacks Oil's part
    assert none.applied == () and none.prompt == "a fox, oil painting"


# --- reading: an A1111 file as is ------------------------------------------------------------------


def test_the_a1111_sample_reads_as_a1111_reads_it():
    styles = {s.name: s for s in S.read_styles(SAMPLE)}
    names = [s.name for s in S.read_styles(SAMPLE)]
    assert names == ["Cinematic", "Sharp", 'Quoted "name"', "Two lines", "Negative only"]  # BOM gone, no nameless
    assert styles["Cinematic"].prompt.startswith("cinematic still {prompt} . emotional, harmonious")
    assert styles["Cinematic"].negative_prompt == "anime, cartoon, graphic, text, painting"
    assert styles["Sharp"] == S.Style("Sharp", "sharper focus", "blurrier")  # the later row wins
    assert styles['Quoted "name"'].prompt == 'a "quoted" word, and a comma'
    assert styles["Two lines"].prompt == "first line\r\nsecond line, {prompt}"  # a newline inside quotes
    assert styles["Two lines"].negative_prompt == "bad\nworse"
    assert styles["Negative only"].prompt == ""


def test_a_missing_file_has_no_styles_and_the_oldest_layout_reads(tmp_path):
    assert S.read_styles(tmp_path / "styles.csv") == []
    old = tmp_path / "old.csv"
    old.write_text("name,text\nVintage,sepia photo\n", encoding="utf-8")
    assert S.read_styles(old) == [S.Style("Vintage", "sepia photo", "")]


def test_a_file_that_is_not_utf8_says_so(tmp_path):
    bad = tmp_path / "styles.csv"
    bad.write_bytes("name,prompt\nCaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(S.StylesFileError, match="UTF-8"):
        S.read_styles(bad)


# --- saving: atomic, a .bak, no row lost ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, words",
    [("", "needs a name"), ("   ", "needs a name"), ("two\nlines", "line breaks"), ("x" * 201, "at most 200")],
)
def test_a_bad_style_name_is_refused(name, words):
    with pytest.raises(RequestError, match=words):
        S.check_style_name(name)


def test_saving_keeps_every_other_row_and_column_and_a_backup(tmp_path):
    path = tmp_path / "styles.csv"
    shutil.copy(SAMPLE, path)
    before = SAMPLE.read_bytes()
    store = S.StyleStore(lambda: path)
    store.save("  New, one  ", 'with "quotes", commas\nand a newline {prompt}', "bad")
    after = {s.name: s for s in S.read_styles(path)}
    old = {s.name: s for s in S.read_styles(SAMPLE)}
    assert after.pop("New, one") == S.Style("New, one", 'with "quotes", commas\nand a newline {prompt}', "bad")
    assert after == old  # nothing else changed
    assert (tmp_path / "styles.csv.bak").read_bytes() == before
    assert "from a shared pack" in path.read_text(encoding="utf-8")  # an extra column is kept
    assert ",orphan prompt without a name," in path.read_text(encoding="utf-8")  # a nameless row is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styles.csv", "styles.csv.bak"]  # no temp file left


def test_saving_a_name_again_replaces_it_in_place(tmp_path):
    path = tmp_path / "styles.csv"
    store = S.StyleStore(lambda: path)
    for name in ("a", "b", "c"):
        store.save(name, f"p{name}", "")
    store.save("b", "new", "neg")
    assert S.read_styles(path) == [S.Style("a", "pa"), S.Style("b", "new", "neg"), S.Style("c", "pc")]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "styles.csv"
    shutil.copy(SAMPLE, path)

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(S.os, "replace", refuse)
    with pytest.raises(S.StylesFileError, match="disk full"):
        S.StyleStore(lambda: path).save("New", "x", "")
    assert path.read_bytes() == SAMPLE.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_styled_request_styles_a_hires_prompt_only_when_it_has_one():
    store = SimpleNamespace(apply=lambda p, n, names: S.apply_styles(p, n, [S.Style("A", "{prompt}!", "bad")], names))
    from webui.backend.styles import styled_request

    plain, _ = styled_request(GenerationRequest(prompt="cat"), ["A"], store.apply)
    assert (plain.prompt, plain.negative_prompt, plain.hr_prompt) == ("cat!", "bad", "")
    hires, _ = styled_request(GenerationRequest(prompt="cat", hr_prompt="dog"), ["A"], store.apply)
    assert (hires.hr_prompt, hires.hr_negative_prompt) == ("dog!", "")


def test_the_styles_file_setting_and_its_default_place(tmp_path):
    from webui.app import AppPaths
    from webui.config import Settings, load_settings

    settings = Settings(config_file=str(tmp_path / "config.json"))
    paths = AppPaths.from_settings(settings, tmp_path)
    assert paths.styles_file(settings) == tmp_path / "styles.csv"  # A1111's place: the data folder
    other = settings.with_updates(styles_file=str(tmp_path / "elsewhere" / "mine.csv"))
    assert paths.styles_file(other) == tmp_path / "elsewhere" / "mine.csv"
    loaded, _ = load_settings(["--styles-file", "shared.csv"], environ={}, base_dir=tmp_path)
    assert loaded.styles_file == "shared.csv"


# --- the API ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from tests.api_server import serve_api
    from tests.app_services import tmp_services
    from tests.test_api import FakeRunner
    from webui.generation.service import GenerationService
    from webui.models.demo import write_demo_models

    root = tmp_path_factory.mktemp("styles-api")
    write_demo_models(root / "models", ("sd15",))
    shutil.copy(SAMPLE, root / "styles.csv")  # an A1111 styles.csv copied into the app's folder
    services = tmp_services(root)
    runner = FakeRunner()
    services.generation = GenerationService(runner, preview_every=0)
    services.generation.start()
    with serve_api(services) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield SimpleNamespace(services=services, runner=runner, client=client, root=root)
    services.generation.stop()


def test_prompt_styles_lists_the_file_as_a1111_does(api):
    r = api.client.get("/sdapi/v1/prompt-styles")
    assert r.status_code == 200
    listed = r.json()
    assert [s["name"] for s in listed] == [s.name for s in S.read_styles(SAMPLE)]
    assert set(listed[0]) == {"name", "prompt", "negative_prompt"}
    assert listed[3]["negative_prompt"] == "bad\nworse"


def test_txt2img_styles_reach_the_engine_and_the_info(api):
    body = {"prompt": "a castle", "negative_prompt": "fog", "styles": ["Cinematic", "Sharp"], "steps": 2}
    r = api.client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    seen = api.runner.seen[-1]
    assert seen.prompt == "cinematic still a castle . emotional, harmonious, vignette, highly detailed, sharper focus"
    assert seen.negative_prompt == "fog, anime, cartoon, graphic, text, painting, blurrier"
    info = json.loads(r.json()["info"])
    assert info["styles"] == ["Cinematic", "Sharp"] and info["prompt"] == seen.prompt
    assert info["infotexts"][0].startswith(seen.prompt)  # the infotext holds the styled prompt, as A1111's
    assert not info.get("warnings")


def test_an_unknown_style_is_skipped_as_in_a1111_with_a_warning_listing_the_styles(api):
    r = api.client.post("/sdapi/v1/txt2img", json={"prompt": "a castle", "styles": ["Nope", "Sharp"], "steps": 2})
    assert r.status_code == 200, r.text
    assert api.runner.seen[-1].prompt == "a castle, sharper focus"
    info = json.loads(r.json()["info"])
    assert info["styles"] == ["Sharp"]
    [warning] = [w for w in info["warnings"] if "Nope" in w]
    assert "skipped" in warning and "'Cinematic'" in warning


def test_a_pasted_infotext_gets_its_styles_picked_and_taken_off_the_prompts(api):
    from webui.ui.styles_row import StylesPaste

    paste = StylesPaste(api.services.backend)
    text = "a castle, sharper focus\nNegative prompt: fog, blurrier\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64"
    values, notes = paste.read_infotext(text)
    assert (values["prompt"], values["negative_prompt"]) == ("a castle", "fog") and notes == []
    assert values["styles"]["value"] == ["Sharp"] and "Cinematic" in values["styles"]["choices"]
    assert paste.read_infotext("a castle\nSteps: 2, Sampler: Euler, Seed: 1") == ({}, [])  # no style: as written
    hires = text + ', Hires prompt: "a tower, sharper focus"'
    assert paste.read_infotext(hires) == ({}, [])  # hires prompts: pasted as written


def test_a_style_saved_through_the_backend_is_listed_and_applied(api):
    backend = api.services.backend
    saved = backend.save_style("Saved here", "{prompt}, watercolor", "")
    assert saved.name == "Saved here"
    assert "Saved here" in [s["name"] for s in api.client.get("/sdapi/v1/prompt-styles").json()]
    r = api.client.post(
        "/sdapi/v1/img2img",
        json={"prompt": "a boat", "styles": ["Saved here"], "steps": 2, "init_images": [_tiny_png()]},
    )
    assert r.status_code == 200, r.text
    assert api.runner.seen[-1].prompt == "a boat, watercolor"
    with pytest.raises(RequestError, match="needs a name"):
        backend.save_style(" ", "x", "")


def _tiny_png() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_with_the_real_engine_the_infotext_and_info_hold_the_styled_prompt(tmp_path):
    """The engine's own info has ``styles: []``; the answer names the styles applied, the PNG has the styled prompt."""
    import base64
    import io

    from PIL import Image

    from tests.api_server import serve_api
    from tests.app_services import tmp_services
    from webui.models.demo import demo_checkpoint_name, write_demo_models
    from webui.outputs.writer import read_infotext

    write_demo_models(tmp_path / "models", ("sd15",))
    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nInk,"ink drawing of {prompt}",color\n')
    services = tmp_services(tmp_path, default_model=demo_checkpoint_name("sd15"))
    services.generation.start()
    try:
        with serve_api(services) as url:
            body = {"prompt": "a heron", "styles": ["Ink"], "width": 64, "height": 64, "steps": 2, "seed": 3}
            r = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=300)
    finally:
        services.generation.stop()
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["styles"] == ["Ink"] and info["prompt"] == "ink drawing of a heron"
    text = read_infotext(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
    assert text.startswith("ink drawing of a heron\nNegative prompt: color\n")
