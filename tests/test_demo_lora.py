"""Demo models come with a tiny LoRA per family that goes through the real LoRA loader."""

from __future__ import annotations

import numpy as np
import pytest

from tests.app_services import tmp_services
from webui.generation.requests import GenerationRequest
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.models.demo_lora import demo_lora_name

FAMILIES = ("sd15", "sdxl", "sd3")
# Mean absolute difference (0-255) the LoRA must make: a LoRA that was not applied makes 0 (the same
# request twice on one machine is the same computation); the demo LoRA makes several units.
LORA_EFFECT = 0.5


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-lora")
    write_demo_models(root / "models", FAMILIES, loras=True)
    svc = tmp_services(root)
    svc.generation.start()
    yield svc
    svc.generation.stop()


def _image(services, family: str, prompt: str):
    request = GenerationRequest(
        prompt=prompt, steps=2, width=64, height=64, seed=5, sd_model_checkpoint=demo_checkpoint_name(family)
    )
    job = services.generation.submit(request, source="test")
    assert job.wait(120) and job.state == "done", job.error
    return np.asarray(job.result.images[0], dtype=np.float64), job.result.infotexts[0]


def test_a_demo_lora_is_listed_for_each_family_and_marked_as_a_demo(services):
    loras = {entry.name: entry for entry in services.catalog.entries("lora")}
    for family in FAMILIES:
        entry = loras[demo_lora_name(family)]
        assert entry.usable and entry.demo, entry


@pytest.mark.parametrize("family", FAMILIES)
def test_each_demo_lora_loads_through_the_real_loader_and_changes_the_image(services, family):
    name = demo_lora_name(family).removesuffix(".safetensors")
    plain, _ = _image(services, family, "a lighthouse")
    with_lora, infotext = _image(services, family, f"a lighthouse <lora:{name}:1>")
    assert f"Lora hashes: \"{name}: " in infotext, infotext
    assert np.abs(with_lora - plain).mean() > LORA_EFFECT
