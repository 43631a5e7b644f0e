"""The sample's steps through Dagster on the Slurm backend (a real single-node cluster).

Every asset's pipeline is submitted with sbatch; the graph ends with every partition
materialised and each node's Slurm job id in the asset's metadata.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dagster_defs.definitions import build_defs
from dagster_defs.driver import drive
from tests.dagster_defs.helpers import age, make_sample, settings
from tests.pipecraft.test_slurm import slurm  # noqa: F401 - the cluster fixture

WELL_ASSETS = ["corrected_cp", "aligned_sbs", "segmentation", "barcode_calls", "cell_features"]


@pytest.mark.slow
def test_sample_graph_runs_on_slurm(slurm: None, tmp_path: Path, instance) -> None:  # noqa: F811
    root = make_sample(tmp_path / "out", ("Plate1",), wells=("A1",), size=96, sites=1, cycles=3)
    age(root)
    ws = tmp_path / "ws"
    options = {"poll_seconds": 0.2, "partition": "debug", "workdir": str(tmp_path / "slurm")}
    defs = build_defs(settings(root, ws, backend="slurm", backend_options=options))
    result, _, _ = drive(defs, instance)
    assert [r.error for r in result.failed] == []
    for key in WELL_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(key)) == {"Plate1|A1"}, key
    assert instance.get_materialized_partitions(dg.AssetKey("gene_summary")) == {"Plate1"}
    # the nodes ran as Slurm jobs: their scripts and logs are in the Slurm work folder
    logs = {p.name for p in (tmp_path / "slurm" / "logs").iterdir()}
    assert "segmentation-Plate1-A1.log" in logs
    text = (tmp_path / "slurm" / "logs" / "segmentation-Plate1-A1.log").read_text()
    assert "=== pipecraft: attempt 1 as slurm job " in text
    # ...and the asset's metadata names each node's Slurm job
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("segmentation"), asset_partitions=["Plate1|A1"]
        ),
        limit=1,
    ).records[0]
    md = record.asset_materialization.metadata
    jobs = {k: v.value for k, v in md.items() if k.startswith("job ")}
    assert jobs and all(str(v).isdigit() for v in jobs.values()), md
