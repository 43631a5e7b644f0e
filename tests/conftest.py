"""Fixtures shared by the whole suite."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from starrynight.sample import SampleResult, SampleSpec, generate

SMALL_SPEC = SampleSpec(size=256, wells=("A1", "B02"), sites=3, cycles=3, n_barcodes=12, seed=3)

#: Region and job queue of the :func:`moto_batch` fixture.
BATCH_REGION = "us-east-1"
BATCH_QUEUE = "test-q"
#: The CloudWatch log group AWS Batch writes job output to.
BATCH_LOG_GROUP = "/aws/batch/job"


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleResult:
    """A small sample dataset (1 plate, 2 wells, 3 sites, 3 cycles, 256 px), made once.

    Read-only: tests that write must copy it or use a workspace of their own.
    """
    out = tmp_path_factory.mktemp("small_sample")
    return generate(SMALL_SPEC, out)


@pytest.fixture
def repo_root() -> Path:
    """The repository's top folder."""
    return Path(__file__).resolve().parents[1]


@pytest.fixture
def moto_batch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """AWS mocked by moto, with an enabled AWS Batch job queue :data:`BATCH_QUEUE`.

    Yields the Batch client (region :data:`BATCH_REGION`). Moto's simple Batch (no
    Docker) ends every job at submission: succeeded, or failed when
    ``MOTO_SIMPLE_BATCH_FAIL_AFTER`` is set (cleared here so a test sets it itself).
    """
    # Imported here: most of the suite never touches AWS.
    import boto3
    from moto import mock_aws

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": BATCH_REGION,
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    with mock_aws(config={"batch": {"use_docker": False}}):
        iam = boto3.client("iam", region_name=BATCH_REGION)
        role = iam.create_role(RoleName="batch-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        batch = boto3.client("batch", region_name=BATCH_REGION)
        ce = batch.create_compute_environment(
            computeEnvironmentName="test-ce", type="UNMANAGED", serviceRole=role
        )["computeEnvironmentArn"]
        batch.create_job_queue(
            jobQueueName=BATCH_QUEUE,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
        )
        yield batch


def write_batch_log(stream: str, messages: Sequence[str]) -> None:
    """Write ``messages`` to a Batch job's CloudWatch log stream, inside :func:`moto_batch`.

    Moto runs no container, so a test writes what the job would have logged. The log
    group is created when missing, as Batch does on a job's first output.
    """
    import boto3

    logs = boto3.client("logs", region_name=BATCH_REGION)
    if not logs.describe_log_groups(logGroupNamePrefix=BATCH_LOG_GROUP)["logGroups"]:
        logs.create_log_group(logGroupName=BATCH_LOG_GROUP)
    logs.create_log_stream(logGroupName=BATCH_LOG_GROUP, logStreamName=stream)
    now = int(time.time() * 1000)  # CloudWatch drops events older than 14 days
    logs.put_log_events(
        logGroupName=BATCH_LOG_GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(messages)],
    )
