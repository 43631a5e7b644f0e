"""The code location: ``dagster_defs.definitions:defs``.

The project comes from the environment (see :mod:`dagster_defs.resources`), so the same
code location serves any project; run one Dagster instance (``DAGSTER_HOME``) per
project. Runs execute in process: each run is one or a few steps, and the parallel work
inside a step is fanned out by the pipecraft backend, so a process per step would only
add start-up time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from dagster_defs.assets import all_asset_checks, all_assets
from dagster_defs.resources import build_resources, load_settings
from dagster_defs.sensors import TICK_SECONDS, make_automation_sensor, make_new_plate_sensor


def build_defs(settings: Mapping[str, Any] | None = None) -> dg.Definitions:
    """Definitions for the project in ``settings`` (default: from the environment)."""
    settings = load_settings() if settings is None else settings
    resources = build_resources(settings)
    tick = int(settings.get("tick_seconds") or TICK_SECONDS)
    return dg.Definitions(
        assets=all_assets(),
        asset_checks=all_asset_checks(),
        sensors=[make_new_plate_sensor(tick), make_automation_sensor(tick)],
        resources=resources,
        executor=dg.in_process_executor,
    )


defs = build_defs()
