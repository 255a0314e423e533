"""Out of memory in a job: retry once with the next stronger memory mode, else a message naming the mode.

The wrapper (``webui.generation.plan.retry_out_of_memory``) runs a batch's stages; the model handle switches the mode.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from webui.families.registry import default_families
from webui.generation.check import CheckedRequest
from webui.generation.plan import EngineParts, Job, retry_out_of_memory
from webui.generation.requests import GenerationRequest
from webui.generation.service import JobFailed
from webui.memory.modes import MemoryModeRegistry, register_builtin_modes
from webui.memory.planner import NO_PLAN
from webui.models.devices import DeviceChoice
from webui.models.handle import ModelHandle

SDXL = default_families().get("sdxl")


class FakeManager:
    """What the model handle asks of the manager around an out-of-memory error (no model needed)."""

    family = SDXL

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


class OomBatch:
    """A batch's stages replaced by a run that runs out of memory ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ["image"]


def job(manager: FakeManager, oom_retry: bool = True) -> Job:
    req = GenerationRequest(prompt="x", width=1024, height=1024)
    model = ModelHandle(manager, None)
    parts = EngineParts(samplers=None, oom_retry=oom_retry)
    return Job(
        CheckedRequest(req, SimpleNamespace(name="x"), SDXL), model, parts, [(1, 1)], req=req, width=1024, height=1024
    )


def test_one_oom_is_retried_with_the_next_stronger_mode():
    manager = FakeManager()
    run = OomBatch(failures=1)
    assert retry_out_of_memory(run, job(manager)) == ["image"]
    assert run.calls == 2
    assert len(manager.switched) == 1 and manager.switched[0]  # one stronger mode was turned on


def test_a_second_oom_fails_the_job_with_a_message_naming_a_mode():
    manager = FakeManager()
    with pytest.raises(JobFailed) as err:
        retry_out_of_memory(OomBatch(failures=2), job(manager))
    text = str(err.value)
    assert text.startswith("Out of GPU memory at 1024x1024")
    assert "Settings > Memory" in text and "keeps running" in text


def test_without_the_retry_setting_the_first_oom_fails_with_advice():
    manager = FakeManager()
    run = OomBatch(failures=1)
    with pytest.raises(JobFailed, match="Turn on '"):
        retry_out_of_memory(run, job(manager, oom_retry=False))
    assert manager.switched == [] and run.calls == 1


def test_other_errors_pass_through_untouched():
    def broken():
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        retry_out_of_memory(broken, job(FakeManager()))
