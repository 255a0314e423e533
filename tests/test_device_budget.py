"""The GPU budget: a load's device footprint estimated before any weight moves (by memory mode), models this app
holds on the device making room first, and a load that cannot fit refused with what it needs, what is free and
what to do.

No GPU here: the manager reads the device through ``device_memory=`` (a ``FakeDevice``), loads through
``loader=`` (a fake pipeline that records where it was moved), and the footprints come from real tiny
checkpoints' headers. The footprint rules themselves are checked on component sizes (table-driven).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from webui.families.registry import default_families
from webui.memory.modes import MemoryModeRegistry, register_builtin_modes
from webui.models.catalog import ModelCatalog
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.models.device_budget import (
    MIN_WORKING_BYTES,
    RESIDENCY,
    STREAM_BYTES,
    NotEnoughDeviceMemoryError,
    component_bytes,
    footprint,
)
from webui.models.devices import DeviceChoice
from webui.models.loader import LoadedModel
from webui.models.manager import ModelManager
from webui.models.ram_budget import GIB, NotEnoughMemoryError, checkpoint_estimate

SDXL_FP16 = {"unet": int(4.8 * GIB), "text_encoder": int(0.23 * GIB), "text_encoder_2": int(1.3 * GIB), "vae": GIB // 6}
TOTAL = sum(SDXL_FP16.values())


@pytest.mark.parametrize(
    "modes, placement, resident, at_rest",
    [
        ((), (), TOTAL, TOTAL),
        (("vae_tiling", "vae_slicing"), (), TOTAL, TOTAL),
        (("model_cpu_offload",), (), SDXL_FP16["unet"], 0),
        (("group_offload",), (), STREAM_BYTES + SDXL_FP16["vae"], SDXL_FP16["vae"]),
        (("sequential_cpu_offload",), (), STREAM_BYTES, 0),
        (("group_offload", "sequential_cpu_offload"), (), STREAM_BYTES, 0),  # a suggestion replaces the plan's
        (
            ("fp8_weights",),
            (),
            TOTAL - SDXL_FP16["unet"] + SDXL_FP16["unet"] // 2,
            TOTAL - SDXL_FP16["unet"] + SDXL_FP16["unet"] // 2,
        ),
        (("an_extensions_offload",), ("an_extensions_offload",), SDXL_FP16["unet"], 0),  # assumed: the largest
    ],
)
def test_the_footprint_follows_the_memory_mode(modes, placement, resident, at_rest):
    import torch

    fp = footprint(SDXL_FP16, modes, torch.float16, placement)
    assert (fp.resident, fp.at_rest) == (resident, at_rest)
    largest = SDXL_FP16["unet"] // (2 if "fp8_weights" in modes else 1)
    assert fp.working == max(MIN_WORKING_BYTES, int(0.5 * largest))  # activations scale with the denoiser
    assert fp.needed == fp.resident + fp.working


def test_working_memory_is_at_least_a_gib_and_at_most_four():
    import torch

    assert footprint({"unet": GIB}, (), torch.float16).working == MIN_WORKING_BYTES
    assert footprint({"transformer": 24 * GIB}, (), torch.float16).working == 4 * GIB


# --- the manager on a fake GPU ------------------------------------------------------------------------------


class FakeDevice:
    def __init__(self, free: int = 64 * GIB, total: int = 80 * GIB) -> None:
        self.free, self.total = free, total

    def free_bytes(self) -> int:
        return self.free

    def total_bytes(self) -> int:
        return self.total


class FakeMemory:
    def available_bytes(self) -> int:
        return 64 * GIB

    def total_bytes(self) -> int:
        return 128 * GIB


class FakePipe:
    """Stands in for a pipeline: records where it was moved; memory modes' enable_* calls do nothing."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.components: dict = {}

    def to(self, device: str) -> "FakePipe":
        self.device = device
        return self

    def __getattr__(self, name: str):
        if name.startswith(("enable_", "disable_")):
            return lambda *a, **k: None
        raise AttributeError(name)


class FakeLoader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: Path, *, record, device, families, **kwargs) -> LoadedModel:
        self.calls.append(Path(path).name)
        family = families.get(record.family)
        # named as the family's img2img class, so that the secondary slot's img2img pipeline is this one
        pipe = type(family.pipelines["img2img"], (FakePipe,), {})(device)
        return LoadedModel(pipe, family, record, Path(path))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_models(root, ("sd15", "sdxl", "sd3"))
    return root


def name(family: str) -> str:
    return demo_checkpoint_name(family)


def _manager(models_dir, tmp_path, device, *, modes="none", ram_models=2, precision="fp16"):
    catalog = ModelCatalog(models_dir)
    catalog.refresh()
    registry = MemoryModeRegistry()
    register_builtin_modes(registry)
    loader = FakeLoader()
    manager = ModelManager(
        catalog,
        DeviceChoice("cuda", precision, "test"),
        tmp_path / "cache",
        default_families(),
        ram_cache_models=ram_models,
        ram_cache_gib=100,
        loader=loader,
        memory=FakeMemory(),
        device_memory=device,
        memory_registry=registry,
        memory_modes=modes,
    )
    return manager, loader


def test_components_split_by_the_family_layout_and_add_up_to_the_ram_estimate(models_dir):
    import torch

    catalog = ModelCatalog(models_dir)
    catalog.refresh()
    entry = catalog.find(name("sdxl"))
    parts = component_bytes(entry, torch.float16, default_families().get("sdxl"))
    assert set(parts) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert sum(parts.values()) == checkpoint_estimate(entry, torch.float16)


def test_a_load_that_cannot_fit_on_the_gpu_is_refused_before_anything_moves(models_dir, tmp_path):
    device = FakeDevice()
    manager, loader = _manager(models_dir, tmp_path, device)
    manager.load(name("sd15"))
    active = manager.loaded.pipeline
    need = manager.estimate_device(name("sdxl"))
    held = manager.device_usage()["bytes"]
    device.free = need.needed - held - 1  # even with the active model moved off, one byte short
    with pytest.raises(NotEnoughDeviceMemoryError) as info:
        manager.load(name("sdxl"))
    assert isinstance(info.value, NotEnoughMemoryError)  # the API and the UI map both the same way
    message = str(info.value)
    for phrase in (
        "not enough GPU memory to load " + name("sdxl"),
        "needs about",
        "fp16 weights",
        "is free on the GPU",
        "Settings > Memory",
        "Model CPU offload would need about",
        "fp8 weight storage would need about",
        "Sequential CPU offload would need about",
        "smaller model",
        "close other programs",
        "active model stays loaded",
    ):
        assert phrase in message, message
    assert "--precision" not in message  # already half precision: nothing lower to suggest
    # nothing changed: no read, the active model still on the device
    assert loader.calls == [name("sd15")]
    assert manager.current_entry.name == name("sd15") and manager.loaded.pipeline is active
    assert active.device == "cuda"


def test_an_fp32_refusal_suggests_a_lower_precision(models_dir, tmp_path):
    manager, _loader = _manager(models_dir, tmp_path, FakeDevice(free=0), precision="fp32")
    with pytest.raises(NotEnoughDeviceMemoryError, match=r"fp32 weights.*--precision fp16 or bf16"):
        manager.load(name("sd15"))


def test_the_active_model_moves_off_the_gpu_to_make_room(models_dir, tmp_path):
    device = FakeDevice()
    manager, loader = _manager(models_dir, tmp_path, device)
    manager.load(name("sd15"))
    sd15 = manager.loaded.pipeline
    held = manager.device_usage()["bytes"]
    assert held > 0 and manager.device_usage()["models"] == [(name("sd15"), held)]
    device.free = manager.estimate_device(name("sdxl")).needed - held // 2  # fits only once sd15 leaves
    manager.load(name("sdxl"))
    assert sd15.device == "cpu" and manager.cached_names() == [name("sd15")]
    assert manager.device_usage()["models"][0][0] == name("sdxl")
    # back from the RAM cache: checked the same way, and moved to the device
    manager.load(name("sd15"))
    assert sd15.device == "cuda" and loader.calls == [name("sd15"), name("sdxl")]


def test_a_cached_model_that_cannot_fit_stays_cached(models_dir, tmp_path):
    device = FakeDevice()
    manager, _loader = _manager(models_dir, tmp_path, device)
    manager.load(name("sdxl"))
    manager.load(name("sd15"))
    device.free = 0
    with pytest.raises(NotEnoughDeviceMemoryError):
        manager.load(name("sdxl"))
    assert manager.cached_names() == [name("sdxl")] and manager.current_entry.name == name("sd15")


def test_the_secondary_model_is_released_when_the_active_one_needs_its_room(models_dir, tmp_path, caplog):
    device = FakeDevice()
    manager, _loader = _manager(models_dir, tmp_path, device)
    manager.load(name("sd15"))
    manager.secondary(name("sdxl"))
    usage = manager.device_usage()
    assert [n for n, _ in usage["models"]] == [name("sd15"), name("sdxl")]
    sd15_bytes, sdxl_bytes = (b for _, b in usage["models"])
    # sd3 fits once sd15 moves off and the secondary sdxl is released too
    device.free = manager.estimate_device(name("sd3")).needed - sd15_bytes - sdxl_bytes // 2
    with caplog.at_level("INFO", logger="webui.models.manager"):
        manager.load(name("sd3"))
    assert "released the secondary model " + name("sdxl") in caplog.text
    assert [n for n, _ in manager.device_usage()["models"]] == [name("sd3")]


def test_the_secondary_load_cannot_push_the_active_model_off(models_dir, tmp_path):
    device = FakeDevice()
    manager, _loader = _manager(models_dir, tmp_path, device)
    manager.load(name("sdxl"))
    device.free = manager.estimate_device(name("sd15")).needed - 1
    with pytest.raises(NotEnoughDeviceMemoryError, match="not enough GPU memory to load " + name("sd15")):
        manager.secondary(name("sd15"))
    assert manager.current_entry.name == name("sdxl") and manager.loaded.pipeline.device == "cuda"


def test_a_parked_model_whose_offload_left_weights_on_the_gpu_is_evicted_first(models_dir, tmp_path, caplog):
    device = FakeDevice()
    manager, _loader = _manager(models_dir, tmp_path, device, modes="group_offload")
    manager.load(name("sdxl"))
    sdxl_vae = manager.device_usage()["bytes"]
    assert 0 < sdxl_vae < manager.estimate_device(name("sdxl")).resident  # the VAE stays; the rest streams
    manager.load(name("sd15"))
    assert manager.cached_names() == [name("sdxl")]
    assert (name("sdxl"), sdxl_vae) in manager.device_usage()["models"]  # parked, its VAE still on the GPU
    # sd3 fits only once sdxl's VAE leaves: sdxl (least recently used) is evicted, sd15 is parked as usual
    device.free = manager.estimate_device(name("sd3")).needed - sdxl_vae // 2
    with caplog.at_level("INFO", logger="webui.models.manager"):
        manager.load(name("sd3"))
    assert manager.cached_names() == [name("sd15")]
    assert f"evicted {name('sdxl')} from the RAM cache: its offloaded weights held" in caplog.text


def test_auto_plans_for_the_memory_the_switch_will_free(models_dir, tmp_path):
    device = FakeDevice()
    manager, _loader = _manager(models_dir, tmp_path, device, modes="auto")
    manager.load(name("sd15"))
    assert manager.memory_plan.names == ()  # 64 GiB free: nothing to do
    device.free = 2 * GIB  # tiny weights, 2 GiB free: still roomy for auto
    manager.load(name("sdxl"))
    assert manager.memory_plan.auto and manager.memory_plan.names == ()


def test_a_memory_mode_change_updates_what_the_model_holds_on_the_gpu(models_dir, tmp_path):
    device = FakeDevice()
    manager, _loader = _manager(models_dir, tmp_path, device)
    manager.load(name("sdxl"))
    all_weights = manager.device_usage()["bytes"]
    manager.set_memory_modes("model_cpu_offload")  # in place: the weights go back to RAM between jobs
    assert manager.device_usage()["bytes"] == 0 < all_weights
    offloaded = manager.estimate_device(name("sdxl"))  # under the plan in use now
    assert manager.device_usage()["needed_bytes"] == offloaded.needed and offloaded.resident < all_weights


def test_the_refusal_suggests_only_modes_that_need_less_than_the_plan_in_use(models_dir, tmp_path):
    manager, _loader = _manager(models_dir, tmp_path, FakeDevice(free=0), modes="group_offload")
    with pytest.raises(NotEnoughDeviceMemoryError) as info:
        manager.load(name("sdxl"))
    message = str(info.value)
    assert "with Group offload" in message and "layers streamed, the VAE kept on the device" in message
    assert "Sequential CPU offload would need about" in message  # streams the VAE too: less
    assert "Group offload would need" not in message  # the plan in use is no suggestion


def test_for_full_size_sdxl_the_offloads_order_by_what_they_keep_on_the_device():
    import torch

    need = {m: footprint(SDXL_FP16, (m,), torch.float16).needed for m in ("", *RESIDENCY)}
    assert need[""] > need["model_cpu_offload"] > need["group_offload"] > need["sequential_cpu_offload"]
