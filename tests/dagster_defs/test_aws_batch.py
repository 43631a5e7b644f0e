"""AWS Batch from Dagster (moto): each Batch job's status, its CloudWatch log lines and
its job id appear inside the Dagster run; a failed job fails the asset with its reason."""

from typing import Any

import dagster as dg
import pytest

from dagster_defs.assets.common import fail_if_any, node_metadata
from dagster_defs.execution import run_pipeline
from dagster_defs.resources import PipecraftBackend
from pipecraft.backends.aws_batch import AwsBatchBackend
from starrynight.pipelines import well_pipeline
from tests.conftest import BATCH_QUEUE, BATCH_REGION, write_batch_log

WS = "s3://bucket/ws"


@pytest.fixture
def batch(moto_batch: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    original = AwsBatchBackend.run

    def run_and_log(self: AwsBatchBackend, pipeline: Any):
        # moto finishes jobs at submission without running them: write what the
        # container would have logged to each job's CloudWatch stream.
        handle = original(self, pipeline)
        ids = [s.job_id for s in handle.submissions]
        for job in moto_batch.describe_jobs(jobs=ids)["jobs"]:
            write_batch_log(job["container"]["logStreamName"], [f"hello from {job['jobName']}"])
        return handle

    monkeypatch.setattr(AwsBatchBackend, "run", run_and_log)
    return moto_batch


@dg.asset
def batch_well(context: dg.AssetExecutionContext, backend: PipecraftBackend):
    pipeline = well_pipeline(
        WS, "Plate1", "A1", backend.runner(), ["corrected_cp", "aligned_sbs", "segmentation"]
    )
    outcome = run_pipeline(context, backend, pipeline, WS)
    fail_if_any(outcome, "batch well")
    return dg.MaterializeResult(metadata=node_metadata(outcome, list(outcome.states)))


def _backend() -> PipecraftBackend:
    return PipecraftBackend(
        kind="aws_batch",
        job_queue=BATCH_QUEUE,
        image="repo/starrynight:1",
        region=BATCH_REGION,
        poll_seconds=0.05,
    )


def test_batch_jobs_status_and_logs_are_relayed_into_the_run(batch, instance) -> None:
    result = dg.materialize([batch_well], resources={"backend": _backend()}, instance=instance)
    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    for node in ("corrected_cp-Plate1-A1", "aligned_sbs-Plate1-A1", "segmentation-Plate1-A1"):
        done = [m for m in messages if m.startswith(f"{node}: succeeded (job ")]
        assert done, node
        assert "hello from " in done[0]
    md = result.asset_materializations_for_node("batch_well")[0].metadata
    job_ids = {k: v.value for k, v in md.items() if k.startswith("job ")}
    assert len(job_ids) == 3
    submitted = batch.describe_jobs(jobs=list(job_ids.values()))["jobs"]
    assert {j["container"]["command"][0] for j in submitted} == {"starrynight"}


def test_failed_batch_job_fails_the_asset_with_its_reason(batch, instance, monkeypatch) -> None:
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    result = dg.materialize(
        [batch_well], resources={"backend": _backend()}, instance=instance, raise_on_error=False
    )
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "batch well:" in failure.step_failure_data.error.message
    assert "job " in failure.step_failure_data.error.message
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any(m.startswith("corrected_cp-Plate1-A1: failed") for m in messages)
