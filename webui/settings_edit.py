"""Which settings may change while the app runs (the Settings page edits them), how each is checked,
and how changes are written to the config file.

No gradio, no torch: the page reads ``SPECS`` to lay out its controls, the backend checks and
persists with the functions below (``webui.backend.local_settings`` applies them live).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.config import (
    CHANNELS_LAST,
    CPU_ENGINES,
    PRECISIONS,
    RNG_SOURCES,
    SAMPLES_FORMATS,
    VAE_PRECISIONS,
    Settings,
    SettingsError,
    check_field,
)

SECTION_SAVING = "Saving images"
SECTION_PREVIEW = "Live preview"
SECTION_MODELS = "Models"
SECTION_SAMPLING = "Sampling"
SECTION_MEMORY = "Memory"
SECTION_SPEED = "Speed"
SECTION_SERVER = "Device (applied after a restart)"
# Settings that decide which code runs or which files are loaded, written or served, and where the app
# listens: never from the browser (an uploaded file plus "Extensions folder = the upload folder" would be
# code run at the next start). They stay in the flags and config.json.
NOT_FROM_PAGE: dict[str, str] = {
    "host": "--listen", "port": "--port", "listen": "--listen",
    "models_dir": "--models-dir", "outputs_dir": "--outputs-dir", "extensions_dir": "--extensions-dir",
    "cache_dir": "WEBUI_CACHE_DIR", "config_file": "--config-file", "t5_tokenizer_dir": "WEBUI_T5_TOKENIZER_DIR",
    "auth": "--auth", "auth_file": "--auth-file", "api_auth": "--api-auth", "insecure": "--insecure",
    "allowed_hosts": "--allowed-hosts", "cors_allow_origins": "--cors-allow-origins",
    "cors_allow_origins_regex": "--cors-allow-origins-regex",
    "enable_insecure_extension_access": "--enable-insecure-extension-access", "offline": "WEBUI_OFFLINE",
    "skip_install": "--skip-install",
    "wildcards_dir": "--wildcards-dir",
}


@dataclass(frozen=True)
class SettingSpec:
    """One setting as the page shows it."""

    name: str
    label: str
    section: str
    live: bool
    info: str = ""
    choices: tuple[str, ...] = ()


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "filename_pattern",
        "Image file name pattern",
        SECTION_SAVING,
        True,
        "after the number: [seed], [prompt_words], [model_name], [datetime] ... (empty: the number only)",
    ),
    SettingSpec("samples_format", "File format for images", SECTION_SAVING, True, choices=SAMPLES_FORMATS),
    SettingSpec(
        "preview_every", "Live preview every N sampling steps", SECTION_PREVIEW, True, "0 turns the preview off"
    ),
    SettingSpec(
        "default_model", "Checkpoint for the first generation", SECTION_MODELS, True, "empty: the first one found"
    ),
    SettingSpec(
        "ram_cache_models",
        "Checkpoints kept in RAM for fast switching",
        SECTION_MODELS,
        True,
        "besides the active one; each costs the model's size in RAM",
    ),
    SettingSpec(
        "ram_cache_gib",
        "RAM the cached checkpoints may take (GiB)",
        SECTION_MODELS,
        True,
        "both limits hold; -1: half the machine's RAM minus 4 GiB; 0: keep none. Older models leave first",
    ),
    SettingSpec(
        "default_rng",
        "Random number generator source",
        SECTION_SAMPLING,
        True,
        "CPU: a seed gives the same image on any device",
        RNG_SOURCES,
    ),
    SettingSpec(
        "max_image_size", "Largest width/height a request may ask for", SECTION_SAMPLING, True, "multiple of 8"
    ),
    SettingSpec(
        "max_steps", "Most sampling steps a request may ask for", SECTION_SAMPLING, True, "A1111's API has no cap"
    ),
    SettingSpec(
        "job_timeout",
        "Longest time one job may run (seconds)",
        SECTION_SAMPLING,
        True,
        "a longer job stops like an interrupt and keeps the images it finished; 0 = no limit",
    ),
    SettingSpec(
        "upscaler_tile",
        "Upscaler tile size (pixels)",
        SECTION_SAMPLING,
        True,
        "upscaler models run on tiles of this size so large images fit in memory; 0 = the whole image at once",
    ),
    SettingSpec(
        "upscaler_tile_overlap", "Upscaler tile overlap (pixels)", SECTION_SAMPLING, True, "wider hides seams better"
    ),
    SettingSpec(
        "memory_modes",
        "Memory-saving modes",
        SECTION_MEMORY,
        True,
        "auto (from free VRAM and the model's size), none, or a comma list: drop_t5, model_cpu_offload, "
        "sequential_cpu_offload, group_offload, vae_tiling, vae_slicing, attention_slicing, xformers, fp8_weights",
    ),
    SettingSpec(
        "memory_oom_retry",
        "After out of memory, retry once with the next stronger mode",
        SECTION_MEMORY,
        True,
    ),
    SettingSpec(
        "channels_last",
        "channels_last memory layout",
        SECTION_SPEED,
        True,
        "auto: measured once per model family and kept only where it is faster",
        CHANNELS_LAST,
    ),
    SettingSpec(
        "compile",
        "Compile the UNet/transformer (torch.compile)",
        SECTION_SPEED,
        True,
        "the first image of each size waits for the compiler; falls back to normal speed if compiling fails",
    ),
    SettingSpec(
        "cpu_engine",
        "What runs the UNet on a CPU",
        SECTION_SPEED,
        True,
        "auto: OpenVINO where a short measurement finds it faster for the model on this CPU, else torch;"
        " LoRA, ControlNet and offload modes run in torch (the Computing on line says what runs)",
        CPU_ENGINES,
    ),
    SettingSpec("prompt_cache_size", "Encoded prompts kept for reuse", SECTION_SPEED, True, "0 turns the cache off"),
    SettingSpec("device", "Compute device", SECTION_SERVER, False, choices=("auto", "cpu", "cuda", "mps")),
    SettingSpec(
        "precision",
        "Compute precision",
        SECTION_SERVER,
        False,
        "auto: bf16 where this device computes it fast, fp16 on other GPUs, fp32 elsewhere",
        PRECISIONS,
    ),
    SettingSpec(
        "vae_precision",
        "VAE decode precision",
        SECTION_SERVER,
        False,
        "auto: fp32 for VAEs that overflow in fp16; every decode is checked for NaN and redone in fp32",
        VAE_PRECISIONS,
    ),
)
EDITABLE: tuple[str, ...] = tuple(spec.name for spec in SPECS)
assert not set(EDITABLE) & set(NOT_FROM_PAGE), "a setting that decides code or files is on the page"
LIVE: frozenset[str] = frozenset(spec.name for spec in SPECS if spec.live)
_TOKEN = re.compile(r"\[([^\[\]<>]+)(?:<[^>]*>)?\]")


@dataclass
class SaveResult:
    """What ``save_settings`` did: errors by setting (nothing changed then), else what applied when."""

    errors: dict[str, str] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    after_restart: list[str] = field(default_factory=list)
    persist_error: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # extension settings' labels

    @property
    def ok(self) -> bool:
        return not self.errors

    def _label(self, name: str) -> str:
        return self.labels.get(name) or label(name)

    def message(self) -> str:
        if self.errors:
            return "Nothing was saved: fix the settings marked below."
        if not self.applied and not self.after_restart:
            return "No setting changed."
        parts = []
        if self.applied:
            parts.append("Applied now: " + ", ".join(self._label(n) for n in self.applied) + ".")
        if self.after_restart:
            parts.append("Applied after a restart: " + ", ".join(self._label(n) for n in self.after_restart) + ".")
        if self.persist_error:
            parts.append(self.persist_error)
        return " ".join(parts)


def label(name: str) -> str:
    return next((spec.label for spec in SPECS if spec.name == name), name)


# -- checking -------------------------------------------------------------------------------------


def check_filename_pattern(pattern: str) -> str:
    """ "" when every ``[token]`` is one the writer fills, else a message naming the unknown one."""
    from webui.outputs.writer import FILENAME_TOKENS

    for match in _TOKEN.finditer(pattern):
        token = match.group(1).strip().lower()
        if token not in FILENAME_TOKENS:
            known = ", ".join(f"[{t}]" for t in FILENAME_TOKENS)
            return f"[{match.group(1)}] is not a token this app fills; use one of {known}"
    if "/" in pattern or "\\" in pattern:
        return "the pattern names a file, not folders: remove / and \\"
    return ""


def check_values(values: Mapping[str, Any], checkpoints: Collection[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values coerced to their types, error message by setting name) for the editable settings."""
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, raw in values.items():
        if name in NOT_FROM_PAGE:
            errors[name] = (
                f"{name} cannot be changed from the browser: it decides which files or code the app uses, or"
                f" where it listens; set it with {NOT_FROM_PAGE[name]} or in config.json and restart"
            )
            continue
        if name not in EDITABLE:
            errors[name] = f"{name} cannot be changed on the settings page"
            continue
        try:
            clean[name] = check_field(name, "" if raw is None else raw)
        except SettingsError as exc:
            errors[name] = str(exc)
    if "filename_pattern" in clean:
        message = check_filename_pattern(clean["filename_pattern"])
        if message:
            errors["filename_pattern"] = message
    model = clean.get("default_model", "")
    if model and model not in checkpoints:
        errors["default_model"] = f"no checkpoint named {model!r} was found; pick one from the list or leave it empty"
    return clean, errors


def _option_value(spec: Any, value: Any) -> Any:
    """What a control gives (a float from a number box, None from an empty one) in the setting's type."""
    kind = type(spec.default)
    if value is None:
        return "" if kind is str else value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_extension_values(specs: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[dict, dict[str, str]]:
    """(values in their types, error message by setting) for extension settings."""
    clean, errors = {}, {}
    for name, raw in values.items():
        value = _option_value(specs[name], raw)
        problem = specs[name].problem(value)
        if problem:
            errors[name] = problem
        else:
            clean[name] = value
    return clean, errors


def changed_settings(old: Settings, new: Settings) -> list[str]:
    return [name for name in EDITABLE if getattr(old, name) != getattr(new, name)]


# -- where relative paths hang from --------------------------------------------------------------


def infer_base(settings: Settings, paths: Any) -> Path:
    """The folder relative settings paths were resolved against (the app folder, or a test's root)."""
    for name, resolved in (("outputs_dir", paths.outputs), ("models_dir", paths.models), ("cache_dir", paths.cache)):
        rel = Path(getattr(settings, name)).expanduser()
        resolved = Path(resolved)
        if not rel.is_absolute() and resolved.parts[-len(rel.parts) :] == rel.parts:
            return resolved.parents[len(rel.parts) - 1]
    return Path(paths.config_file).parent


# -- persisting -----------------------------------------------------------------------------------


def persist(path: Path, new: Settings, names: Collection[str], *, reset: bool = False) -> str:
    """Write ``names`` to the config file (``reset``: remove them); "" or a message when it failed."""
    from webui.config import read_config_file, write_config_file

    try:
        stored = read_config_file(path)
    except SettingsError:
        stored = {}  # broken since start-up: keep a copy for the user, rewrite it with what we know
        _keep_copy(path)
    for name in names:
        if reset:
            stored.pop(name, None)
        else:
            stored[name] = getattr(new, name)
    try:
        write_config_file(path, stored)
    except OSError as exc:
        return f"Could not write {path} ({exc.strerror or exc}): the changes last until the app stops."
    return ""


def _keep_copy(path: Path) -> None:
    """Rename an unreadable settings file to ``<name>.broken`` (its content may be worth fixing by hand)."""
    try:
        path.replace(path.with_name(path.name + ".broken"))
    except OSError:
        pass
