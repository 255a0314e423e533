"""Composition root: the one place where the app's objects are built and wired.

``python -m webui.app [flags]`` (what ``launch.py`` runs once the environment is ready).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from webui.config import Settings, SettingsError, check_exposure, exposure_warning, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from gradio import Blocks

    from webui.backend.local import LocalBackend
    from webui.extension_facade import ExtensionFacade
    from webui.extensions import ExtensionHost
    from webui.generation.engine import Engine
    from webui.generation.samplers import SamplerTable
    from webui.generation.service import GenerationService
    from webui.memory.modes import MemoryModeRegistry
    from webui.models.catalog import CatalogEntry, ModelCatalog
    from webui.models.devices import DeviceChoice
    from webui.models.families import FamilySpec
    from webui.models.hashes import HashCache
    from webui.models.manager import ModelManager
    from webui.outputs.writer import OutputWriter
    from webui.registry import Registry
    from webui.speed.optimize import SpeedTuner

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("webui")


@dataclass
class AppPaths:
    models: Path
    outputs: Path
    extensions: Path
    cache: Path
    config_file: Path

    @classmethod
    def from_settings(cls, settings: Settings, base: Path = ROOT) -> "AppPaths":
        return cls(
            models=settings.path("models_dir", base),
            outputs=settings.path("outputs_dir", base),
            extensions=settings.path("extensions_dir", base),
            cache=settings.path("cache_dir", base),
            config_file=settings.path("config_file", base),
        )

    def t5_tokenizer_dir(self, settings: Settings) -> Path:
        p = Path(settings.t5_tokenizer_dir).expanduser()
        return p if p.is_absolute() else self.models / p


@dataclass
class Services:
    """The app's parts, built once by ``build_services``; only the backend (``backend``) reads them.

    The UI and the API get ``backend`` (``webui.backend.Backend``) and nothing else; extensions get
    an ``ExtensionFacade`` over it.
    """

    settings: Settings
    paths: AppPaths
    families: Registry[FamilySpec]
    catalog: ModelCatalog
    hashes: HashCache
    manager: ModelManager
    device: DeviceChoice
    samplers: SamplerTable | None = None
    writer: OutputWriter | None = None
    engine: Engine | None = None
    generation: GenerationService | None = None  # the worker starts in main (generation.start)
    extensions: ExtensionHost | None = None
    backend: LocalBackend | None = None


def prepare_environment(settings: Settings) -> None:
    """Process-wide switches that must be set before diffusers/gradio are imported."""
    if settings.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Uploads go to the app's own cache folder, not the shared /tmp/gradio.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.path("cache_dir", ROOT) / "gradio"))


def _empty_fp32_modules_warning(record: logging.LogRecord) -> bool:
    """False for diffusers 0.42's warning that an empty list of modules "should be kept in float32",
    which it logs on every ``to(dtype=...)`` of a model although nothing is kept (a load in bf16/fp16)."""
    return "should be kept in float32: []" not in record.getMessage()


def quiet_libraries() -> None:
    """Loading progress bars of diffusers/transformers clutter the log; the UI shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    if _empty_fp32_modules_warning not in modeling.filters:
        modeling.addFilter(_empty_fp32_modules_warning)


def build_services(settings: Settings, base: Path = ROOT) -> Services:
    from webui.models.catalog import ModelCatalog
    from webui.models.devices import resolve_device
    from webui.models.families import default_families
    from webui.models.hashes import HashCache
    from webui.models.manager import ModelManager

    paths = AppPaths.from_settings(settings, base)
    for folder in (paths.models, paths.outputs, paths.extensions, paths.cache):
        folder.mkdir(parents=True, exist_ok=True)
    hashes = HashCache(paths.cache / "hashes.json")
    catalog = ModelCatalog(paths.models, hash_of=lambda p: hashes.get(p, compute=False))
    catalog.ensure_folders()
    catalog.refresh()
    device = resolve_device(
        settings.device,
        settings.precision,
        vae_precision=settings.vae_precision,
        probe_cache=paths.cache / "precision_probe.json",  # the CPU bf16 measurement, once per machine
    )
    families = default_families()

    extensions = build_extensions(settings, paths, catalog)
    memory_registry = build_memory_registry(extensions)

    def on_loaded(report) -> None:
        # A1111 shows "name [short hash]"; hashing a 6 GB file takes a while, so never on the load path.
        entry = catalog.find(report.name)
        if entry.format != "diffusers":
            threading.Thread(target=hashes.get, args=(entry.path,), name="hash", daemon=True).start()
        _announce_model(extensions, manager, entry)

    manager = ModelManager(
        catalog,
        device=device,
        cache_dir=paths.cache,
        families=families,
        ram_cache_models=settings.ram_cache_models,
        ram_cache_gib=settings.ram_cache_gib,
        t5_tokenizer_dir=paths.t5_tokenizer_dir(settings),
        on_loaded=on_loaded,
        memory_registry=memory_registry,
        memory_modes=settings.memory_modes,
        speed=build_speed_tuner(settings, device, paths.cache),
    )
    services = Services(settings, paths, families, catalog, hashes, manager, device, extensions=extensions)
    build_generation(services)
    build_backend(services)
    return services


def build_backend(services: Services) -> LocalBackend:
    """The in-process backend over the services: what the UI, the API and extensions talk to."""
    from webui.backend.local import LocalBackend
    from webui.backend.local_settings import sync_writer

    sync_writer(services)  # a file name pattern saved on the Settings page, after a restart
    services.backend = LocalBackend(services)
    return services.backend


def build_facade(services: Services, api: FastAPI | None = None) -> ExtensionFacade:
    """What ``webui_ui_tabs`` and ``webui_app_started`` receive: the backend, read-only settings, add_route."""
    from webui.extension_facade import ExtensionFacade

    assert services.backend is not None and services.extensions is not None
    host = services.extensions
    return ExtensionFacade(services.backend, lambda: host.options, api)


def build_page(services: Services, facade: ExtensionFacade | None = None) -> Blocks:
    """The Gradio page over the backend, with the extensions' tabs (built inside the host's guard)."""
    from webui.ui.shell import build_ui

    assert services.backend is not None
    host = services.extensions
    facade = facade or build_facade(services)
    tabs = host.ui_tabs(facade) if host is not None else []
    return build_ui(services.backend, tabs, host.run_guarded if host is not None else None)


def build_speed_tuner(settings: Settings, device: DeviceChoice, cache_dir: Path | None = None) -> SpeedTuner:
    """What the manager applies to every model it loads: VAE precision, layout, attention, CPU engine, compile.
    ``cache_dir``: where OpenVINO's converted models are kept (without one the UNet stays in torch)."""
    from webui.speed.optimize import SpeedTuner, options_from_settings

    return SpeedTuner(device, options_from_settings(settings), cache_dir=cache_dir)


def build_extensions(settings: Settings, paths: AppPaths, catalog: Any = None) -> ExtensionHost:
    """The extension host with our built-ins registered first, then extensions/<name>/ and entry points."""
    from webui.control.extension import ControlExtension
    from webui.extensions import ExtensionHost, install_allowed
    from webui.generation.samplers import BuiltinSamplers
    from webui.memory.modes import BuiltinMemoryModes

    host = ExtensionHost(
        paths.extensions,
        paths.config_file.with_name("extensions.json"),
        allow_install=install_allowed(settings.host, getattr(settings, "enable_insecure_extension_access", False)),
    )
    host.register_builtin("samplers", BuiltinSamplers())
    host.register_builtin("memory-modes", BuiltinMemoryModes())
    host.register_builtin("controlnet", ControlExtension(paths.models, catalog))
    for ext in host.discover():
        if ext.status == "failed":
            log.warning("extension %s failed: %s", ext.name, ext.error)
    return host


def build_memory_registry(extensions: ExtensionHost) -> MemoryModeRegistry:
    """Memory modes, registered through ``webui_register_memory_modes`` (ours as a built-in plugin)."""
    from webui.memory.modes import MemoryModeRegistry

    registry = MemoryModeRegistry()
    extensions.register_memory_modes(registry)
    return registry


def _announce_model(extensions: ExtensionHost, manager: ModelManager, entry: CatalogEntry) -> None:
    from webui.hooks import ModelLoadedEvent

    loaded = manager.loaded
    extensions.model_loaded(ModelLoadedEvent(entry.name, loaded.family.id, loaded.pipeline, str(entry.path)))


def build_generation(services: Services) -> None:
    """The sampler table, output writer, engine and job queue (the worker starts in ``start_generation``)."""
    from webui.generation.console import ConsoleProgress
    from webui.generation.engine import Engine
    from webui.generation.requests import Limits
    from webui.generation.samplers import SamplerTable
    from webui.generation.service import GenerationService
    from webui.outputs.writer import OutputWriter
    from webui.speed.prompt_cache import PromptCache

    settings = services.settings
    assert services.extensions is not None
    # Built-in samplers arrive through the same hook as an extension's (webui_register_samplers).
    services.samplers = SamplerTable(samplers=[])
    services.extensions.register_samplers(services.samplers)
    services.writer = OutputWriter(services.paths.outputs, filename_pattern=settings.filename_pattern)
    services.writer.clean_temp_files()  # hidden temp files a killed process left behind
    size = settings.max_image_size
    limits = Limits(max_side=size, max_hires_side=2 * size, max_steps=settings.max_steps)
    services.engine = Engine(
        services.manager,
        services.samplers,
        services.writer,
        hashes=services.hashes,
        limits=limits,
        default_model=settings.default_model,
        hooks=services.extensions,
        oom_retry=settings.memory_oom_retry,
        prompt_cache=PromptCache(settings.prompt_cache_size),
    )
    services.generation = GenerationService(
        services.engine.run,
        preview_every=settings.preview_every,
        job_timeout=settings.job_timeout,
        console=ConsoleProgress(),  # a bar per job on the terminal (stderr), a line when it ends
    )


def build_server(services: Services) -> Any:
    """The FastAPI app: the Gradio UI at ``/`` (API routes are added here too)."""
    from fastapi import FastAPI

    from webui.api.sdapi import build_sdapi_router

    assert services.backend is not None and services.extensions is not None
    api = FastAPI(title="Stable Diffusion web UI", docs_url="/docs")
    api.include_router(build_sdapi_router(services.backend))
    facade = build_facade(services, api)
    services.extensions.app_started(api, facade)  # before the UI is mounted at "/", which would shadow routes
    blocks = build_page(services, facade)
    from webui.security.mount import mount_ui

    return mount_ui(api, blocks, services, ROOT)


def serve(app: Any, host: str, port: int, started: float) -> int:
    import uvicorn

    from webui.security.connections import server_config

    server = uvicorn.Server(server_config(app, host, port))  # slow clients are dropped, connections bounded
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        print(f"Could not start the server on {host}:{port} (is the port in use? try --port)", file=sys.stderr)
        return 1
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"Running on http://{shown}:{port}  (started in {time.time() - started:.1f} s)", flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    started = float(os.environ.get("WEBUI_LAUNCHED_AT") or time.time())
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        problems: list[str] = []  # bad values in config.json: left out, their defaults apply
        settings, _args = load_settings(argv, base_dir=ROOT, problems=problems)
        for problem in problems:
            log.warning("settings: %s", problem)
        problem = check_exposure(settings)  # --listen needs credentials (or an explicit --insecure)
        if problem:
            raise SettingsError(problem)
        prepare_environment(settings)
        services = build_services(settings)
        quiet_libraries()
        app = build_server(services)  # a bad --auth-file is a SettingsError too
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warning = exposure_warning(settings)
    if warning:
        log.warning("%s", warning)
    device = services.device
    log.info("device: %s", device.describe())
    found = services.catalog.entries("checkpoint")
    log.info("models: %d checkpoint(s) in %s; none is loaded until needed", len(found), services.paths.models)
    for entry in found:
        if entry.error:
            log.warning("cannot use %s", entry.error)
    generation = services.generation
    assert generation is not None
    generation.start()
    try:
        return serve(app, settings.host, settings.port, started)
    finally:
        generation.stop()


if __name__ == "__main__":
    raise SystemExit(main())
