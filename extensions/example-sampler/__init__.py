# ruff: noqa: N999  (extension folders are named like the extension, with hyphens)
"""Example extension: a sampler and a setting.

Adds "Euler (trailing)": diffusers' EulerDiscreteScheduler with ``timestep_spacing="trailing"``
for noise-prediction models (SD 1.5, SDXL). The setting ``example_sampler_ancestral`` also adds
"Euler a (trailing)"; samplers are registered at start-up, so the setting applies after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.hooks import SettingSpec, hookimpl

SAMPLER = "Euler (trailing)"
ANCESTRAL = "Euler a (trailing)"
SETTING = "example_sampler_ancestral"


@hookimpl
def webui_settings() -> list[SettingSpec]:
    return [
        SettingSpec(
            name=SETTING,
            default=False,
            label=f'Also add "{ANCESTRAL}" (restart to apply)',
            section="Example sampler",
        )
    ]


@hookimpl
def webui_register_samplers(table: Any, options: Mapping[str, Any]) -> None:
    from webui.generation.samplers import AUTOMATIC, SamplerSpec

    trailing = {"timestep_spacing": "trailing"}
    table.register_sampler(
        SamplerSpec(
            name=SAMPLER,
            scheduler_class="EulerDiscreteScheduler",
            kwargs={**trailing, "interpolation_type": "linear"},
            default_schedule=AUTOMATIC,
            kind="noise",
            aliases=("euler_trailing",),
            schedules=(AUTOMATIC,),  # the spacing is the point: no other schedule types
        )
    )
    if options[SETTING]:
        table.register_sampler(
            SamplerSpec(
                name=ANCESTRAL,
                scheduler_class="EulerAncestralDiscreteScheduler",
                kwargs=trailing,
                default_schedule=AUTOMATIC,
                kind="noise",
                aliases=("euler_a_trailing",),
                schedules=(AUTOMATIC,),
                api_options={"uses_ensd": True},
            )
        )
