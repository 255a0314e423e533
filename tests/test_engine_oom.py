"""Out of memory in a job: retry once with the next stronger memory mode, else a message naming the mode."""

from __future__ import annotations

import pytest
import torch

from webui.families.registry import default_families
from webui.generation.engine import Engine, _Job
from webui.generation.requests import GenerationRequest
from webui.generation.service import JobFailed
from webui.memory.modes import MemoryModeRegistry, register_builtin_modes
from webui.memory.planner import NO_PLAN
from webui.models.devices import DeviceChoice

SDXL = default_families().get("sdxl")


class FakeManager:
    """What the engine asks of the manager around an out-of-memory error (no model needed)."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = DeviceChoice(device, "fp16", "test")
        self.memory_registry = MemoryModeRegistry()
        register_builtin_modes(self.memory_registry)
        self.memory_plan = NO_PLAN
        self.switched: list = []

    def set_memory_plan(self, plan) -> list[str]:
        self.memory_plan = plan
        self.switched.append(plan.names)
        return []


class OomEngine(Engine):
    """The engine with its batch runner replaced by one that runs out of memory ``failures`` times."""

    def __init__(self, manager: FakeManager, failures: int, oom_retry: bool = True) -> None:
        super().__init__(manager, samplers=None, writer=None, oom_retry=oom_retry)
        self.failures = failures
        self.calls = 0

    def _run_batch(self, job, batch, ctx):
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ["image"]


def job() -> _Job:
    req = GenerationRequest(prompt="x", width=1024, height=1024)
    return _Job(req, SDXL, "txt2img", "Euler", "Automatic", 20, 7.0, 1024, 1024, [(1, 1)], "x", "", [])


def test_one_oom_is_retried_with_the_next_stronger_mode():
    manager = FakeManager()
    engine = OomEngine(manager, failures=1)
    assert engine._run_batch_guarded(job(), [(1, 1)], ctx=None) == ["image"]
    assert engine.calls == 2
    assert len(manager.switched) == 1 and manager.switched[0]  # one stronger mode was turned on


def test_a_second_oom_fails_the_job_with_a_message_naming_a_mode():
    manager = FakeManager()
    engine = OomEngine(manager, failures=2)
    with pytest.raises(JobFailed) as err:
        engine._run_batch_guarded(job(), [(1, 1)], ctx=None)
    text = str(err.value)
    assert text.startswith("Out of GPU memory at 1024x1024")
    assert "Settings > Memory" in text and "keeps running" in text


def test_without_the_retry_setting_the_first_oom_fails_with_advice():
    manager = FakeManager()
    engine = OomEngine(manager, failures=1, oom_retry=False)
    with pytest.raises(JobFailed, match="Turn on '"):
        engine._run_batch_guarded(job(), [(1, 1)], ctx=None)
    assert manager.switched == [] and engine.calls == 1


def test_other_errors_pass_through_untouched():
    class Broken(OomEngine):
        def _run_batch(self, job, batch, ctx):
            raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        Broken(FakeManager(), failures=0)._run_batch_guarded(job(), [(1, 1)], ctx=None)
