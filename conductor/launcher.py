"""Executes a Conductor run plan as Dagster runs; started by Conductor as a subprocess.

``python -m conductor.launcher PLAN.json`` with the project's environment and
``DAGSTER_HOME``. Each step is one Dagster run with the run id Conductor chose, so
Conductor can read its status and events from the instance's run storage. The first
failing step ends the plan: later steps depend on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def execute(plan_path: str) -> int:
    """Run every step of the plan; 0 when all succeeded, 1 otherwise."""
    import dagster as dg

    from conductor.graph import load_definitions

    plan = json.loads(Path(plan_path).read_text())
    defs = load_definitions(plan["module"])
    instance = dg.DagsterInstance.get()
    for def_name, keys in plan["dynamic_partitions"].items():
        existing = set(instance.get_dynamic_partitions(def_name))
        new = [k for k in keys if k not in existing]
        if new:
            instance.add_dynamic_partitions(def_name, new)
    job = defs.resolve_implicit_global_asset_job_def()
    for step in plan["steps"]:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(a) for a in step["assets"]],
            partition_key=step["partition"],
            run_id=step["run_id"],
            tags={"conductor/run": str(plan["conductor_run"])},
            raise_on_error=False,
        )
        if not result.success:
            print(f"step {step['run_id']} failed; stopping", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(execute(sys.argv[1]))
