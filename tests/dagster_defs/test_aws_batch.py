"""AWS Batch from Dagster (moto): each Batch job's status, its CloudWatch log lines and
its job id appear inside the Dagster run; a failed job fails the asset with its reason."""

import time
from typing import Any

import boto3
import dagster as dg
import pytest
from moto import mock_aws

from dagster_defs.assets.common import fail_if_any, node_metadata
from dagster_defs.execution import run_pipeline
from dagster_defs.resources import PipecraftBackend
from pipecraft.backends.aws_batch import AwsBatchBackend
from starrynight.pipelines import well_pipeline

REGION = "us-east-1"
WS = "s3://bucket/ws"


@pytest.fixture
def batch(monkeypatch: pytest.MonkeyPatch):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    with mock_aws(config={"batch": {"use_docker": False}}):
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        client = boto3.client("batch", region_name=REGION)
        ce = client.create_compute_environment(
            computeEnvironmentName="sn-ce", type="UNMANAGED", serviceRole=role
        )["computeEnvironmentArn"]
        client.create_job_queue(
            jobQueueName="sn-q",
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
        )
        logs = boto3.client("logs", region_name=REGION)
        logs.create_log_group(logGroupName="/aws/batch/job")
        original = AwsBatchBackend.run

        def run_and_log(self: AwsBatchBackend, pipeline: Any):
            # moto finishes jobs at submission without running them: write what the
            # container would have logged to each job's CloudWatch stream.
            handle = original(self, pipeline)
            ids = [s.job_id for s in handle.submissions]
            for job in client.describe_jobs(jobs=ids)["jobs"]:
                stream = job["container"]["logStreamName"]
                logs.create_log_stream(logGroupName="/aws/batch/job", logStreamName=stream)
                logs.put_log_events(
                    logGroupName="/aws/batch/job",
                    logStreamName=stream,
                    logEvents=[
                        {
                            "timestamp": int(time.time() * 1000),
                            "message": f"hello from {job['jobName']}",
                        }
                    ],
                )
            return handle

        monkeypatch.setattr(AwsBatchBackend, "run", run_and_log)
        yield client


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
        job_queue="sn-q",
        image="repo/starrynight:1",
        region=REGION,
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
    job_ids = {k: v.value for k, v in md.items() if k.startswith("batch job ")}
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
