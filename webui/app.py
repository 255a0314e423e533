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
from webui.deferred import Deferred

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
    from webui.models.deferred_device import DeferredDevice
    from webui.models.devices import DeviceChoice
    from webui.models.embeddings import EmbeddingLibrary
    from webui.models.families import FamilySpec
    from webui.models.hashes import HashCache
    from webui.models.manager import ModelManager
    from webui.outputs.writer import OutputWriter
    from webui.registry import Registry
    from webui.speed.optimize import SpeedTuner
    from webui.upscale.run import Upscalers

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

    def styles_file(self, settings: Settings) -> Path:
        """A1111's ``styles.csv``: ``styles_file`` (``--styles-file``), relative ones beside the config file."""
        p = Path(getattr(settings, "styles_file", "") or "styles.csv").expanduser()
        return p if p.is_absolute() else self.config_file.parent / p

    def t5_tokenizer_dir(self, settings: Settings) -> Path:
        p = Path(settings.t5_tokenizer_dir).expanduser()
        return p if p.is_absolute() else self.models / p

    def wildcards_dir(self, settings: Settings) -> Path:
        p = Path(settings.wildcards_dir).expanduser()
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
    device: DeviceChoice | DeferredDevice  # build_services: deferred, chosen by ``warm_up`` (torch is imported there)
    samplers: SamplerTable | None = None
    writer: OutputWriter | None = None
    engine: Engine | None = None
    generation: GenerationService | None = None  # the worker starts in main (generation.start)
    extensions: ExtensionHost | None = None
    backend: LocalBackend | None = None
    upscalers: Upscalers | None = None  # webui.upscale: Extras and hires-fix upscaler models
    # Imports torch and diffusers and chooses the device on a thread; serve starts it after the first answer.
    warm_up: Deferred[DeviceChoice] | None = None
    embeddings: EmbeddingLibrary | None = None  # textual-inversion embeddings (models/embeddings)


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


def warm_up_work(settings: Settings, paths: AppPaths) -> DeviceChoice:
    """The start-up work the first page does not wait for: import torch, choose the device, import diffusers.

    Runs on the ``warm_up`` thread after the first answer (or on the first read of ``services.device``).
    Besides torch (the device needs it) it imports diffusers' pipeline machinery, which every model load
    needs (about 2 CPU seconds), so that the first load after an idle start does not wait for it.
    """
    from webui.models.devices import resolve_device

    device = resolve_device(
        settings.device,
        settings.precision,
        vae_precision=settings.vae_precision,
        probe_cache=paths.cache / "precision_probe.json",  # the CPU bf16 measurement, once per machine
    )
    log.info("device: %s", device.describe())
    quiet_libraries()
    from diffusers import DiffusionPipeline  # noqa: F401  (imported here, not on the first load)

    return device


def build_services(settings: Settings, base: Path = ROOT, memory: Any = None, device_memory: Any = None) -> Services:
    """Every part of the app, without importing torch or diffusers (``warm_up`` does, when started).
    ``memory`` / ``device_memory``: how the RAM and the GPU are read (None: psutil and torch.cuda; tests pass
    fakes, see webui.models.ram_budget.MemoryProbe and device_budget.DeviceMemoryProbe)."""
    from webui.models.catalog import ModelCatalog
    from webui.models.deferred_device import DeferredDevice
    from webui.models.families import default_families
    from webui.models.hashes import HashCache
    from webui.models.manager import ModelManager
    from webui.models.record_store import RecordStore

    paths = AppPaths.from_settings(settings, base)
    for folder in (paths.models, paths.outputs, paths.extensions, paths.cache):
        folder.mkdir(parents=True, exist_ok=True)
    hashes = HashCache(paths.cache / "hashes.json")
    records = RecordStore(paths.cache / "model_records.json")  # files identified at an earlier start
    catalog = ModelCatalog(paths.models, hash_of=lambda p: hashes.get(p, compute=False), records=records)
    catalog.ensure_folders()
    catalog.refresh()
    warm_up = Deferred(lambda: warm_up_work(settings, paths), name="warm-up")
    device = DeferredDevice(warm_up)
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
        converted_cache_gib=settings.converted_cache_gib,
        memory=memory,
        device_memory=device_memory,
        t5_tokenizer_dir=paths.t5_tokenizer_dir(settings),
        on_loaded=on_loaded,
        memory_registry=memory_registry,
        memory_modes=settings.memory_modes,
        speed=build_speed_tuner(settings, device, paths.cache),
    )
    services = Services(
        settings, paths, families, catalog, hashes, manager, device, extensions=extensions, warm_up=warm_up
    )
    services.embeddings = build_embeddings(paths.models)
    services.upscalers = build_upscalers(settings, paths, device)
    build_generation(services)
    build_backend(services)
    return services


def build_embeddings(models_dir: Path) -> EmbeddingLibrary:
    """The embeddings folder (created when neither ours nor A1111's exists); files are read when first used."""
    from webui.models.embeddings import EmbeddingLibrary

    library = EmbeddingLibrary(models_dir)
    library.ensure_folder()
    return library


def build_upscalers(settings: Settings, paths: AppPaths, device: Any) -> Upscalers:
    """The upscalers of models/ESRGAN, models/upscale_models ... (nothing is read until one is used)."""
    from webui.upscale.run import TileOptions, Upscalers

    tiles = TileOptions(settings.upscaler_tile, settings.upscaler_tile_overlap)
    upscalers = Upscalers(paths.models, device=lambda: device.device, tiles=tiles)
    upscalers.ensure_folder()
    return upscalers


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
    ``cache_dir``: where layout measurements and OpenVINO's converted models are kept between loads and starts
    (None: layouts measured each time, the UNet stays in torch)."""
    from webui.speed.layout import time_resnet
    from webui.speed.measure_cache import MeasureCache, machine_key
    from webui.speed.optimize import SpeedTuner, options_from_settings

    stored = cache_dir / "layout_measurements.json" if cache_dir is not None else None
    measures = MeasureCache(stored, lambda: machine_key(device.hardware))  # asked at the first measurement
    return SpeedTuner(
        device, options_from_settings(settings), measure_layout=measures.wrap(time_resnet), cache_dir=cache_dir
    )


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
    from webui.generation.wildcards import Wildcards
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
        embeddings=services.embeddings,
        wildcards=Wildcards(services.paths.wildcards_dir(settings)),
        upscalers=services.upscalers,
    )
    from webui.xyz.run import with_grids

    services.generation = GenerationService(
        with_grids(services.engine.run, services.writer),  # an X/Y/Z grid runs its cells as one job
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
    from webui.api.queue_api import build_queue_router

    api.include_router(build_queue_router(services.backend))  # our /webui/v1/queue (A1111 has no queue)

    from webui.api.outputs_api import build_outputs_router

    api.include_router(build_outputs_router(services.backend))  # GET /webui/v1/outputs (outputs browser)
    facade = build_facade(services, api)
    services.extensions.app_started(api, facade)  # before the UI is mounted at "/", which would shadow routes
    blocks = build_page(services, facade)
    from webui.security.mount import mount_ui

    return mount_ui(api, blocks, services, ROOT)


def warm_up_failure(error: BaseException) -> int:
    """Say why the app cannot run after ``warm_up`` failed; the exit code (2: a device that is not there)."""
    from webui.models.devices import DeviceError

    if isinstance(error, DeviceError):
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    log.error("start-up failed while importing torch/diffusers", exc_info=error)
    return 1


# Without a request, the warm-up (torch, diffusers, the device) starts this long after the server listens.
WARM_UP_AFTER_S = 2.0


def serve(app: Any, host: str, port: int, started: float, warm_up: Deferred[Any] | None = None) -> int:
    """Serve until stopped. ``warm_up`` starts after the first answer (or ``WARM_UP_AFTER_S`` without one),
    so that its imports do not slow the first page; if it fails, the server stops with its exit code."""
    import uvicorn

    from webui.first_answer import FirstAnswer
    from webui.security.connections import server_config

    asgi = FirstAnswer(app, warm_up.start) if warm_up is not None else app
    server = uvicorn.Server(server_config(asgi, host, port))  # slow clients are dropped, connections bounded
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
        return _watch(server, thread, warm_up)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(5)
        return 0


def _watch(server: Any, thread: threading.Thread, warm_up: Deferred[Any] | None) -> int:
    """Wait for the server thread to end; start ``warm_up`` when due, stop the server if it fails."""
    listening = time.monotonic()
    while thread.is_alive():
        thread.join(0.5)
        if warm_up is None:
            continue
        if time.monotonic() - listening >= WARM_UP_AFTER_S:
            warm_up.start()
        error = warm_up.error()
        if error is not None:
            server.should_exit = True
            thread.join(5)
            return warm_up_failure(error)
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
        if settings.backend == "ray":
            from webui.serve.start import build_ray_backend

            build_ray_backend(services, ROOT)
        app = build_server(services)  # a bad --auth-file is a SettingsError too
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warning = exposure_warning(settings)
    if warning:
        log.warning("%s", warning)
    found = services.catalog.entries("checkpoint")
    log.info("models: %d checkpoint(s) in %s; none is loaded until needed", len(found), services.paths.models)
    for entry in found:
        if entry.error:
            log.warning("cannot use %s", entry.error)
    generation = services.generation
    assert generation is not None
    generation.start()
    try:
        return serve(app, settings.host, settings.port, started, services.warm_up)
    finally:
        generation.stop()
        close = getattr(services.backend, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":
    raise SystemExit(main())
