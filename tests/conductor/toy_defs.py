"""A tiny Dagster code location with the same env contract as ``dagster_defs``.

Conductor's run layer is tested against it until the real asset graph is used: three
assets, per plate and per plate x well, that write small files into the workspace.
``STARRYNIGHT_TOY_SLEEP`` (seconds) slows ``corrected_cp`` down so a test can cancel it;
``STARRYNIGHT_TOY_FAIL_WELL`` makes that well fail.
"""

import json
import os
import time
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext

plate = dg.DynamicPartitionsDefinition(name="plate")
well = dg.DynamicPartitionsDefinition(name="well")
plate_well = dg.MultiPartitionsDefinition({"plate": plate, "well": well})


def _workspace() -> Path:
    project_file = os.environ.get("STARRYNIGHT_PROJECT_FILE")
    if project_file:
        return Path(json.loads(Path(project_file).read_text())["workspace_uri"])
    return Path(os.environ["STARRYNIGHT_WORKSPACE_URI"])


@dg.asset(partitions_def=plate)
def inventory(context: AssetExecutionContext) -> None:
    """Count the dataset's files of the plate."""
    dataset = Path(os.environ["STARRYNIGHT_DATASET_URI"])
    n = sum(1 for p in dataset.rglob("*") if p.is_file() and context.partition_key in str(p))
    context.add_output_metadata({"files": n})


@dg.asset(partitions_def=plate, deps=[inventory])
def illum_cp(context: AssetExecutionContext) -> None:
    """Write a tiny PNG standing in for the illumination heat-map."""
    folder = _workspace() / "illum" / context.partition_key
    folder.mkdir(parents=True, exist_ok=True)
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a1b1c5d80000000049454e44ae426082"
    )
    (folder / f"{context.partition_key}_IllumDAPI.png").write_bytes(png)


# Like the real graph's well products, it declares the arm whose images it needs.
@dg.asset(partitions_def=plate_well, deps=[illum_cp], metadata={"starrynight/arms": "cp"})
def corrected_cp(context: AssetExecutionContext) -> None:
    """Write one text file per plate x well; optionally slow or failing."""
    keys = context.partition_key.keys_by_dimension
    if keys["well"] == os.environ.get("STARRYNIGHT_TOY_FAIL_WELL"):
        raise RuntimeError(f"well {keys['well']} fails on purpose")
    time.sleep(float(os.environ.get("STARRYNIGHT_TOY_SLEEP", "0")))
    folder = _workspace() / "images_corrected" / "painting" / f"{keys['plate']}-{keys['well']}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.txt").write_text("ok\n")


defs = dg.Definitions(assets=[inventory, illum_cp, corrected_cp])
