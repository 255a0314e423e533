"""ModelManager bookkeeping with a stand-in loader: release on swap, bounded RAM cache."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field

import pytest

from tests import headers as H
from webui.families.registry import default_families
from webui.models.catalog import ModelCatalog
from webui.models.devices import DeviceChoice
from webui.models.manager import ModelManager, ModelNotLoadedError


class FakePipe:
    def __init__(self):
        self.device = "cpu"
        self.components = {}

    def to(self, device):
        self.device = device
        return self


@dataclass
class FakeLoaded:
    pipeline: FakePipe
    family: object
    notes: list = field(default_factory=list)


@pytest.fixture
def setup(tmp_path):
    for name, shapes in (("a", H.SD15), ("b", H.SDXL), ("c", H.SD3_MEDIUM)):
        H.write_safetensors(tmp_path / "Stable-diffusion" / f"{name}.safetensors", shapes)
    catalog = ModelCatalog(tmp_path)
    catalog.refresh()
    families = default_families()
    calls = []

    def loader(path, **kw):
        calls.append(path.name)
        entry = catalog.find(path.name)
        return FakeLoaded(FakePipe(), families.get(entry.family))

    def make(ram=0, device="cpu"):
        return ModelManager(
            catalog, DeviceChoice(device, "fp32", "test"), tmp_path / "cache", families, ram, loader=loader
        )

    return make, calls


def test_nothing_loaded_is_a_clear_error(setup):
    make, _ = setup
    with pytest.raises(ModelNotLoadedError, match="pick one"):
        make().pipeline("txt2img")


def test_swap_releases_previous_model(setup):
    make, calls = setup
    manager = make(ram=0)
    manager.load("a")
    first = weakref.ref(manager.loaded.pipeline)
    manager.load("b")
    gc.collect()
    assert first() is None, "the previous pipeline is still referenced somewhere"
    assert manager.family.id == "sdxl" and calls == ["a.safetensors", "b.safetensors"]


def test_loading_the_active_model_again_is_free(setup):
    make, calls = setup
    manager = make()
    manager.load("a")
    report = manager.load("a.safetensors")
    assert report.from_cache and calls == ["a.safetensors"]


def test_ram_cache_is_bounded_and_lru(setup):
    make, calls = setup
    manager = make(ram=1, device="cuda")
    manager.load("a")
    pipe_a = manager.loaded.pipeline
    manager.load("b")
    assert pipe_a.device == "cpu" and manager.cached_names() == ["a.safetensors"]
    report = manager.load("a")
    assert report.from_cache and pipe_a.device == "cuda" and manager.loaded.pipeline is pipe_a
    manager.load("c")  # b was parked by loading a; now a is parked and b evicted
    assert manager.cached_names() == ["a.safetensors"]
    assert calls == ["a.safetensors", "b.safetensors", "c.safetensors"]
    manager.set_ram_cache_models(0)
    assert manager.cached_names() == []


def test_unknown_task_lists_valid_ones(setup):
    make, _ = setup
    manager = make()
    manager.load("a")
    with pytest.raises(ValueError, match="txt2img, img2img, inpaint"):
        manager.pipeline("upscale")


def test_unusable_entry_is_refused_with_its_reason(setup, tmp_path):
    make, _ = setup
    (tmp_path / "Stable-diffusion" / "bad.safetensors").write_bytes(b"xx")
    manager = make()
    manager.catalog.refresh()
    with pytest.raises(ValueError, match="too small"):
        manager.load("bad")


class _NoMemory:
    def available_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 16 * 1024**3


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_load_that_cannot_fit_in_ram_is_refused_before_the_loader_runs(setup, tmp_path, device):
    from webui.models.ram_budget import NotEnoughMemoryError

    make, calls = setup
    base = make(device=device)
    manager = ModelManager(
        base.catalog, base.device, tmp_path / "cache", base.families, 1, loader=base._loader, memory=_NoMemory()
    )
    if device == "cuda":  # weights go to VRAM; RAM is not the bound (the memory planner's business)
        manager.load("b")
        assert calls == ["b.safetensors"]
        return
    with pytest.raises(NotEnoughMemoryError, match=r"load b\.safetensors: it needs about .* GiB"):
        manager.load("b")
    assert calls == [] and manager.current_entry is None
