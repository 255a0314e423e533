"""Extensions through the real engine and queue: the hooks change what users get, and a broken one does not."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from tests.app_services import tmp_services
from webui.generation.requests import GenerationRequest
from webui.generation.service import DONE, FAILED
from webui.models.demo import demo_checkpoint_name, write_demo_models

HOOKED = """
from webui.hooks import hookimpl

@hookimpl
def webui_before_job(request):
    if "refuse me" in request.prompt:
        from webui.hooks import JobRefused
        raise JobRefused("this extension refuses prompts that ask for it")
    return request.replace(prompt=request.prompt + ", hooked")

@hookimpl
def webui_step(event):
    if event.step == event.total_steps:
        return event.latents * 0.0  # the last step's latents decide the image: an all-grey one

@hookimpl
def webui_image(event):
    return event.image.transpose(0)  # mirror left-right

@hookimpl
def webui_before_save(event):
    return {"Hooked": "yes", "Steps": "999"}  # a core key is never replaced
"""

BROKEN = """
def webui_step(event):
    raise RuntimeError("boom in step")

def webui_image(event):
    raise RuntimeError("boom in image")
"""


def write_extension(root, name: str, code: str) -> None:
    folder = root / "ext" / name
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(f'name = "{name}"\nversion = "1.0"\n')
    (folder / "__init__.py").write_text(textwrap.dedent(code))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks")
    write_demo_models(root / "models", ("sd15",))
    return root


@pytest.fixture
def with_extension(root, tmp_path):
    """``with_extension(name, code)``: the app with that extension installed and its worker running."""
    started = []

    def build(name: str, code: str):
        write_extension(tmp_path, name, code)
        (tmp_path / "models").symlink_to(root / "models")
        services = tmp_services(tmp_path)
        services.generation.start()
        started.append(services)
        return services

    yield build
    for services in started:
        services.generation.stop()


def run(services, **fields):
    fields = {"prompt": "a cube", "seed": 3, "steps": 3, "width": 64, "height": 64, "save_images": True, **fields}
    job = services.generation.submit(GenerationRequest(sd_model_checkpoint=demo_checkpoint_name("sd15"), **fields))
    assert job.wait(120)
    return job


def test_hooks_change_request_latents_image_and_infotext(with_extension):
    services = with_extension("hooked", HOOKED)
    job = run(services)
    assert job.state == DONE, job.error
    text = job.result.infotexts[0]
    assert text.startswith("a cube, hooked")
    assert "Hooked: yes" in text and "Steps: 3," in text and "999" not in text
    # the step hook zeroes the final latents, so the seed no longer matters
    other = run(services, seed=4)
    assert np.array_equal(np.asarray(job.result.images[0]), np.asarray(other.result.images[0]))
    refused = run(services, prompt="please refuse me")
    assert refused.state == FAILED and "refuses prompts" in refused.error


def test_a_failing_extension_is_reported_and_the_job_goes_on(with_extension):
    services = with_extension("broken", BROKEN)
    job = run(services)
    assert job.state == DONE, job.error
    assert len(job.result.images) == 1
    ext = services.extensions.get("broken")
    assert "boom" in (ext.error or "")
