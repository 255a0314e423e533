"""The hook specs and how ExtensionHost calls them: order, chaining, isolation, options, the examples.

Plugins here are small objects registered as built-ins or as entry-point packages; the folder
extensions are loaded from tests/fixtures/extensions and from extensions/ (the two examples).
"""

from __future__ import annotations

import dataclasses
import inspect
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from webui import hooks
from webui.extensions import ExtensionError, ExtensionHost, ExtensionTab
from webui.generation.requests import GenerationRequest
from webui.hooks import ImageEvent, JobRefused, SaveEvent, SettingSpec, StepEvent, hookimpl

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "extensions"
EXAMPLES = ROOT / "extensions"


def plugin(**hooks_by_name):
    """A plugin object whose hooks are the given functions (each marked as @hookimpl would)."""
    namespace = {}
    for name, fn in hooks_by_name.items():
        opts = getattr(fn, "opts", {})
        namespace[name] = staticmethod(hookimpl(**opts)(fn))
    return type("Plugin", (), namespace)()


def opts(fn=None, **kwargs):
    def mark(f):
        f.opts = kwargs
        return f

    return mark(fn) if fn else mark


def host_with(tmp_path: Path, folders=(), source: Path = FIXTURES, packages=(), **kwargs) -> ExtensionHost:
    ext_dir = tmp_path / "extensions"
    ext_dir.mkdir(parents=True, exist_ok=True)
    for name in folders:
        shutil.copytree(source / name, ext_dir / name, ignore=shutil.ignore_patterns("__pycache__"))
    eps = [SimpleNamespace(name=n, value=n, load=lambda p=p: p, dist=None) for n, p in packages]
    kwargs.setdefault("allow_install", False)
    return ExtensionHost(ext_dir, tmp_path / "state.json", entry_points=lambda: eps, **kwargs)


def torch_latents(value: float = 0.0):
    import torch

    return torch.full((1, 4, 8, 8), value)


def step_event(latents, step: int = 1) -> StepEvent:
    return StepEvent("job-1", step, 2, latents, 999, "sd15", "txt2img")


# --- the specs themselves ----------------------------------------------------------------------


def test_every_spec_is_documented_here_and_in_the_guide():
    guide = (ROOT / "docs" / "EXTENSIONS.md").read_text()
    assert len(hooks.HOOK_NAMES) == 16
    for name in hooks.HOOK_NAMES:
        spec = getattr(hooks.HookSpecs, name)
        assert len(inspect.getdoc(spec) or "") > 40, name
        assert f"{name}(" in guide, f"{name} is missing from docs/EXTENSIONS.md"


def test_every_hook_but_settings_offers_options():
    for name in hooks.HOOK_NAMES:
        params = list(inspect.signature(getattr(hooks.HookSpecs, name)).parameters)
        assert ("options" in params) is (name != "webui_settings"), name


def test_setting_spec_checks_itself():
    with pytest.raises(ValueError, match="not one of"):
        SettingSpec("x_mode", "c", "Mode", choices=["a", "b"])
    with pytest.raises(TypeError, match="bool, int, float or str"):
        SettingSpec("x_list", [1], "List")
    with pytest.raises(ValueError, match="letters, digits"):
        SettingSpec("x mode", 1, "Mode")
    spec = SettingSpec("x_strength", 0.5, "Strength")
    assert spec.problem(1) == "" and spec.problem(0.7) == ""
    assert "takes a float" in spec.problem("high") and "takes a float" in spec.problem(True)
    assert "takes a int" in SettingSpec("x_n", 1, "N").problem(1.5)


def test_call_checks_its_own_arguments(tmp_path):
    host = host_with(tmp_path)
    with pytest.raises(ExtensionError, match="unknown hook 'webui_nope'"):
        host.call("webui_nope")
    with pytest.raises(TypeError, match=r"needs the argument\(s\) \['event'\]"):
        host.call("webui_step")


# --- order ---------------------------------------------------------------------------------------


def recorder(tag: str, **mark):
    return plugin(webui_after_save=opts(**mark)(lambda event: event.log.append(tag)))


def test_order_builtins_then_folders_by_name_then_packages(tmp_path):
    host = host_with(tmp_path, packages=[("zz-package", recorder("package")), ("aa-package", recorder("package-a"))])
    for name in ("b-ext", "a-ext"):
        folder = tmp_path / "extensions" / name
        folder.mkdir()
        (folder / "extension.toml").write_text(f'name = "{name}"\nversion = "1"\n')
        (folder / "__init__.py").write_text(
            f"from webui.hooks import hookimpl\n\n@hookimpl\ndef webui_after_save(event):\n    event.log.append({name!r})\n"
        )
    host.register_builtin("builtin-1", recorder("builtin-1"))
    host.register_builtin("builtin-2", recorder("builtin-2"))
    host.discover()
    event = SimpleNamespace(log=[])
    host.after_save(event)
    assert event.log == ["builtin-1", "builtin-2", "a-ext", "b-ext", "package-a", "package"]


def test_a_builtin_registered_after_discover_still_runs_before_extensions(tmp_path):
    host = host_with(tmp_path, packages=[("ext", recorder("ext"))])
    host.discover()
    host.register_builtin("late-builtin", recorder("builtin"))
    event = SimpleNamespace(log=[])
    host.after_save(event)
    assert event.log == ["builtin", "ext"]


def test_tryfirst_and_trylast_move_an_implementation_across_groups(tmp_path):
    host = host_with(
        tmp_path,
        packages=[
            ("first", recorder("first", tryfirst=True)),
            ("last", recorder("last", trylast=True)),
            ("plain", recorder("plain")),
        ],
    )
    host.register_builtin("builtin", recorder("builtin"))
    host.register_builtin("builtin-last", recorder("builtin-last", trylast=True))
    host.discover()
    event = SimpleNamespace(log=[])
    host.after_save(event)
    assert event.log == ["first", "builtin", "plain", "builtin-last", "last"]


def test_an_extension_cannot_take_a_builtin_sampler_name(tmp_path):
    """Built-ins register first, so a clash is reported against the extension, not the built-in."""
    from webui.generation.samplers import SamplerSpec, SamplerTable, builtin_samplers

    class BuiltinSamplers:
        @hookimpl
        def webui_register_samplers(self, table):
            for spec in builtin_samplers():
                table.register_sampler(spec)

    clash = plugin(
        webui_register_samplers=lambda table: table.register_sampler(
            SamplerSpec("Euler", "EulerDiscreteScheduler", {}, "Automatic", "noise")
        )
    )
    host = host_with(tmp_path, packages=[("clash", clash)])
    host.register_builtin("samplers", BuiltinSamplers())
    host.discover()
    table = SamplerTable(samplers=[])
    host.register_samplers(table)
    assert table.sampler_names("noise") == [s.name for s in builtin_samplers() if s.kind == "noise"]
    assert "failed in webui_register_samplers" in host.get("clash").error
    assert "already used by 'Euler'" in host.get("clash").error
    assert host.get("samplers").error == ""


# --- chaining and isolation in each chaining hook ------------------------------------------------


def test_before_job_chains_requests_and_isolates_errors(tmp_path):
    double = plugin(webui_before_job=lambda request: dataclasses.replace(request, steps=(request.steps or 10) * 2))
    wrong = plugin(webui_before_job=lambda request: {"prompt": "dict instead of a request"})
    host = host_with(tmp_path, ["good", "raises"], packages=[("double", double), ("wrong", wrong)])
    host.discover()
    out = host.before_job(GenerationRequest(prompt="a cat", steps=4))
    assert (out.prompt, out.steps) == ("a cat, masterpiece", 8)  # good (folder), then double (package)
    assert "failed in webui_before_job: RuntimeError: before_job broke" in host.get("raises").error
    assert "returned a dict; return a GenerationRequest" in host.get("wrong").error
    assert host.get("good").error == "" and host.get("double").error == ""


def test_job_refused_fails_the_job_on_purpose(tmp_path):
    def refuse(request):
        raise JobRefused("no cats allowed")

    host = host_with(tmp_path, packages=[("guard", plugin(webui_before_job=refuse))])
    host.discover()
    with pytest.raises(JobRefused, match="no cats"):
        host.before_job(GenerationRequest(prompt="a cat"))
    assert host.get("guard").error == ""


def test_job_refused_elsewhere_is_an_isolated_error(tmp_path):
    def refuse(event):
        raise JobRefused("too late")

    host = host_with(tmp_path, packages=[("late", plugin(webui_after_save=refuse))])
    host.discover()
    host.after_save(SimpleNamespace())
    assert "only allowed in webui_before_job" in host.get("late").error


def test_step_chains_latents_and_isolates_errors(tmp_path):
    import torch

    times_two = plugin(webui_step=lambda event: event.latents * 2)
    plus_one = plugin(webui_step=lambda event: event.latents + 1)
    bad_shape = plugin(webui_step=lambda event: event.latents[:, :2])
    as_half = plugin(webui_step=lambda event: (event.latents + 0).half())
    packages = [("a-times-two", times_two), ("b-bad-shape", bad_shape), ("c-plus-one", plus_one), ("d-half", as_half)]
    host = host_with(tmp_path, ["raises"], packages=packages)
    host.discover()
    latents = torch_latents(3.0)
    out = host.step(step_event(latents))
    assert torch.equal(out, torch.full_like(latents, 7.0))  # 3 * 2 + 1; the bad shape and the error are skipped
    assert out.dtype == latents.dtype  # converted back to the latents' dtype
    assert "failed in webui_step: RuntimeError: step broke" in host.get("raises").error
    assert "return a tensor of shape (1, 4, 8, 8)" in host.get("b-bad-shape").error


def test_step_without_changes_returns_the_same_tensor(tmp_path):
    host = host_with(tmp_path, packages=[("looker", plugin(webui_step=lambda event: None))])
    host.discover()
    latents = torch_latents()
    assert host.step(step_event(latents)) is latents


def test_image_chains_and_isolates_errors(tmp_path):
    from PIL import Image, ImageOps

    invert = plugin(webui_image=lambda event: ImageOps.invert(event.image))
    text = plugin(webui_image=lambda event: "not an image")
    host = host_with(tmp_path, ["raises"], packages=[("invert", invert), ("text", text)])
    host.discover()
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    out = host.image(ImageEvent(image, 0, 1, GenerationRequest()))
    assert out.getpixel((0, 0)) == (245, 235, 225)
    assert "image broke" in host.get("raises").error and "return a PIL image" in host.get("text").error


def test_before_save_merges_fields_and_isolates_errors(tmp_path):
    later = plugin(webui_before_save=lambda event: {"Good": "overridden", "Count": 3})
    bad = plugin(webui_before_save=lambda event: {"Bad: key": "x"})
    host = host_with(tmp_path, ["good", "raises", "relative-entry"], packages=[("later", later), ("bad", bad)])
    host.discover()
    event = SaveEvent(None, "a cat\nSteps: 2", 0, 1, GenerationRequest())
    fields = host.before_save(event)
    assert fields == {"Good": "overridden", "Relative": "from helper.py", "Count": "3"}
    assert "before_save broke" in host.get("raises").error
    assert "field names ['Bad: key'] are invalid" in host.get("bad").error


def test_an_extension_that_keeps_failing_is_turned_off_for_the_session(tmp_path):
    host = host_with(tmp_path, ["raises"], max_failures=3)
    host.discover()
    latents = torch_latents()
    for step in (1, 2):
        host.step(step_event(latents, step))
        assert host.get("raises").status == "ok"
    host.step(step_event(latents, 3))
    ext = host.get("raises")
    assert ext.status == "failed" and ext.failures == 3 and "turned off for this session" in ext.error
    assert not host.has_impls("webui_step")
    assert ext.enabled  # not persisted: the next start tries again
    assert host.set_enabled("raises", True).status == "ok" and host.get("raises").failures == 0


def test_the_first_failure_is_logged_with_its_traceback(tmp_path, caplog):
    host = host_with(tmp_path, ["raises"])
    host.discover()
    host.step(step_event(torch_latents()))
    host.step(step_event(torch_latents()))
    records = [r for r in caplog.records if "failed in webui_step" in r.getMessage()]
    assert len(records) == 2 and "'raises'" in records[0].getMessage()
    assert records[0].exc_info and not records[1].exc_info


# --- the other hooks -----------------------------------------------------------------------------


def test_startup_and_ui_hooks_are_called_with_their_arguments(tmp_path):
    seen = {}

    def build():
        return "built"

    def broken_build():
        raise RuntimeError("tab broke")

    recording = plugin(
        webui_model_loaded=lambda event: seen.setdefault("model", event.name),
        webui_app_started=lambda app, services: seen.setdefault("app", (app, services)),
        webui_ui_tabs=lambda services: [("Mine", build), ("Broken", broken_build), "not a tab"],
        webui_infotext_pasted=lambda text, fields: fields.update({"Mine": text.count("Steps")}),
        webui_register_memory_modes=lambda registry: registry.append("mode"),
    )
    host = host_with(tmp_path, packages=[("rec", recording)])
    host.discover()
    host.model_loaded(hooks.ModelLoadedEvent("tiny", "sd15", pipeline=None))
    host.app_started("APP", "SERVICES")
    registry: list = []
    host.register_memory_modes(registry)
    assert host.infotext_pasted("a\nSteps: 2", {"Steps": "2"}) == {"Steps": "2", "Mine": 1}
    tabs = host.ui_tabs("SERVICES")
    assert [(t.extension, t.title) for t in tabs] == [("rec", "Mine"), ("rec", "Broken")]
    assert "returned 'not a tab'; expected (title, build)" in host.get("rec").error
    assert host.run_guarded("rec", "tab Mine", tabs[0].build) == (True, "built")
    assert host.run_guarded("rec", "tab Broken", tabs[1].build) == (False, None)
    assert host.get("rec").error == "failed in tab Broken: RuntimeError: tab broke"
    assert seen == {"model": "tiny", "app": ("APP", "SERVICES")} and registry == ["mode"]


# --- settings and options ------------------------------------------------------------------------


def test_settings_reach_every_hook_as_options_and_persist(tmp_path):
    host = host_with(tmp_path, ["good"])
    host.discover()
    [(owner, spec)] = host.settings()
    assert (owner, spec.name, host.options["good_suffix"]) == ("good", "good_suffix", ", masterpiece")
    host.set_option("good_suffix", ", oil painting")
    assert host.before_job(GenerationRequest(prompt="a cat")).prompt == "a cat, oil painting"

    again = ExtensionHost(tmp_path / "extensions", tmp_path / "state.json", allow_install=False, entry_points=list)
    again.discover()
    assert again.options["good_suffix"] == ", oil painting"
    with pytest.raises(TypeError):
        again.options["good_suffix"] = "x"  # read-only for hooks


def test_set_option_refuses_bad_values(tmp_path):
    host = host_with(tmp_path, ["good"])
    host.discover()
    with pytest.raises(ExtensionError, match="takes a str"):
        host.set_option("good_suffix", 3)
    with pytest.raises(ExtensionError, match="unknown extension setting 'nope'; known: good_suffix"):
        host.set_option("nope", 1)


def test_a_saved_value_that_no_longer_fits_falls_back_to_the_default(tmp_path):
    (tmp_path / "state.json").write_text('{"disabled": [], "options": {"good_suffix": 5}}')
    host = host_with(tmp_path, ["good"])
    host.discover()
    assert host.options["good_suffix"] == ", masterpiece"


def test_duplicate_or_invalid_settings_are_reported_against_the_later_extension(tmp_path):
    dup = plugin(webui_settings=lambda: [SettingSpec("good_suffix", "", "Again"), "not a spec"])
    host = host_with(tmp_path, ["good"], packages=[("dup", dup)])
    host.discover()
    assert [owner for owner, _ in host.settings()] == ["good"]
    assert "returned 'not a spec'; return a list of SettingSpec" in host.get("dup").error
    assert host.get("dup").failures == 2 and host.get("good").error == ""


def test_disabling_an_extension_removes_its_settings(tmp_path):
    host = host_with(tmp_path, ["good"])
    host.discover()
    host.set_enabled("good", False)
    assert host.settings() == [] and "good_suffix" not in host.options


# --- the example extensions against the real specs ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd15():
    from webui.models.demo import build_tiny_pipeline

    return build_tiny_pipeline("sd15")


def examples_host(tmp_path: Path, extra=()) -> ExtensionHost:
    host = host_with(tmp_path, ["example-sampler", "example-tab"], source=EXAMPLES, packages=extra)
    host.discover()
    assert {e.name: e.status for e in host.extensions()}["example-tab"] == "ok"
    return host


def test_example_sampler_registers_a_working_sampler_and_a_setting(tmp_path, tiny_sd15):
    from webui.families.registry import default_families
    from webui.generation.samplers import SamplerTable

    host = examples_host(tmp_path)
    sd15 = default_families().get("sd15")
    table = SamplerTable()
    host.register_samplers(table)
    assert "Euler (trailing)" in table.samplers_for(sd15, "txt2img")
    assert "Euler a (trailing)" not in table.sampler_names()  # the setting is off by default
    built = table.build(tiny_sd15.scheduler.config, sd15, "txt2img", "euler_trailing", steps=2)
    assert type(built.scheduler).__name__ == "EulerDiscreteScheduler"
    assert built.scheduler.config.timestep_spacing == "trailing"
    built.scheduler.set_timesteps(2)
    assert built.scheduler.timesteps.tolist() == [999.0, 499.0]  # trailing: starts at the last timestep

    host.set_option("example_sampler_ancestral", True)
    table = SamplerTable()
    host.register_samplers(table)
    assert table.sampler("Euler a (trailing)").scheduler_class == "EulerAncestralDiscreteScheduler"


def run_tiny(pipe, host: ExtensionHost):
    """A 2-step 64x64 run with the example's "Euler (trailing)", its step callback going through host.step."""
    from webui.families.registry import default_families
    from webui.generation.samplers import SamplerTable

    table = SamplerTable()
    host.register_samplers(table)
    sd15 = default_families().get("sd15")
    scheduler = table.build(pipe.scheduler.config, sd15, "txt2img", "Euler (trailing)", steps=2).scheduler

    def on_step_end(pipe, i, t, kwargs):
        latents = kwargs["latents"]
        new = host.step(StepEvent("job-7", i + 1, 2, latents, t, "sd15", "txt2img"))
        return {"latents": new} if new is not latents else {}

    original, pipe.scheduler = pipe.scheduler, scheduler
    try:
        return run_pipe(pipe, on_step_end)
    finally:
        pipe.scheduler = original


def run_pipe(pipe, on_step_end):
    import torch

    return pipe(
        prompt="a cat",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
    ).images


def test_example_tab_sees_every_step_and_serves_the_stats(tmp_path, tiny_sd15):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    host = examples_host(tmp_path)
    baseline = run_tiny(tiny_sd15, host)
    from webui.extension_facade import ExtensionFacade

    app = FastAPI()
    host.app_started(app, webui=ExtensionFacade(None, lambda: host.options, app))  # its route: webui.add_route
    stats = TestClient(app).get("/example-tab/stats").json()
    assert stats["job_id"] == "job-7" and stats["steps"] == 2
    assert [row["step"] for row in stats["per_step"]] == [1, 2]
    assert all(row["std"] > 0 for row in stats["per_step"])

    # the per-step hook may change the latents: a later plugin that damps them changes the image
    damp = plugin(webui_step=lambda event: event.latents * 0.5)
    host2 = examples_host(tmp_path / "second", extra=[("damp", damp)])
    damped = run_tiny(tiny_sd15, host2)
    assert abs(baseline - damped).max() > 1e-3
    assert host2.get("damp").error == "" and host2.get("example-tab").error == ""


def test_example_tab_builds_its_tab(tmp_path):
    import gradio as gr

    host = examples_host(tmp_path)
    [tab] = host.ui_tabs(webui=None)
    assert isinstance(tab, ExtensionTab) and (tab.extension, tab.title) == ("example-tab", "Step stats")
    with gr.Blocks() as page, gr.Tab(tab.title):
        ok, _ = host.run_guarded(tab.extension, f"tab {tab.title}", tab.build)
    assert ok
    texts = [c.value for c in page.blocks.values() if isinstance(c, gr.Markdown)]
    assert "No job has run yet." in texts
