"""The in-process backend's model side: catalog entries, families and samplers as plain records.

Every fact the backend reads from a catalog entry (its family, its format) goes through
``entry_facts``: the one place to change when the entries carry a typed model record.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.backend.records import FamilyInfo, LoraInfo, ModelInfo, SamplerInfo, ScheduleInfo, Step

if TYPE_CHECKING:
    from webui.app import Services

USABLE = "usable"


@dataclass(frozen=True)
class EntryFacts:
    family: str | None
    format: str


def entry_facts(entry: Any) -> EntryFacts:
    """What the backend needs to know of a catalog entry; the adapter to repoint at its model record."""
    return EntryFacts(family=entry.family, format=entry.format)


def family_info(spec: Any) -> FamilyInfo:
    return FamilyInfo(
        id=spec.id,
        label=spec.label,
        default_steps=int(spec.default_steps),
        default_cfg=float(spec.default_cfg),
        default_size=(int(spec.default_size[0]), int(spec.default_size[1])),
        resolution_presets=tuple((int(w), int(h)) for w, h in spec.resolution_presets),
        is_flow=bool(spec.is_flow),
        lora_group=spec.lora_group,
    )


def family_label(services: Services, family_id: str | None) -> str:
    if not family_id or family_id not in services.families:
        return ""
    return services.families.get(family_id).label


def cached_sha256(services: Services, entry: Any) -> str | None:
    """The cached sha256 (never computed here: hashing a 6 GB file takes a while)."""
    if entry_facts(entry).format == "diffusers" or services.hashes is None:
        return None
    try:
        return services.hashes.get(entry.path, compute=False)
    except OSError:  # removed since the last scan
        return None


def model_info(services: Services, entry: Any) -> ModelInfo:
    facts = entry_facts(entry)
    info = getattr(entry, "info", None) or {}
    return ModelInfo(
        name=entry.name,
        kind=entry.kind,
        path=str(entry.path),
        format=facts.format,
        size=int(entry.size),
        mtime_ns=int(entry.mtime_ns),
        stem=entry.stem,
        family=facts.family,
        family_label=family_label(services, facts.family),
        sha256=cached_sha256(services, entry),
        demo=bool(entry.demo),
        error=entry.error,
        note=str(info.get("note", "")) if facts.format == "ckpt" else "",
    )


# --- LoRAs -------------------------------------------------------------------------------------------


def _inspect(entry: Any, cache: dict[Any, tuple[str, str]]) -> tuple[str, str]:
    """(family group, error or '') for a LoRA entry, cached by path and mtime."""
    from webui.models.lora import inspect_lora
    from webui.models.safetensors_header import ModelFileError, read_header

    key = (entry.path, entry.mtime_ns)
    if key not in cache:
        if entry.error:
            cache[key] = ("", entry.error)
        elif entry_facts(entry).format != "safetensors":
            cache[key] = ("unknown", "")
        else:
            try:
                cache[key] = (inspect_lora(read_header(entry.path)).family_group, "")
            except ModelFileError as exc:
                cache[key] = ("", str(exc))
            except OSError as exc:
                cache[key] = ("", f"cannot be read: {exc}")
    return cache[key]


def lora_rows(services: Services, cache: dict[Any, tuple[str, str]], family_id: str | None) -> list[LoraInfo]:
    """One row per LoRA file, in catalog order, marked usable or not for the family (None: no model)."""
    from webui.models.lora import group_fits, group_label

    family = services.families.get(family_id) if family_id else None
    rows = []
    for entry in services.catalog.entries("lora"):
        name = Path(entry.stem).name
        group, error = _inspect(entry, cache)
        made_for = group_label(group, unknown="unknown model") if group else "?"
        if error:
            rows.append(LoraInfo(name, made_for, False, error))
            continue
        if family is None or group_fits(group, family) is not False:
            rows.append(LoraInfo(name, made_for, True, USABLE))
        else:
            rows.append(LoraInfo(name, made_for, False, f"made for {made_for}; the loaded model is {family.label}"))
    return rows


# --- samplers ----------------------------------------------------------------------------------------


def sampler_infos(services: Services, family_id: str | None) -> list[SamplerInfo]:
    from webui.generation.samplers import samplers_json

    family = services.families.get(family_id) if family_id else None
    return [SamplerInfo(d["name"], list(d["aliases"]), dict(d["options"])) for d in samplers_json(services.samplers, family)]


def schedule_infos(services: Services) -> list[ScheduleInfo]:
    from webui.generation.samplers import schedulers_json

    return [
        ScheduleInfo(d["name"], d["label"], list(d["aliases"] or []), d["default_rho"], bool(d["need_inner_model"]))
        for d in schedulers_json(services.samplers)
    ]


# --- long actions that stream ------------------------------------------------------------------------


def demo_model_steps(services: Services) -> Iterator[Step]:
    """A step per family while its tiny checkpoint and LoRA are written, then what was made.

    Files that exist are kept.
    """
    from webui.models.demo import DEMO_FAMILIES, demo_checkpoint_name, write_demo_models
    from webui.models.demo_lora import demo_lora_path

    models = services.paths.models
    new: list[str] = []
    for i, family in enumerate(DEMO_FAMILIES, 1):
        label = services.families.get(family).label
        yield Step(f"Creating the demo models: {label} ({i} of {len(DEMO_FAMILIES)}), a checkpoint and a LoRA ...")
        files = [models / "Stable-diffusion" / demo_checkpoint_name(family), demo_lora_path(models, family)]
        missing = [path for path in files if not path.exists()]
        write_demo_models(models, (family,), loras=True)
        new.extend(path.name for path in missing if path.exists())
    services.catalog.refresh()
    made = ", ".join(new) if new else "nothing new (they exist already)"
    example = demo_lora_path(models, DEMO_FAMILIES[0]).stem
    yield Step(
        f"Demo models ready; written: {made}. They have random weights and make noise: pick one in the "
        f"checkpoint list, and try a LoRA from the LoRA panel (e.g. `<lora:{example}:1>`).",
        final=True,
    )


Progress = Callable[[int, "int | None"], None]


def stream_progress(work: Callable[[Progress], str], describe: Callable[[int, int], str]) -> Iterator[Step]:
    """Run ``work(progress)`` on a thread of its own; a ``Step`` per progress report, then its outcome.

    ``work`` returns the final line (it reports its own failures in words).
    """
    steps: queue.Queue[Step] = queue.Queue()

    def report(done: int, total: int | None) -> None:
        if total:
            steps.put(Step(describe(done, total), done / total))

    def run() -> None:
        try:
            text = work(report)
        except Exception as exc:  # noqa: BLE001 - the page shows it, the server keeps running
            text = f"**Failed:** {exc}"
        steps.put(Step(text, final=True))

    threading.Thread(target=run, name="download", daemon=True).start()
    while True:
        step = steps.get()
        yield step
        if step.final:
            return


def download_checkpoint_steps(services: Services, name: str) -> Iterator[Step]:
    from webui.models import download

    try:
        entry = download.find_default(name)
    except KeyError as exc:
        yield Step(f"**Cannot download:** {exc}", final=True)
        return

    def work(report: Progress) -> str:
        try:
            path = download.download_default(entry, services.paths.models, progress=report, cancel=None)
        except download.DownloadError as exc:
            return f"**Download failed:** {exc}"
        services.catalog.refresh()
        return f"Downloaded {path.name}; pick it in the checkpoint list."

    yield from stream_progress(work, lambda done, total: f"{done / 2**30:.2f} of {total / 2**30:.2f} GiB")


def download_t5_steps(services: Services) -> Iterator[Step]:
    from webui.models import download

    dest = services.paths.t5_tokenizer_dir(services.settings)

    def work(report: Progress) -> str:
        try:
            download.download_t5_tokenizer(dest, progress=report)
        except download.DownloadError as exc:
            return f"**Download failed:** {exc}"
        return f"T5 tokenizer saved in {dest}; SD3 checkpoints load with T5 from now on."

    yield from stream_progress(work, lambda done, total: "T5 tokenizer")
