"""The RAM cache bounded by memory: estimates before reading, a GiB budget beside the model count, LRU eviction,
and loads that cannot fit refused before a byte is read. Real tiny checkpoints of each family.

The machine's memory is read through ``ModelManager(memory=...)``; here a ``FakeMemory`` says how much is
available, so the refusal is tested without touching psutil.
"""

from __future__ import annotations

import logging

import pytest
import torch

from webui.config import SettingsError, check_field, load_settings
from webui.families.registry import default_families
from webui.models.catalog import ModelCatalog
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.models.devices import DeviceChoice
from webui.models.manager import ModelManager
from webui.models.ram_budget import (
    GIB,
    SAFETY_MARGIN_BYTES,
    NotEnoughMemoryError,
    budget_bytes,
    default_budget_bytes,
    measured_bytes,
)

FAMILIES = ("sd15", "sdxl", "sd3")


class FakeMemory:
    def __init__(self, available: int = 64 * GIB, total: int = 128 * GIB) -> None:
        self.available = available
        self.total = total

    def available_bytes(self) -> int:
        return self.available

    def total_bytes(self) -> int:
        return self.total


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_models(root, FAMILIES)
    return root


def name(family: str) -> str:
    return demo_checkpoint_name(family)


def _manager(models_dir, tmp_path, *, models=3, gib=None, memory=None, precision="fp32"):
    catalog = ModelCatalog(models_dir)
    catalog.refresh()
    return ModelManager(
        catalog,
        DeviceChoice("cpu", precision, "test"),
        tmp_path / "cache",
        default_families(),
        ram_cache_models=models,
        ram_cache_gib=gib,
        memory=memory or FakeMemory(),
        t5_tokenizer_dir=models_dir / "text_encoder" / "t5_tokenizer",  # SD3 with its T5, as the app loads it
    )


@pytest.fixture(scope="module")
def sizes(models_dir, tmp_path_factory):
    """family -> (estimate, measured) in fp32."""
    manager = _manager(models_dir, tmp_path_factory.mktemp("sizes"), models=0)
    out = {}
    for family in FAMILIES:
        estimate = manager.estimate_bytes(name(family))
        manager.load(name(family))
        out[family] = (estimate, measured_bytes(manager.loaded.pipeline))
    manager.unload()
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_estimate_from_the_header_is_close_to_the_measured_size(models_dir, tmp_path, family, precision):
    manager = _manager(models_dir, tmp_path, models=0, precision=precision)
    estimate = manager.estimate_bytes(name(family))
    manager.load(name(family))
    measured = measured_bytes(manager.loaded.pipeline)
    assert measured > 0
    assert 0.7 <= estimate / measured <= 1.5, (family, precision, estimate, measured)


def test_bf16_estimate_is_half_of_fp32(models_dir, tmp_path):
    fp32 = _manager(models_dir, tmp_path, precision="fp32").estimate_bytes(name("sdxl"))
    bf16 = _manager(models_dir, tmp_path, precision="bf16").estimate_bytes(name("sdxl"))
    assert 0.45 <= bf16 / fp32 <= 0.55


def test_cycling_keeps_the_cache_within_its_budget_and_evicts_least_recent_first(models_dir, tmp_path, sizes, caplog):
    measured = {f: m for f, (_e, m) in sizes.items()}
    # room for either sd15 or sdxl, never both: the GiB bound, not the count (3), decides
    budget = max(measured["sd15"], measured["sdxl"]) + min(measured["sd15"], measured["sdxl"]) // 2
    assert budget < sum(measured.values())
    manager = _manager(models_dir, tmp_path, models=3, gib=budget / GIB)
    budget_used = manager.ram_cache_usage()["budget_bytes"]
    assert abs(budget_used - budget) <= 1
    steps = []
    with caplog.at_level(logging.INFO, logger="webui.models.manager"):
        for family in ("sd15", "sdxl", "sd15", "sd3"):
            manager.load(name(family))
            usage = manager.ram_cache_usage()
            assert usage["bytes"] <= usage["budget_bytes"], (family, usage)
            assert usage["bytes"] == sum(n for _, n in usage["models"])
            assert usage["active_bytes"] == pytest.approx(measured[family], rel=0.01)
            steps.append(manager.cached_names())
    assert steps == [[], [name("sd15")], [name("sdxl")], [name("sd15")]]  # sdxl (older) left for sd15
    evicted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evicted")]
    assert len(evicted) == 1 and evicted[0].startswith(f"evicted {name('sdxl')} (") and "GiB" in evicted[0]
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    assert all("GiB" in line for line in loaded) and "estimated" in loaded[0]
    # the cached one comes back from RAM
    assert manager.load(name("sd15")).from_cache


def test_the_count_bound_holds_beside_a_roomy_budget(models_dir, tmp_path):
    manager = _manager(models_dir, tmp_path, models=1, gib=100.0)
    for family in ("sd15", "sdxl", "sd3"):
        manager.load(name(family))
        assert len(manager.cached_names()) <= 1
    assert manager.cached_names() == [name("sdxl")]


def test_a_model_larger_than_the_whole_budget_is_not_cached(models_dir, tmp_path, sizes):
    manager = _manager(models_dir, tmp_path, models=3, gib=sizes["sd3"][1] / 2 / GIB)
    manager.load(name("sd3"))
    manager.load(name("sd15"))
    assert name("sd3") not in manager.cached_names()


def test_a_zero_budget_keeps_nothing_and_a_lower_budget_applies_live(models_dir, tmp_path):
    manager = _manager(models_dir, tmp_path, models=3, gib=0)
    manager.load(name("sd15"))
    manager.load(name("sdxl"))
    assert manager.cached_names() == []
    manager.set_ram_cache_gib(100)
    manager.load(name("sd15"))
    assert manager.cached_names() == [name("sdxl")]
    manager.set_ram_cache_gib(0.0001)
    assert manager.cached_names() == [] and manager.ram_cache_usage()["bytes"] == 0


def test_a_load_that_cannot_fit_is_refused_before_reading_and_the_active_model_stays(models_dir, tmp_path, sizes):
    memory = FakeMemory()
    manager = _manager(models_dir, tmp_path, models=3, gib=100.0, memory=memory)
    manager.load(name("sd15"))
    unet = manager.loaded.pipeline.unet
    memory.available = 0  # nothing left: even the whole cache and the active model freed cannot hold SDXL
    with pytest.raises(NotEnoughMemoryError) as info:
        manager.load(name("sdxl"))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for phrase in ("needs about", "GiB", "Close other programs", "--ram-cache-gib", "precision", "unload"):
        assert phrase in message, message
    # nothing changed: the active model is the one it was and still works
    assert manager.current_entry.name == name("sd15") and manager.loaded.pipeline.unet is unet
    pipe = manager.pipeline("txt2img")
    out = pipe(prompt="a", num_inference_steps=1, height=64, width=64, output_type="latent", guidance_scale=1.0)
    assert torch.isfinite(out.images).all()


def test_eviction_makes_room_for_a_load_the_budget_alone_would_allow(models_dir, tmp_path, sizes):
    memory = FakeMemory()
    manager = _manager(models_dir, tmp_path, models=3, gib=100.0, memory=memory)
    manager.load(name("sd15"))
    manager.load(name("sdxl"))
    assert manager.cached_names() == [name("sd15")]
    estimate = manager.estimate_bytes(name("sd3"))
    # short by half of sd15: evicting it (the least recently used) is enough
    memory.available = estimate + SAFETY_MARGIN_BYTES - sizes["sd15"][1] // 2
    manager.load(name("sd3"))
    assert manager.cached_names() == [name("sdxl")]


def test_the_secondary_slot_is_refused_too_and_the_active_model_stays(models_dir, tmp_path):
    memory = FakeMemory()
    manager = _manager(models_dir, tmp_path, models=0, memory=memory)
    manager.load(name("sdxl"))
    memory.available = 0
    with pytest.raises(NotEnoughMemoryError, match="needs about"):
        manager.secondary(name("sd15"))
    assert manager.current_entry.name == name("sdxl")
    memory.available = 64 * GIB
    manager.secondary(name("sd15"))
    assert manager.ram_cache_usage()["secondary_bytes"] > 0


def test_budget_setting_flag_and_default():
    assert default_budget_bytes(24 * GIB) == 8 * GIB and default_budget_bytes(8 * GIB) == 0
    assert budget_bytes(-1, FakeMemory(total=16 * GIB)) == 4 * GIB
    assert budget_bytes(0.5) == GIB // 2
    settings, _ = load_settings(["--ram-cache-gib", "2.5"], environ={})
    assert settings.ram_cache_gib == 2.5
    assert load_settings([], environ={"WEBUI_RAM_CACHE_GIB": "1.5"})[0].ram_cache_gib == 1.5
    assert check_field("ram_cache_gib", "3") == 3.0
    for bad in (-2, "lots", True):
        with pytest.raises(SettingsError, match="ram_cache_gib"):
            check_field("ram_cache_gib", bad)
