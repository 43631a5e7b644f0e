"""When assets materialise by themselves: after their upstream data changed.

``follow_upstream()`` is Dagster's ``eager()`` condition except that an upstream
materialisation counts only when it changed the upstream *data version*: re-indexing a
plate whose files did not change, or re-validating an unchanged experiment, starts
nothing downstream, while a new SBS cycle (new index rows for that plate) re-runs only
that plate's partitions. New partitions (a new plate or well) still start as soon as
their upstream exists.
"""

from __future__ import annotations

import dagster as dg


def follow_upstream() -> dg.AutomationCondition:
    """Eager materialisation driven by upstream data-version changes."""
    changed = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.data_version_changed() | dg.AutomationCondition.will_be_requested()
    ).with_label("any_deps_changed")
    return (
        dg.AutomationCondition.in_latest_time_window()
        & (dg.AutomationCondition.newly_missing() | changed).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("follow_upstream")
