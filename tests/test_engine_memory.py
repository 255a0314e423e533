"""Memory modes through the real engine: offload and slicing keep the image, the plan follows the setting."""

from __future__ import annotations

import numpy as np
import pytest

from tests.app_services import tmp_services
from webui.generation.requests import GenerationRequest
from webui.models.demo import demo_checkpoint_name, write_demo_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    write_demo_models(root / "models", ("sd15", "sd3"))
    return root / "models"


def generate(tmp_path, models, family: str, memory_modes: str) -> tuple[np.ndarray, tuple[str, ...]]:
    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, memory_modes=memory_modes)
    services.generation.start()
    try:
        req = GenerationRequest(
            prompt="a cube", seed=5, steps=3, width=64, height=64, sd_model_checkpoint=demo_checkpoint_name(family),
            save_images=False,
        )  # fmt: skip
        job = services.generation.submit(req)
        assert job.wait(120) and job.state == "done", job.error
        return np.asarray(job.result.images[0]), services.manager.memory_plan.names
    finally:
        services.generation.stop()


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_offload_and_slicing_keep_the_image(tmp_path_factory, models, family):
    plain, none = generate(tmp_path_factory.mktemp("a"), models, family, "none")
    saved, names = generate(tmp_path_factory.mktemp("b"), models, family, "model_cpu_offload,vae_slicing")
    assert none == () and set(names) == {"model_cpu_offload", "vae_slicing"}
    assert np.array_equal(plain, saved)


def test_drop_t5_loads_sd3_without_t5(tmp_path, models):
    _, names = generate(tmp_path, models, "sd3", "drop_t5")
    assert names == ("drop_t5",)


def test_modes_diffusers_cannot_undo_rebuild_the_model(tmp_path, models):
    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, memory_modes="none")
    services.generation.start()
    try:
        req = GenerationRequest(
            prompt="a cube", seed=5, steps=3, width=64, height=64, sd_model_checkpoint=demo_checkpoint_name("sd15"),
            save_images=False,
        )  # fmt: skip

        def image():
            job = services.generation.submit(req)
            assert job.wait(120) and job.state == "done", job.error
            return np.asarray(job.result.images[0])

        plain = image()
        manager = services.manager
        services.generation.call(lambda: manager.set_memory_modes("fp8_weights"), timeout=120)
        first = manager.loaded.pipeline
        assert manager.memory_plan.names == ("fp8_weights",)
        assert not np.array_equal(plain, image())  # fp8 storage changes the image, as it says
        services.generation.call(lambda: manager.set_memory_modes("none"), timeout=120)
        assert manager.loaded.pipeline is not first  # layerwise casting cannot be undone: reloaded
        assert np.array_equal(plain, image())
    finally:
        services.generation.stop()
