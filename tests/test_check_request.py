"""check_request: every check of a request, once, and what it resolves (no model is loaded for it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from tests.app_services import tmp_services
from webui.generation.check import CheckContext, UnknownName, check_request, next_checkpoint
from webui.generation.requests import GenerationRequest, Limits, RequestError
from webui.generation.samplers import BuiltinSamplers, SamplerTable
from webui.models.catalog import ModelCatalog
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.models.demo_lora import demo_lora_name
from webui.models.families import default_families

SD15, SD3 = demo_checkpoint_name("sd15"), demo_checkpoint_name("sd3")
FAMILIES = default_families()


class CountingCatalog:
    """The catalog, counting the look-ups by name (each name a check uses is looked up once)."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog, self.finds = catalog, []

    def find(self, name: str, kind: str = "checkpoint"):
        self.finds.append((kind, name))
        return self.catalog.find(name, kind=kind)

    def usable(self, kind: str = "checkpoint"):
        return self.catalog.usable(kind)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check") / "models"
    write_demo_models(root, ("sd15", "sd3"), loras=True)
    (root / "VAE").mkdir(exist_ok=True)
    return root


@pytest.fixture
def context(models) -> CheckContext:
    catalog = ModelCatalog(models)
    catalog.refresh()
    samplers = SamplerTable(samplers=[])
    BuiltinSamplers().webui_register_samplers(samplers)
    return CheckContext(Limits(), CountingCatalog(catalog), samplers, FAMILIES, default_model=SD15)


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a cube", **fields})


def test_it_resolves_what_the_engine_needs(context):
    lora = demo_lora_name("sd15").removesuffix(".safetensors")
    checked = check_request(request(prompt=f"a cube <lora:{lora}:0.7>", negative_prompt="blur"), context)
    assert checked.model.name == SD15 and checked.family.id == "sd15" and checked.complete
    assert (checked.prompt, checked.negative) == ("a cube ", "blur")
    assert [(tag.name, tag.weight, entry.name) for tag, entry in checked.loras] == [(lora, 0.7, demo_lora_name("sd15"))]
    assert (checked.sampler.spec.name, checked.sampler.schedule.name) == ("DPM++ 2M", "Karras")
    assert checked.hires_sampler is checked.sampler
    assert (checked.width, checked.height, checked.steps, checked.cfg) == (512, 512, 20, 7.0)
    assert context.catalog.finds == [("checkpoint", SD15), ("lora", lora)]  # each name once


def test_img2img_takes_the_init_images_size_rounded_to_8(context):
    checked = check_request(request(task="img2img", init_image=Image.new("RGB", (100, 70))), context)
    assert (checked.width, checked.height) == (96, 64)


def test_a_sampler_the_family_cannot_run_falls_back_with_a_warning(context):
    checked = check_request(request(sd_model_checkpoint=SD3, sampler_name="Euler a"), context)
    assert checked.family.id == "sd3" and checked.sampler.spec.name == "Euler"
    assert any("Euler a" in w for w in checked.warnings)


def test_hires_uses_the_first_pass_sampler_unless_asked(context):
    hires = {"enable_hr": True, "denoising_strength": 0.5, "width": 512, "height": 512}
    same = check_request(request(**hires), context)
    assert same.hires_sampler is same.sampler
    other = check_request(request(**hires, hr_sampler_name="Euler", hr_prompt="sharp"), context)
    assert other.hires_sampler.spec.name == "Euler" and other.hr_prompt == "sharp" and other.hr_negative is None


def test_the_loaded_model_wins_when_the_request_names_none(context):
    catalog = context.catalog.catalog
    sd3 = catalog.find(SD3)
    loaded = replace(context, current=sd3, current_family=FAMILIES.get("sd3"))
    assert check_request(request(), loaded).model == sd3
    assert next_checkpoint(replace(context, default_model="")) == catalog.usable("checkpoint")[0]
    assert next_checkpoint(replace(context, default_model="not-installed")) == catalog.usable("checkpoint")[0]


@pytest.mark.parametrize(
    "fields, field, kind",
    [
        ({"sd_model_checkpoint": "missing"}, "sd_model_checkpoint", "checkpoint"),
        ({"sd_vae": "missing"}, "sd_vae", "vae"),
        ({"prompt": "<lora:missing:1>"}, "prompt", "lora"),
        ({"negative_prompt": "<lora:missing:1>"}, "negative_prompt", "lora"),
        ({"sampler_name": "No Such Sampler"}, "sampler_name", "sampler"),
        ({"refiner_checkpoint": "missing"}, "refiner_checkpoint", "checkpoint"),
    ],
)
def test_an_unknown_name_is_refused_with_the_valid_ones(context, fields, field, kind):
    with pytest.raises(UnknownName) as err:
        check_request(request(**fields), context)
    assert (err.value.field, err.value.kind) == (field, kind)
    assert err.value.valid is not None


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"width": 100}, "width"),
        ({"task": "inpaint", "init_image": Image.new("RGB", (64, 64)), "mask": Image.new("L", (64, 64))}, "mask"),
        ({"task": "img2img", "init_image": Image.new("RGB", (64, 64)), "subseed_strength": 0.5}, "subseed_strength"),
        ({"enable_hr": True, "width": 2048, "height": 2048, "hr_scale": 4.0}, "hr_scale"),
    ],
)
def test_a_field_the_app_cannot_use_is_refused(context, fields, field):
    with pytest.raises(RequestError) as err:
        check_request(request(**fields), context)
    assert err.value.field == field and not isinstance(err.value, UnknownName)


def test_no_checkpoint_installed(tmp_path, context):
    empty = ModelCatalog(tmp_path)
    empty.refresh()
    with pytest.raises(RequestError, match="no checkpoint is installed"):
        check_request(request(), replace(context, catalog=empty, default_model=""))


def test_a_checkpoint_whose_family_is_known_once_loaded_gets_its_names_checked(context):
    entry = context.catalog.catalog.find(SD15)
    unknown = replace(entry, record=replace(entry.record, family=None))

    class Catalog(CountingCatalog):
        def find(self, name, kind="checkpoint"):
            return unknown if kind == "checkpoint" else super().find(name, kind)

    ckpt = replace(context, catalog=Catalog(context.catalog.catalog))
    checked = check_request(request(sd_model_checkpoint=SD15, sampler_name="Euler"), ckpt)
    assert not checked.complete and checked.sampler is None
    with pytest.raises(UnknownName):
        check_request(request(sd_model_checkpoint=SD15, sampler_name="No Such Sampler"), ckpt)


def test_the_engine_checks_a_job_once(tmp_path, models, monkeypatch):
    from webui.generation import engine as engine_module
    from webui.generation.service import Job, JobContext

    (tmp_path / "models").symlink_to(models)
    services = tmp_services(tmp_path, preview_every=0)
    calls = []
    real = engine_module.check_request

    def counted(req, ctx):
        calls.append(req)
        return real(req, ctx)

    monkeypatch.setattr(engine_module, "check_request", counted)
    req = GenerationRequest(prompt="a cube", steps=2, width=64, height=64, sd_model_checkpoint=SD15, save_images=False)
    result = services.engine.run(req, JobContext(Job(req, "test", 1), preview_every=0))
    assert len(result.images) == 1 and len(calls) == 1


def test_always_on_scripts_are_checked_by_the_extension_that_owns_them(context):
    from webui.hooks import JobRefused

    seen = []

    def scripts(name, args, req):
        seen.append((name, args))
        if name != "units":
            return False, None
        if args == ["bad"]:
            raise JobRefused("unit 0 has no image", field="alwayson_scripts")
        return True, tuple(str(a).upper() for a in args)

    ctx = replace(context, scripts=scripts)
    checked = check_request(request(alwayson_scripts={"units": ["a", "b"]}), ctx)
    assert checked.request.alwayson_scripts == {"units": ("A", "B")} and seen == [("units", ["a", "b"])]
    with pytest.raises(RequestError, match="units: unit 0 has no image") as refused:
        check_request(request(alwayson_scripts={"units": ["bad"]}), ctx)
    assert refused.value.field == "alwayson_scripts"
    with pytest.raises(RequestError, match="always on script other not found"):
        check_request(request(alwayson_scripts={"other": []}), ctx)
    with pytest.raises(RequestError, match="always on script units not found"):  # no extensions at all
        check_request(request(alwayson_scripts={"units": []}), context)
