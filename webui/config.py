"""Settings: defaults <- config file <- environment <- command line.

Pure standard library: ``launch.py`` imports this before any dependency is
installed, so ``python launch.py --help`` works on a bare Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from webui.config_checks import (
    SettingsError,
    check_credentials,
    check_max_image_size,
    check_memory_modes,
    check_origins,
    check_path,
    check_port,
    check_regex,
    not_negative,
    one_of,
    text_problem,
)
from webui.config_serve import SERVE_CHECKS, SERVE_CLI_FIELDS, add_serve_arguments

ENV_PREFIX = "WEBUI_"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
VAE_PRECISIONS = ("auto", "fp32")
CHANNELS_LAST = ("auto", "on", "off")
CPU_ENGINES = ("auto", "torch", "openvino")  # webui.speed.engine_choice.ENGINE_CHOICES
SAMPLES_FORMATS = ("png", "jpg", "webp")
RNG_SOURCES = ("GPU", "CPU")


@dataclass(frozen=True)
class Settings:
    """Everything the app is configured with. Paths are resolved by ``resolve_paths``."""

    host: str = "127.0.0.1"
    port: int = 7860
    listen: bool = False
    models_dir: str = "models"
    outputs_dir: str = "outputs"
    extensions_dir: str = "extensions"
    cache_dir: str = "cache"
    config_file: str = "config.json"
    device: str = "auto"
    precision: str = "auto"
    # VAE decode precision: "auto" (the model's, fp32 for VAEs that overflow in fp16) or "fp32" (--no-half-vae).
    vae_precision: str = "auto"
    # Speed: channels_last memory layout ("auto": measured once per model family), opt-in torch.compile of
    # the UNet/transformer blocks, and how many encoded prompts are kept for reuse (0 = off).
    channels_last: str = "auto"
    compile: bool = False
    prompt_cache_size: int = 16
    # What runs the UNet on a CPU: "auto" (OpenVINO where a short measurement, kept in cache/, finds it faster
    # for the model's type on this CPU, else torch), "torch", or "openvino" (converted once per checkpoint).
    cpu_engine: str = "auto"
    # How many recently used checkpoints stay loaded in RAM besides the active one.
    ram_cache_models: int = 0
    # The RAM those cached checkpoints may take, in GiB (both bounds hold). -1 = derived from the machine's
    # RAM: half of it minus 4 GiB (24 GiB -> 8 GiB; 8 GiB or less -> 0); 0 = keep nothing.
    ram_cache_gib: float = -1.0
    # The disk that converted copies of checkpoints may take (cache/converted/: the weights a load casts to
    # the compute precision, mapped by later loads instead of cast again), in GiB. -1 = half the disk's free
    # space; 0 = none (every load casts).
    converted_cache_gib: float = -1.0
    # Checkpoint to load on the first generation ("" = the first one found).
    default_model: str = ""
    # Where the T5 tokenizer for SD3 is looked for (spiece.model or tokenizer.json),
    # relative to models_dir unless absolute.
    t5_tokenizer_dir: str = "text_encoder/t5_tokenizer"
    # Wildcard files (``__name__`` in a prompt: a random line of name.txt), relative to models_dir unless absolute.
    wildcards_dir: str = "wildcards"
    # Generation: live preview every N steps (0 = off); the largest width/height a request may ask for.
    preview_every: int = 5
    max_image_size: int = 2048
    # The most sampling steps a request may ask for. A1111's API has no cap (its UI slider stops at 150);
    # this one only refuses absurd values such as 10**6, which would hold the worker for hours.
    max_steps: int = 1000
    # Saving: A1111's file name pattern ("[seed]", "[seed]-[prompt_words]", ...) and image format.
    filename_pattern: str = "[seed]"
    samples_format: str = "png"
    # Where the UI draws the initial noise by default: "GPU" (the device) or "CPU" (same image on any device).
    default_rng: str = "GPU"
    # Memory-saving modes: "auto" (chosen from free VRAM and the model's size), "none", or a comma
    # list of mode names (drop_t5, model_cpu_offload, sequential_cpu_offload, group_offload,
    # vae_tiling, vae_slicing, attention_slicing, xformers, fp8_weights).
    memory_modes: str = "auto"
    # After an out-of-memory error, retry the batch once with the next stronger memory mode.
    memory_oom_retry: bool = True
    # Allow "Install requirements" in the Extensions tab even when listening beyond localhost.
    enable_insecure_extension_access: bool = False
    # Credentials ("user:password", or a comma list of them) for the UI login; the API asks for the same
    # unless api_auth is set. auth_file holds one "user:password" per line. Never shown in repr or logs.
    auth: str = field(default="", repr=False)
    auth_file: str = ""
    api_auth: str = field(default="", repr=False)
    # Serve beyond localhost without credentials (trusted networks only); otherwise such a start is refused.
    insecure: bool = False
    # Host names (comma list) the app answers to besides localhost/127.0.0.1/[::1] and, with --listen, this
    # machine's own addresses and names; any other Host header is refused (DNS rebinding).
    allowed_hosts: str = ""
    # Web origins (comma list, e.g. "http://localhost:3000") or a regular expression of them that may call the
    # app from another site's page (CORS, A1111's --cors-allow-origins); none by default.
    cors_allow_origins: str = ""
    cors_allow_origins_regex: str = ""
    # The longest one job may hold the worker, in seconds (0 = no limit); a job past it stops like an interrupt.
    job_timeout: int = 3600
    # Upscaler models run on tiles of this many pixels a side that overlap by this many (0 tile: the whole image).
    upscaler_tile: int = 192
    upscaler_tile_overlap: int = 16
    # A1111's prompt styles file (name, prompt, negative_prompt); relative paths are in the config file's folder.
    styles_file: str = "styles.csv"
    # Where jobs run (webui.config_serve): "local" (this process) or "ray" (Ray Serve replicas), how many
    # replicas (0: one per GPU, else one), torch threads each (0: the cores shared out), a Ray cluster to
    # join ("": start one here), whether a job whose replica died runs once more elsewhere, and how many
    # checkpoints one replica is the home of.
    backend: str = "local"
    replicas: int = 0
    replica_threads: int = 0
    ray_address: str = ""
    ray_retry_failed: bool = False
    models_per_replica: int = 1
    # Never touch the network for models (downloads of the default checkpoint excepted).
    offline: bool = True
    skip_install: bool = False

    @classmethod
    def under(cls, root: Path, **changes: Any) -> Settings:
        """Settings with every folder and file of the app under ``root`` (models, outputs, ext, cache and
        config.json), then ``changes``: what scripts and tests run a whole app in a folder of their own with."""
        folders = {
            "models_dir": str(root / "models"),
            "outputs_dir": str(root / "outputs"),
            "extensions_dir": str(root / "ext"),
            "cache_dir": str(root / "cache"),
            "config_file": str(root / "config.json"),
        }
        return cls(**{**folders, **changes})

    def with_updates(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **_coerce_all(changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def path(self, name: str, base: Path | None = None) -> Path:
        """The absolute path of a ``*_dir``/``*_file`` setting."""
        value = Path(getattr(self, name)).expanduser()
        if value.is_absolute():
            return value
        return (base or Path.cwd()) / value


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}
# Settings that only make sense on the command line (never persisted).
_CLI_ONLY = {"skip_install", "config_file"}


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELD_TYPES:
        valid = ", ".join(sorted(_FIELD_TYPES))
        raise SettingsError(f"unknown setting {name!r}; valid settings: {valid}")
    kind = _FIELD_TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name!r} must be a {kind}, got {value!r}") from None


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _coerce(k, v) for k, v in values.items()}


# setting -> check(value) returning "" when fine, else a message that says what to change.
FIELD_CHECKS: dict[str, Any] = {
    "device": one_of("--device", DEVICES),
    "precision": one_of("--precision", PRECISIONS),
    "vae_precision": one_of("--vae-precision", VAE_PRECISIONS),
    "channels_last": one_of("--channels-last", CHANNELS_LAST),
    "cpu_engine": one_of("--cpu-engine", CPU_ENGINES),
    "prompt_cache_size": not_negative("prompt_cache_size", "0 (off) or more"),
    "port": check_port,
    "ram_cache_models": not_negative("ram_cache_models", "0 or more"),
    "converted_cache_gib": lambda value: ""
    if (value == -1 or value >= 0) and value < 1e7
    else f"converted_cache_gib must be -1 (auto: half the disk's free space), 0 (none) or more GiB, got {value}",
    "ram_cache_gib": lambda value: ""
    if (value == -1 or value >= 0) and value < 1e6
    else f"ram_cache_gib must be -1 (auto: half the RAM minus 4 GiB), 0 (keep nothing) or more GiB, got {value}",
    "preview_every": not_negative("preview_every", "0 (off) or more"),
    "max_image_size": check_max_image_size,
    "max_steps": lambda value: "" if value >= 1 else f"max_steps must be 1 or more, got {value}",
    "samples_format": one_of("samples_format", SAMPLES_FORMATS),
    "default_rng": one_of("default_rng", RNG_SOURCES),
    "memory_modes": check_memory_modes,
    "models_dir": check_path("models_dir"),
    "outputs_dir": check_path("outputs_dir"),
    "extensions_dir": check_path("extensions_dir"),
    "cache_dir": check_path("cache_dir"),
    "config_file": check_path("config_file"),
    "auth_file": check_path("auth_file", optional=True),
    "t5_tokenizer_dir": check_path("t5_tokenizer_dir"),
    "wildcards_dir": check_path("wildcards_dir"),
    "cors_allow_origins": check_origins,
    "cors_allow_origins_regex": check_regex,
    "job_timeout": not_negative("job_timeout", "0 (no limit) or more seconds"),
    "upscaler_tile": not_negative("upscaler_tile", "0 (no tiles) or more pixels"),
    "upscaler_tile_overlap": not_negative("upscaler_tile_overlap", "0 or more pixels"),
    "styles_file": check_path("styles_file"),
    "auth": check_credentials("--auth"),
    "api_auth": check_credentials("--api-auth"),
    **SERVE_CHECKS,
}


def check_field(name: str, value: Any) -> Any:
    """The value coerced to the setting's type; SettingsError with a user-facing message if unusable."""
    value = _coerce(name, value)
    check = FIELD_CHECKS.get(name)
    message = text_problem(name, value) if isinstance(value, str) else ""
    message = message or (check(value) if check else "")
    if message:
        raise SettingsError(message)
    return value


def _validate(settings: Settings) -> Settings:
    for name in _FIELD_TYPES:
        check_field(name, getattr(settings, name))
    return settings


def build_arg_parser() -> argparse.ArgumentParser:
    """The command line of ``launch.py`` and ``python -m webui.app``."""
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Stable Diffusion web UI (SD1.5, SDXL, SD3). Sets up its environment, then serves the UI.",
    )
    p.add_argument("--port", type=int, help="port to serve on (default 7860)")
    p.add_argument(
        "--listen",
        action="store_const",
        const=True,
        help="listen on all interfaces (0.0.0.0) instead of 127.0.0.1 only",
    )
    p.add_argument("--models-dir", help="models folder; may be an existing A1111 or ComfyUI models folder")
    p.add_argument("--outputs-dir", help="where generated images are written (default outputs/)")
    p.add_argument("--extensions-dir", help="extensions folder (default extensions/)")
    p.add_argument(
        "--wildcards-dir", help="wildcard files for __name__ in prompts (default models/wildcards; relative to models)"
    )
    p.add_argument("--config-file", help="settings file (default config.json)")
    p.add_argument("--device", choices=DEVICES, help="compute device (default auto)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="compute precision (default auto: bf16 on CPUs and GPUs that are faster with it, fp16 on other GPUs,"
        " fp32 elsewhere; the choice and why is logged and shown on the Settings page)",
    )
    p.add_argument(
        "--vae-precision",
        choices=VAE_PRECISIONS,
        help="VAE decode precision (default auto: fp32 for VAEs that overflow in fp16; every decode is checked for NaN)",
    )
    p.add_argument(
        "--no-half-vae",
        dest="vae_precision",
        action="store_const",
        const="fp32",
        help="same as --vae-precision fp32 (A1111's flag)",
    )
    p.add_argument(
        "--channels-last",
        choices=CHANNELS_LAST,
        help="channels_last memory layout for the UNet and VAE (default auto: measured once per model family)",
    )
    p.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="torch.compile the UNet/transformer blocks (compiled on first use per image size; falls back if it fails)",
    )
    p.add_argument(
        "--cpu-engine",
        choices=CPU_ENGINES,
        help="what runs the UNet on a CPU (default auto: OpenVINO where a short measurement finds it faster for the"
        " model on this CPU, else torch; converted once per checkpoint and kept in cache/openvino)",
    )
    p.add_argument("--prompt-cache-size", type=int, help="encoded prompts kept for reuse, 0 = off (default 16)")
    p.add_argument("--ram-cache-models", type=int, help="checkpoints kept in RAM for fast switching (default 0)")
    p.add_argument(
        "--ram-cache-gib",
        type=float,
        help="RAM those checkpoints may take, in GiB (default -1: half the machine's RAM minus 4 GiB; 0 = none)",
    )
    p.add_argument(
        "--converted-cache-gib",
        type=float,
        help="disk the converted copies of checkpoints (cache/converted/) may take, in GiB"
        " (default -1: half the free space; 0 = none, every load casts its weights)",
    )
    p.add_argument("--default-model", help="checkpoint loaded for the first generation")
    p.add_argument(
        "--memory-modes",
        help="memory-saving modes: auto (default), none, or a comma list such as model_cpu_offload,vae_tiling",
    )
    p.add_argument("--preview-every", type=int, help="live preview every N steps, 0 = off (default 5)")
    p.add_argument("--max-image-size", type=int, help="largest width/height a request may ask for (default 2048)")
    p.add_argument(
        "--enable-insecure-extension-access",
        action="store_const",
        const=True,
        help="allow installing extension requirements from the web UI even with --listen (trusted networks only)",
    )
    p.add_argument(
        "--auth",
        "--gradio-auth",
        help="user:password (or a comma list) for the UI login; the API asks for the same unless --api-auth is"
        " given. Prefer --auth-file or WEBUI_AUTH: other users of this machine can read a command line",
    )
    p.add_argument(
        "--auth-file",
        "--gradio-auth-path",
        help="file with one user:password per line (lines starting with # are ignored)",
    )
    p.add_argument("--api-auth", help="user:password (or a comma list) for the /sdapi API, HTTP basic auth")
    p.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="allow --listen without credentials: anyone who can reach the port can use the app (trusted networks)",
    )
    p.add_argument(
        "--allowed-hosts",
        help="host names (comma list) the app answers to besides localhost and, with --listen, this machine's"
        " addresses, e.g. the name of a reverse proxy (sd.example.lan); other Host headers are refused",
    )
    p.add_argument(
        "--cors-allow-origins",
        help="web origins (comma list) whose pages may call this app from the browser, e.g. http://localhost:3000"
        " (none by default; requests from other sites' pages are refused)",
    )
    p.add_argument("--cors-allow-origins-regex", help="the same as a regular expression of origins")
    p.add_argument(
        "--job-timeout",
        type=int,
        help="the longest one job may run, in seconds (default 3600; 0 = no limit); a longer job stops and keeps"
        " the images it finished",
    )
    p.add_argument(
        "--styles-file",
        help="A1111's prompt styles file (default styles.csv beside the config file; an A1111 one works as is)",
    )
    add_serve_arguments(p)
    p.add_argument("--share", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--skip-install",
        action="store_const",
        const=True,
        help="do not create a virtual environment or install anything; run with this Python as is",
    )
    p.add_argument("--venv-dir", default=None, help="virtual environment to create/use (default .venv)")
    p.add_argument(
        "--torch-index-url",
        default=None,
        help="pip index for the torch wheel (default: chosen from the GPU found)",
    )
    p.add_argument("--reinstall", action="store_true", help="reinstall dependencies even if nothing changed")
    p.add_argument("--no-browser", action="store_true", help="accepted for compatibility; the browser is never opened")
    return p


_CLI_TO_FIELD = {
    "port": "port",
    "listen": "listen",
    "models_dir": "models_dir",
    "outputs_dir": "outputs_dir",
    "extensions_dir": "extensions_dir",
    "wildcards_dir": "wildcards_dir",
    "config_file": "config_file",
    "device": "device",
    "precision": "precision",
    "vae_precision": "vae_precision",
    "channels_last": "channels_last",
    "compile": "compile",
    "cpu_engine": "cpu_engine",
    "prompt_cache_size": "prompt_cache_size",
    "ram_cache_models": "ram_cache_models",
    "ram_cache_gib": "ram_cache_gib",
    "converted_cache_gib": "converted_cache_gib",
    "default_model": "default_model",
    "memory_modes": "memory_modes",
    "preview_every": "preview_every",
    "max_image_size": "max_image_size",
    "skip_install": "skip_install",
    "enable_insecure_extension_access": "enable_insecure_extension_access",
    "auth": "auth",
    "auth_file": "auth_file",
    "api_auth": "api_auth",
    "insecure": "insecure",
    "allowed_hosts": "allowed_hosts",
    "cors_allow_origins": "cors_allow_origins",
    "cors_allow_origins_regex": "cors_allow_origins_regex",
    "job_timeout": "job_timeout",
    "styles_file": "styles_file",
    **{name: name for name in SERVE_CLI_FIELDS},
}


def read_config_file(path: Path) -> dict[str, Any]:
    """The persisted settings; a missing file is empty, a broken one is an error that names it."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc}; fix or delete it") from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a JSON object")
    return {k: v for k, v in data.items() if k in _FIELD_TYPES and k not in _CLI_ONLY}


def read_config_file_leniently(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The usable persisted settings and what was wrong with the rest; never raises.

    A file the app cannot read, or a value it cannot use (a NUL byte in a folder, a port of "abc"), must
    not keep the app from starting: the bad part is left out (its default applies) and named in the list.
    """
    try:
        stored = read_config_file(path)
    except SettingsError as exc:
        return {}, [f"{exc}; starting with the default settings"]
    values, problems = {}, []
    for name, value in stored.items():
        try:
            values[name] = check_field(name, value)
        except SettingsError as exc:
            problems.append(f"{path}: {exc}; using the default ({getattr(Settings(), name)!r}) instead")
    return values, problems


def write_config_file(path: Path, values: Mapping[str, Any]) -> None:
    """Persist settings atomically (temp file + rename)."""
    clean = {k: v for k, v in _coerce_all(values).items() if k not in _CLI_ONLY}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in _FIELD_TYPES:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = environ[key]
    return out


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    problems: list[str] | None = None,
) -> tuple[Settings, argparse.Namespace]:
    """Merge defaults, the config file, ``WEBUI_*`` variables and the command line.

    A bad command line or environment variable is a ``SettingsError`` (whoever typed it is there to fix
    it); a bad config file value is left out and described in ``problems`` (the app still starts).
    """
    environ = os.environ if environ is None else environ
    args, _unknown = build_arg_parser().parse_known_args(list(argv or []))
    if args.share:
        raise SettingsError(
            "--share is not offered: a public share link would expose this machine to anyone with the link;"
            " use --listen with --auth user:password on a network you control"
        )
    cli = {
        field_name: getattr(args, arg)
        for arg, field_name in _CLI_TO_FIELD.items()
        if getattr(args, arg, None) is not None
    }
    env = from_environment(environ)
    config_name = cli.get("config_file") or env.get("config_file") or Settings.config_file
    config_path = Path(config_name).expanduser()
    if not config_path.is_absolute():
        config_path = (base_dir or Path.cwd()) / config_path
    merged: dict[str, Any] = {}
    stored, found = read_config_file_leniently(config_path)
    if problems is not None:
        problems.extend(found)
    merged.update(stored)
    merged.update(env)
    merged.update(cli)
    merged["config_file"] = str(config_path)
    settings = _validate(Settings().with_updates(**merged))
    if settings.listen and "host" not in env:
        settings = settings.with_updates(host="0.0.0.0")
    return settings, args


# --- exposure ---------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def has_credentials(settings: Settings) -> bool:
    """Whether the UI has a login (``auth`` or ``auth_file``)."""
    return bool(settings.auth.strip() or settings.auth_file.strip())


def check_exposure(settings: Settings) -> str:
    """ "" when the app may start with these settings, else why not and what to pass instead.

    Serving beyond localhost (``--listen``, or a host that is not a loopback address) needs a login
    for the UI (``--auth``/``--auth-file``), which the API then asks for too unless ``--api-auth`` is
    given, or an explicit ``--insecure``. Pure: reads no file (``webui.security.auth`` reads the auth file).
    """
    if is_loopback(settings.host) or has_credentials(settings) or settings.insecure:
        return ""
    return (
        f"refusing to serve on {settings.host} without a password: anyone who can reach this machine"
        " could generate images, read your outputs and change settings. Set credentials with"
        " --auth user:password (or --auth-file FILE with one user:password per line, or the WEBUI_AUTH"
        " environment variable); the API then asks for the same ones unless --api-auth is given."
        " To serve without a password on a network you trust, add --insecure;"
        " to use the app on this machine only, drop --listen."
    )


def exposure_warning(settings: Settings) -> str:
    """A line for the log when the app serves beyond localhost with no login ("" otherwise)."""
    if is_loopback(settings.host) or has_credentials(settings):
        return ""
    return (
        f"serving on {settings.host} WITHOUT a password (--insecure): anyone who can reach port"
        f" {settings.port} can use this app"
    )
