"""The Settings page shows what the models take: the RAM cache's models and GiB against its budget, and on a GPU
what the app holds there against what the device has (``settings_apply.memory_summary``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.app_services import tmp_services
from webui.backend import MemoryUsage
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.ui import settings_apply

GIB = 1024**3


def summary(usage: MemoryUsage) -> str:
    return settings_apply.memory_summary(SimpleNamespace(memory_usage=lambda: usage))


@pytest.mark.parametrize(
    "usage, phrases, absent",
    [
        (
            MemoryUsage(cache_budget_bytes=8 * GIB, cache_max_models=1),
            ["no model loaded", "0 of at most 1", "empty"],
            ["GPU"],
        ),
        (
            MemoryUsage(
                cached=(("a.safetensors", 2 * GIB),),
                cache_bytes=2 * GIB,
                cache_budget_bytes=8 * GIB,
                cache_max_models=2,
                active="b.safetensors",
                active_bytes=GIB,
            ),
            [
                "active: b.safetensors (1.00 GiB)",
                "1 of at most 2 model(s), 2.00 GiB of 8.00 GiB",
                "a.safetensors (2.00 GiB)",
            ],
            ["GPU"],
        ),
        (MemoryUsage(cache_budget_bytes=0, cache_max_models=3), ["RAM cache:** off"], []),
        (
            MemoryUsage(
                cache_budget_bytes=GIB,
                cache_max_models=1,
                active="x.safetensors",
                on_gpu=(("x.safetensors", 5 * GIB),),
                gpu_bytes=5 * GIB,
                gpu_needed_bytes=7 * GIB,
                gpu_free_bytes=30 * GIB,
                gpu_total_bytes=80 * GIB,
            ),
            [
                "**GPU:** this app holds 5.00 GiB (x.safetensors (5.00 GiB))",
                "needs about 7.00 GiB",
                "30.00 GiB free of 80.00 GiB",
            ],
            [],
        ),
    ],
)
def test_the_summary_says_what_is_held_against_the_budget(usage, phrases, absent):
    text = summary(usage)
    for phrase in phrases:
        assert phrase in text, text
    for phrase in absent:
        assert phrase not in text, text


def test_the_settings_page_shows_the_cache_as_it_is(tmp_path):
    from webui.app import build_page

    write_demo_models(tmp_path / "models", ("sd15", "sdxl"))
    services = tmp_services(tmp_path, ram_cache_models=2, ram_cache_gib=4.0)
    manager = services.manager
    manager.load(demo_checkpoint_name("sd15"))
    manager.load(demo_checkpoint_name("sdxl"))
    usage = services.backend.memory_usage()
    assert usage.cached[0][0] == demo_checkpoint_name("sd15") and usage.cache_budget_bytes == 4 * GIB
    assert usage.active == demo_checkpoint_name("sdxl") and usage.on_gpu is None  # CPU: no GPU line
    blocks = build_page(services)
    shown = [b.value for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "settings_memory"]
    assert len(shown) == 1
    assert f"{demo_checkpoint_name('sd15')} (" in shown[0] and "of 4.00 GiB" in shown[0], shown[0]
    assert "1 of at most 2 model(s)" in shown[0]
