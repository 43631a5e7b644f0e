"""When assets materialise by themselves: after their upstream data changed.

``follow_upstream()`` is Dagster's ``eager()`` condition except that an upstream
materialisation counts only when it changed the upstream *data version*: re-indexing a
plate whose files did not change, or re-validating an unchanged experiment, starts
nothing downstream, while a new SBS cycle (new index rows for that plate) re-runs only
that plate's partitions. New partitions (a new plate or well) still start as soon as
their upstream exists (and not before: an asset whose upstream partitions do not exist yet
waits).
"""

from __future__ import annotations

import functools
import operator

import dagster as dg

from starrynight import registry


def gate_assets() -> list[dg.AssetKey]:
    """The QC report assets whose blocking checks are gates (registry group ``qc``)."""
    return [dg.AssetKey(s.name) for s in registry.STEPS if s.group == "qc"]


def follow_upstream(*, held_by_blocking_checks: bool = True) -> dg.AutomationCondition:
    """Eager materialisation driven by upstream data-version changes.

    Parameters
    ----------
    held_by_blocking_checks : bool
        Wait until every upstream blocking check passed (the gates, the geometry, the
        merge's minimum match rate). A report *about* those checks (the after-merge QC
        report) passes False: a well below the minimum is what its reviewer must see.
    """
    changed = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed() | dg.AutomationCondition.will_be_requested()
    ).with_label("any_deps_changed")
    parts = [
        dg.AutomationCondition.in_latest_time_window(),
        (dg.AutomationCondition.newly_missing() | changed).since_last_handled(),
        ~dg.AutomationCondition.any_deps_missing(),
        # ...and some upstream partition exists (or is requested in this tick): a plate's
        # gene summary maps onto the plate's wells, none of which exist before its index
        # ran (vacuously "no deps missing": the daemon would start it, and fail it, with
        # the plate run).
        dg.AutomationCondition.any_deps_match(
            ~dg.AutomationCondition.missing() | dg.AutomationCondition.will_be_requested()
        ).with_label("any_deps_present"),
    ]
    if held_by_blocking_checks:
        # ...and no upstream blocking check failed (a well the geometry could not place,
        # a merge below the minimum match rate stops what follows it).
        parts.append(dg.AutomationCondition.all_deps_blocking_checks_passed())
    parts += [
        # ...and no QC gate upstream is made again in this tick: Dagster counts a check
        # about to run as passing, but a new report closes its gate (its approval was of
        # the previous pictures), and what follows the gate is in other runs (plate x
        # well), which the check could not stop.
        ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
        .allow(dg.AssetSelection.assets(*gate_assets()))
        .with_label("no_gate_report_requested"),
        ~dg.AutomationCondition.any_deps_in_progress(),
        ~dg.AutomationCondition.in_progress(),
    ]
    return functools.reduce(operator.and_, parts).with_label("follow_upstream")
