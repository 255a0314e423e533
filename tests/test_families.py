"""The family adapters: one module per family in webui/families, one registry, and no family id anywhere else."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from webui.families.base import TASKS, TEXT_ENCODERS, FamilyAdapter
from webui.families.registry import BUILTIN, FALLBACK_FAMILY, best_match, default_families

WEBUI = Path(__file__).resolve().parent.parent / "webui"
FAMILY_IDS = ("sd15", "sd2", "sdxl", "sdxl_refiner", "sd3", "sd35_medium", "sd35_large")
# The check of issue 14, as a command:
#   grep -rnE "\"(sd15|sd2|sdxl|sdxl_refiner|sd3|sd35_medium|sd35_large)\"|'(sd15|...)'" webui | grep -v ^webui/families/
FAMILY_ID_LITERAL = re.compile(r"""(["'])(""" + "|".join(FAMILY_IDS) + r""")\1""")


def test_no_family_id_literal_outside_the_families_package():
    found = []
    for path in sorted(WEBUI.rglob("*.py")):
        if "families" in path.relative_to(WEBUI).parts[:1]:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FAMILY_ID_LITERAL.search(line):
                found.append(f"{path.relative_to(WEBUI.parent)}:{number}: {line.strip()}")
    assert not found, "family ids named outside webui/families (ask the FamilyAdapter instead):\n" + "\n".join(found)


def test_the_check_finds_a_family_id():
    assert FAMILY_ID_LITERAL.search('if family.id == "sdxl":')
    assert FAMILY_ID_LITERAL.search("GROUPS = {'sd3': 1}")
    assert not FAMILY_ID_LITERAL.search('name = "sdxl-turbo"') and not FAMILY_ID_LITERAL.search("sd15 in a comment")


def test_registry_holds_every_family_once_in_order():
    families = default_families()
    assert families.names() == list(FAMILY_IDS)
    assert families is not default_families()  # a fresh registry each call
    assert FALLBACK_FAMILY in families


def test_the_old_module_re_exports_the_adapters():
    from webui.models import families as old

    assert old.FamilySpec is FamilyAdapter
    assert old.default_families().names() == list(FAMILY_IDS)
    assert old.TEXT_ENCODERS is TEXT_ENCODERS


@pytest.mark.parametrize("family", BUILTIN, ids=lambda f: f.id)
def test_each_family_is_complete(family):
    assert family.sampler_kind in ("noise", "flow")
    assert set(family.pipelines) == set(TASKS)
    assert family.pipelines["txt2img"] in family.folder_classes
    parts = family.file_parts
    assert family.denoiser_component in parts and "vae" in parts
    assert set(family.text_encoders) <= set(parts)
    assert all(slot in TEXT_ENCODERS for slot in family.text_encoders)
    assert family.conditioning is not None
    assert family.preview_factors is not None and len(family.preview_factors[0]) == family.latent_channels
    assert family.accepts_lora_group(family.lora_group) or family.lora_accepts
    assert family.scheduler_config()["_class_name"]


@pytest.mark.parametrize("family", BUILTIN, ids=lambda f: f.id)
def test_each_family_lives_in_its_own_module(family):
    module = importlib.import_module(type(family).__module__)
    assert module.__name__.startswith("webui.families.")
    assert Path(module.__file__).stat().st_size < 24_000  # one small module per family


def test_families_are_frozen_and_replaceable():
    sd15 = default_families().get("sd15")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sd15.label = "x"  # type: ignore[misc]
    other = dataclasses.replace(sd15, id="my_sd15")
    assert type(other) is type(sd15) and other.id == "my_sd15" and other.conditioning is sd15.conditioning


def test_best_match_takes_the_most_specific_then_the_first_registered():
    families = default_families()
    scores = {"sd15": 10, "sd2": 20, "sdxl": 20}
    assert best_match(lambda f: scores.get(f.id, 0), families).id == "sd2"
    assert best_match(lambda f: 0, families) is None


def test_behaviour_that_used_to_branch_on_ids():
    f = default_families()
    assert [fid for fid in FAMILY_IDS if f.get(fid).takes_size_conditioning] == ["sdxl", "sdxl_refiner"]
    assert f.get("sdxl").accepts_refiner(f.get("sdxl_refiner")) and f.get("sdxl").accepts_refiner(f.get("sdxl"))
    assert not f.get("sd15").refiners and not f.get("sdxl").accepts_refiner(f.get("sd3"))
    assert [fid for fid in FAMILY_IDS if f.get(fid).applies_memory_mode("drop_t5")] == ["sd3", "sd35_medium", "sd35_large"]
    assert f.get("sd2").upcast_attention and not f.get("sd15").upcast_attention
    assert f.get("sd35_large").accepts_lora_group("sd3") and not f.get("sd35_large").accepts_lora_group("sdxl")
    assert f.get("sdxl_refiner").pipeline_for(_Record(9)) == "StableDiffusionXLInpaintPipeline"
    assert f.get("sd3").pipeline_for(_Record(16)) == "StableDiffusion3Pipeline"


@dataclasses.dataclass(frozen=True)
class _Record:
    in_channels: int

    @property
    def inpaint(self) -> bool:
        return self.in_channels == 9
