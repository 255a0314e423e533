"""The backend boundary: the UI and the API talk to ``webui.backend`` only, with plain data both ways,
and extensions get the narrow facade, not the app's services.

* every import in ``webui/ui`` and ``webui/api`` (module level and inside functions) is checked
  against what they may use: nothing from ``webui.models`` or ``webui.generation`` but the request
  vocabulary, no memory/speed internals, no composition root;
* ``LocalBackend`` has every method of the ``Backend`` protocol with the same parameters;
* what it returns (model lists, families, choices, job snapshots with images and previews, options,
  settings) and the errors it raises survive a pickle round trip, and hold no live object;
* ``webui_ui_tabs`` / ``webui_app_started`` receive an ``ExtensionFacade`` exposing the backend,
  settings and options read-only, and ``add_route``: no manager, engine, job queue or services.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pickle
import shutil
import threading
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from tests.app_services import tmp_services
from webui.backend import Backend, BackendError, JobSnapshot, NotFound, QueueFull, TaskFailed
from webui.backend.local import LocalBackend
from webui.generation.requests import GenerationRequest, RequestError
from webui.generation.service import GenerationService, JobResult

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "extensions"

# What the UI and API may import from the app's generation/model side: the request vocabulary.
ALLOWED = {
    "webui.generation.requests",  # GenerationRequest, Limits, RequestError, the A1111 choice lists
    "webui.generation.infotext_map",  # which infotext keys are which request fields
}
FORBIDDEN = ("webui.models", "webui.generation", "webui.memory", "webui.speed", "webui.backend.local", "webui.app")


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every import in a module, at any depth (relative imports resolved)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            found.append((node.lineno, base))
    return found


def _forbidden(module: str) -> bool:
    if any(module == allowed or module.startswith(allowed + ".") for allowed in ALLOWED):
        return False
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


UI_AND_API = sorted([*(ROOT / "webui" / "ui").glob("*.py"), *(ROOT / "webui" / "api").glob("*.py")])


def test_the_import_check_sees_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "webui" / "ui" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from webui.models.catalog import ModelCatalog\nfrom ..generation import engine\n")
    found = [name for _, name in _imports(module, tmp_path)]
    assert "webui.models.catalog" in found and "webui.generation.engine" in found
    assert all(_forbidden(name) for name in ("webui.models.catalog", "webui.generation.engine", "webui.app"))
    assert not _forbidden("webui.generation.requests") and not _forbidden("webui.backend")


@pytest.mark.parametrize("path", UI_AND_API, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_ui_and_api_import_only_the_backend_and_the_request_records(path):
    bad = [f"line {line}: {name}" for line, name in _imports(path) if _forbidden(name)]
    assert not bad, f"{path.relative_to(ROOT)} reaches past the backend: {bad}"


@pytest.mark.parametrize("path", UI_AND_API, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_ui_or_api_function_takes_the_services(path):
    tree = ast.parse(path.read_text(), str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names = [
        f"{node.name}({arg.arg})"
        for node in functions
        for arg in [*node.args.args, *node.args.kwonlyargs]
        if arg.arg == "services"
    ]
    assert not names, f"{path.name}: {names} (the UI and API get the backend)"


# --- the protocol ------------------------------------------------------------------------------------


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(Backend).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


@pytest.mark.parametrize("name", sorted(_protocol_methods()))
def test_local_backend_implements_each_protocol_method_with_its_parameters(name):
    want = _protocol_methods()[name]
    got = inspect.signature(getattr(LocalBackend, name))
    assert [(p.name, p.default) for p in got.parameters.values()] == [
        (p.name, p.default) for p in want.parameters.values()
    ]


def test_local_backend_has_no_public_method_outside_the_protocol():
    public = {n for n, m in vars(LocalBackend).items() if not n.startswith("_") and inspect.isfunction(m)}
    assert public == set(_protocol_methods())


# --- plain data --------------------------------------------------------------------------------------

PLAIN = (str, int, float, bool, type(None), bytes)


def _live_objects(value: Any, path: str = "value", depth: int = 0) -> list[str]:
    """Paths inside ``value`` to anything that is not plain data (builtins, records, PIL images)."""
    from webui.config import Settings
    from webui.extensions import Extension
    from webui.hooks import SettingSpec

    if depth > 8 or isinstance(value, PLAIN) or isinstance(value, Image.Image):
        return []
    if isinstance(value, BackendError):  # an error: its fields
        return _live_objects(vars(value), path, depth + 1)
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _live_objects(v, f"{path}[{i}]", depth + 1)]
    if isinstance(value, (dict, MappingProxyType)):
        return [p for k, v in value.items() for p in _live_objects(v, f"{path}[{k!r}]", depth + 1)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        module = type(value).__module__
        known = isinstance(value, (Settings, Extension, SettingSpec, GenerationRequest)) or module.startswith(
            ("webui.backend.", "webui.generation.requests", "webui.settings_edit")
        )
        if not known:
            return [f"{path}: {type(value).__module__}.{type(value).__name__}"]
        return [
            p for f in dataclasses.fields(value) for p in _live_objects(getattr(value, f.name), f"{path}.{f.name}", depth + 1)
        ]
    return [f"{path}: {type(value).__module__}.{type(value).__name__}"]


def _round_trip(value: Any) -> Any:
    assert _live_objects(value) == []
    return pickle.loads(pickle.dumps(value))


@pytest.fixture(scope="module")
def demo_backend(tmp_path_factory):
    from webui.models.demo import write_demo_models

    root = tmp_path_factory.mktemp("boundary")
    write_demo_models(root / "models", ("sd15",), loras=True)
    services = tmp_services(root)
    return services


def test_what_the_backend_answers_is_plain_data(demo_backend):
    backend = demo_backend.backend
    answers = {
        "families": backend.families(),
        "models": [backend.models(kind, usable=False) for kind in ("checkpoint", "lora", "vae", "text_encoder")],
        "find_model": backend.find_model(backend.models()[0].name),
        "next_checkpoint": backend.next_checkpoint(),
        "loaded": backend.loaded(),
        "family_choices": [backend.family_choices(None), backend.family_choices("sdxl")],
        "schedules_for": backend.schedules_for("sd15", "Euler a"),
        "samplers": backend.samplers(None),
        "schedules": backend.schedules(),
        "loras": backend.loras("sd15"),
        "count_tokens": backend.count_tokens("a cat <lora:x:1>"),
        "download_choices": backend.download_choices(),
        "settings": backend.settings(),
        "folders": backend.folders(),
        "device": backend.device_description(),
        "options": backend.options(),
        "setting_values": backend.setting_values(),
        "extension_settings": backend.extension_settings(),
        "extensions": backend.extensions(),
        "limits": backend.limits(),
        "queue": backend.queue(),
    }
    for name, value in answers.items():
        assert _round_trip(value) == value, name
    assert backend.models()[0].family == "sd15" and backend.models()[0].family_label == "SD 1.5"
    assert answers["family_choices"][0].family is None and answers["family_choices"][1].family.id == "sdxl"


def test_the_backend_errors_cross_a_process_boundary_with_their_fields(demo_backend):
    backend = demo_backend.backend
    with pytest.raises(NotFound) as missing:
        backend.find_model("nope.safetensors")
    copy = _round_trip(missing.value)
    assert isinstance(copy, KeyError) and str(copy) == str(missing.value) and "available" in str(copy)
    assert copy.valid == [m.name for m in backend.models()] and copy.kind == "checkpoint"
    with pytest.raises(NotFound) as lora:
        backend.validate(GenerationRequest(prompt="a <lora:nope:1>"))
    assert (lora.value.field, lora.value.kind) == ("prompt", "lora") and _round_trip(lora.value).field == "prompt"
    with pytest.raises(RequestError) as bad:
        backend.validate(GenerationRequest(width=100), names=False)
    assert bad.value.field == "width"
    failed = _round_trip(TaskFailed("no checkpoint named 'x'", "KeyError"))
    assert (str(failed), failed.kind) == ("no checkpoint named 'x'", "KeyError")


def _fake_run(release: threading.Event):
    def run(request, ctx):
        ctx.plan(2, 1)
        ctx.begin_pass(2, "txt2img")
        ctx.on_step(1, latents="x", preview=lambda _: Image.new("RGB", (8, 8), "red"))
        release.wait(10)
        ctx.on_step(2, latents="x", preview=lambda _: Image.new("RGB", (8, 8), "blue"))
        return JobResult(images=[Image.new("RGB", (8, 8), "green")], infotexts=["x\nSteps: 2"], seeds=[1])

    return run


def test_a_job_is_followed_by_id_through_snapshots(tmp_path):
    release = threading.Event()
    service = GenerationService(_fake_run(release), preview_every=1)
    backend = LocalBackend(SimpleNamespace(generation=service))
    service.start()
    try:
        job = backend.submit(GenerationRequest(prompt="x"), source="ui")
        assert isinstance(job, JobSnapshot) and job.state in ("queued", "running") and not job.finished
        running = backend.wait(job.id, 0.05, preview_after=0)
        while running.progress.preview is None:
            running = backend.wait(job.id, 0.05, preview_after=0)
        assert running.state == "running" and running.progress.preview_id == 1 and running.result is None
        assert backend.job(job.id, preview_after=1).progress.preview is None  # not newer than ours
        assert backend.job(job.id).progress.preview is None  # not asked for
        current = _round_trip(backend.queue(preview=True))
        assert current.current.id == job.id and current.current.progress.preview.size == (8, 8)
        release.set()
        done = _round_trip(backend.wait(job.id, 10))
    finally:
        service.stop()
    assert done.finished and done.state == "done" and done.result.seeds == [1]
    assert done.result.images[0].getpixel((0, 0)) == (0, 128, 0)
    with pytest.raises(NotFound):
        backend.job("nope")
    assert backend.interrupt(job.id).done is False  # finished: nothing to stop


def test_a_full_queue_is_a_plain_error():
    service = GenerationService(lambda request, ctx: JobResult(), max_queue=0)
    with pytest.raises(QueueFull) as full:
        LocalBackend(SimpleNamespace(generation=service)).submit(GenerationRequest())
    assert "try again" in str(_round_trip(full.value))


# --- the extension facade -----------------------------------------------------------------------------


def test_the_facade_exposes_the_backend_and_read_only_views_only(demo_backend):
    from webui.app import Services, build_facade
    from webui.extension_facade import ExtensionFacade
    from webui.extensions import ExtensionHost
    from webui.generation.engine import Engine
    from webui.models.catalog import ModelCatalog
    from webui.models.manager import ModelManager

    facade = build_facade(demo_backend)
    public = {name for name in dir(facade) if not name.startswith("_")}
    assert public == {"backend", "settings", "options", "add_route"}
    assert not hasattr(facade, "__dict__")  # slots: nothing else can be hung on it
    live = (Services, ModelManager, Engine, GenerationService, ModelCatalog, ExtensionHost)
    for value in (facade.backend, facade.settings, facade.options):
        assert not isinstance(value, live)
    for name in dir(facade.backend):  # the backend's public side: its protocol methods, nothing live
        if not name.startswith("_"):
            assert callable(getattr(facade.backend, name)) and not isinstance(getattr(facade.backend, name), live)
    assert isinstance(facade.backend, Backend) and facade.settings is demo_backend.settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        facade.settings.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        facade.options["x"] = 1  # type: ignore[index]
    with pytest.raises(RuntimeError, match="webui_app_started"):
        ExtensionFacade(facade.backend, dict).add_route("/x", lambda: {})


def test_ui_and_start_up_hooks_receive_the_facade_and_add_routes_through_it(tmp_path):
    import gradio as gr
    from fastapi.testclient import TestClient

    from webui.app import build_page, build_server
    from webui.models.demo import write_demo_models

    write_demo_models(tmp_path / "models", ("sd15",))
    shutil.copytree(FIXTURES / "facade", tmp_path / "ext" / "facade")
    services = tmp_services(tmp_path)
    assert services.extensions.get("facade").status == "ok", services.extensions.get("facade").error
    app = build_server(services)
    client = TestClient(app, base_url="http://127.0.0.1")
    seen = client.get("/facade/seen").json()
    assert seen == {
        "type": "ExtensionFacade",
        "same_as_services": True,  # the old argument name gets the same facade
        "public": ["add_route", "backend", "options", "settings"],
    }
    assert client.get("/facade/checkpoints").json() == ["demo-sd15-noise.safetensors"]
    page = build_page(services)
    texts = [str(b.value) for b in page.blocks.values() if isinstance(b, gr.Markdown)]
    assert "facade tab got ExtensionFacade" in texts
