"""Interrupt as A1111 does it: the batch being sampled still yields its latest estimate, decoded, unsaved.

Engine tests run ``Engine.run`` on the test thread (the worker is not started) with a context that
presses Interrupt at a chosen step, so they do not depend on timing. ``Latest`` is checked on real
diffusers schedulers: which prediction it takes from each, and that the pipeline still sees the
scheduler's own ``step`` signature.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from tests.app_services import tmp_services
from tests.tolerance import assert_close_pixels
from webui.generation.latest import Latest
from webui.generation.requests import GenerationRequest
from webui.generation.service import Job, JobContext
from webui.models.demo import demo_checkpoint_name, write_demo_models

SD15 = demo_checkpoint_name("sd15")
SD3 = demo_checkpoint_name("sd3")


class InterruptAt(JobContext):
    """Presses Interrupt once ``at`` sampling steps of the job have run (counted over all passes)."""

    def __init__(self, request: GenerationRequest, at: int) -> None:
        super().__init__(Job(request, "test", 1), preview_every=0)
        self.at, self.seen = at, 0

    def on_step(self, step, latents=None, preview=None):
        self.seen += 1
        if self.seen == self.at:
            self._job.interrupt()
        super().on_step(step, latents, preview)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    write_demo_models(root / "models", ("sd15", "sd3"))
    return tmp_services(root, ram_cache_models=2)


def request(**fields) -> GenerationRequest:
    values = {"prompt": "a lighthouse", "seed": 21, "steps": 6, "width": 64, "height": 64, "sd_model_checkpoint": SD15}
    values.update(fields)
    return GenerationRequest(**values)


def run(services, req: GenerationRequest, at: int | None = None):
    ctx = JobContext(Job(req, "test", 1), preview_every=0) if at is None else InterruptAt(req, at)
    return services.engine.run(req, ctx)


def saved_files(services) -> set:
    outputs = services.paths.outputs
    return set(outputs.rglob("*.png")) if outputs.exists() else set()


# --- the engine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, sampler", [(SD15, "Euler"), (SD15, "DPM++ 2M"), (SD15, "Euler a"), (SD3, "Euler")])
def test_interrupt_at_the_last_step_gives_the_finished_image(services, model, sampler):
    """The estimate after the last step is the finished latents: the same image within rounding."""
    req = request(sd_model_checkpoint=model, sampler_name=sampler, save_images=False)
    full = run(services, req)
    cut = run(services, req, at=req.steps)
    assert cut.interrupted and not full.interrupted
    assert_close_pixels(np.asarray(full.images[0]), np.asarray(cut.images[0]))


def test_interrupted_batch_is_returned_with_infotexts_and_not_saved(services):
    req = request(n_iter=2, batch_size=2, save_images=True)
    before = saved_files(services)
    result = run(services, req, at=req.steps + 2)  # step 2 of the second batch
    assert result.interrupted
    assert result.seeds == [21, 22, 23, 24] and len(result.images) == 4
    assert [bool(p) for p in result.paths] == [True, True, False, False]  # the finished batch only
    assert len(saved_files(services) - before) == 2
    assert all(f"Seed: {seed}," in text for seed, text in zip(result.seeds, result.infotexts))
    assert result.info["all_seeds"] == [21, 22, 23, 24] and len(result.info["infotexts"]) == 4


def test_interrupt_between_batches_adds_no_image(services):
    req = request(n_iter=3, save_images=False)
    ctx = JobContext(Job(req, "test", 1), preview_every=0)
    ctx._job.interrupt()  # before the first batch samples anything
    result = services.engine.run(req, ctx)
    assert result.interrupted and result.images == []


def test_interrupt_in_the_first_pass_of_hires_fix_skips_the_hires_pass(services):
    req = request(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.5, save_images=False)
    first_pass = run(services, req, at=2)
    assert first_pass.images[0].size == (64, 64)  # A1111: the first pass's image
    second_pass = run(services, req, at=req.steps + 1)
    assert second_pass.images[0].size == (128, 128)  # interrupted in the hires pass: its own estimate


def test_interrupted_inpaint_keeps_the_unmasked_pixels(services):
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    image = Image.fromarray(np.stack([gradient, gradient.T, 255 - gradient], axis=-1))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    req = request(
        task="inpaint",
        init_image=image,
        mask=Image.fromarray(mask),
        mask_blur=0,
        denoising_strength=1.0,
        save_images=False,
    )
    (out,) = run(services, req, at=2).images
    assert np.array_equal(np.asarray(out)[:8, :8], np.asarray(image)[:8, :8])  # pasted back like a finished one


# --- Latest on real diffusers schedulers -----------------------------------------------------------------


def _stepped(scheduler, latest: Latest, steps: int = 4):
    scheduler.set_timesteps(steps)
    stop = latest.watch(pipe=object(), scheduler=scheduler)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model_output = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = scheduler.timesteps[0]
    out = scheduler.step(model_output, t, sample, return_dict=False)  # as the pipelines call it
    return stop, out, model_output, sample


def test_latest_takes_the_prediction_a_scheduler_reports_and_keeps_its_signature():
    from diffusers import EulerAncestralDiscreteScheduler

    scheduler = EulerAncestralDiscreteScheduler()
    latest = Latest()
    assert "generator" in inspect.signature(scheduler.step).parameters
    stop, out, _, _ = _stepped(scheduler, latest)
    assert "generator" in inspect.signature(scheduler.step).parameters  # pipelines pass it when step takes it
    assert isinstance(out, tuple) and len(out) == 2
    assert latest.estimate() is out[1]  # pred_original_sample
    stop()
    assert "step" not in vars(scheduler)  # the class's own step again


def test_latest_takes_a_multistep_solvers_x0_model_output():
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")
    latest = Latest()
    _stepped(scheduler, latest)
    assert latest.estimate() is scheduler.model_outputs[-1]


def test_latest_computes_the_flow_matching_estimate():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    latest = Latest()
    _, _, velocity, sample = _stepped(scheduler, latest)
    expected = sample - scheduler.sigmas[0] * velocity  # x0 = x - sigma * v at the sigma of the first step
    assert torch.allclose(latest.estimate(), expected, atol=1e-6)


def test_latest_falls_back_on_the_loops_latents():
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(skip_prk_steps=True)
    latest = Latest()
    _stepped(scheduler, latest)
    latest.latents = marker = torch.zeros(1, 4, 8, 8)
    assert latest.estimate() is marker
    assert Latest().images() == []  # nothing ran: nothing to decode
