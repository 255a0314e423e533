"""Model families now live in ``webui.families`` (one adapter per family); this module re-exports the old names.

``FamilySpec`` is the ``FamilyAdapter`` base class: every field it had is still there.
"""

from __future__ import annotations

from webui.families.base import TASKS, TEXT_ENCODERS, TextEncoderSpec
from webui.families.base import FamilyAdapter as FamilySpec
from webui.families.registry import default_families

__all__ = ["TASKS", "TEXT_ENCODERS", "FamilySpec", "TextEncoderSpec", "default_families"]
