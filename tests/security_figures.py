"""Figures the security suites record for ``scripts/security_report.py`` (inputs tried, leaks, executions).

``record(suite, **figures)`` adds integer counts to ``$WEBUI_SECURITY_FIGURES/<suite>.json``, the
report's convention (nothing happens without the variable, so a normal test run writes nothing).
Names starting with ``max_`` keep the largest value instead of a sum.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "WEBUI_SECURITY_FIGURES"


def record(suite: str, **figures: int) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    path = Path(folder) / f"{suite}.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for name, value in figures.items():
        value = int(value)
        data[name] = max(data.get(name, value), value) if name.startswith("max_") else data.get(name, 0) + value
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
