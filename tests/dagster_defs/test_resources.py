"""Project configuration from a file and the environment."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from dagster_defs.resources import (
    ConfigError,
    PipecraftBackend,
    StarryNightProject,
    build_resources,
    load_settings,
)
from pipecraft import AwsBatchBackend, LocalBackend, SnakemakeBackend


def test_file_then_environment_override(tmp_path: Path) -> None:
    f = tmp_path / "project.json"
    f.write_text(
        json.dumps(
            {
                "dataset_uri": "s3://bucket/ds",
                "workspace_uri": "/ws",
                "backend": "snakemake",
                "backend_options": {"max_workers": 3},
                "qc": {"min_assignment_rate": 0.5},
            }
        )
    )
    s = load_settings({"STARRYNIGHT_PROJECT_FILE": str(f), "STARRYNIGHT_WORKSPACE_URI": "/other"})
    assert s["dataset_uri"] == "s3://bucket/ds" and s["workspace_uri"] == "/other"
    res = build_resources(s)
    assert res["project"].qc.min_assignment_rate == 0.5
    assert isinstance(res["backend"].build("/other"), SnakemakeBackend)


def test_defaults_are_local(tmp_path: Path) -> None:
    s = load_settings({"STARRYNIGHT_DATASET_URI": "/d", "STARRYNIGHT_WORKSPACE_URI": str(tmp_path)})
    backend = build_resources(s)["backend"]
    built = backend.build(str(tmp_path))
    assert isinstance(built, LocalBackend)
    assert built.workdir == tmp_path / ".pipecraft" / "local"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"dataset": "x"}', "unknown field(s) ['dataset']"),
        ('{"backend": "pbs"}', "backend 'pbs' is unknown"),
        ('{"resources": {"segmentaton": {}}}', "resources.segmentaton: unknown step"),
        ('{"backend_options": {"queue": "q"}}', "backend_options: unknown field(s) ['queue']"),
        (
            '{"dataset_uri": "/d", "workspace_uri": "/w", "qc": {"min_match_rate": 0.9}}',
            "qc: min_match_rate 0.9 is above warn_match_rate 0.8",
        ),
    ],
)
def test_bad_project_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "p.json"
    f.write_text(content)
    with pytest.raises(ConfigError) as exc:
        load_settings({"STARRYNIGHT_PROJECT_FILE": str(f)})
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_missing_project_file_and_unconfigured_project() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"STARRYNIGHT_PROJECT_FILE": "/nonexistent/p.json"})
    with pytest.raises(dg.Failure, match="STARRYNIGHT_DATASET_URI and STARRYNIGHT_WORKSPACE_URI"):
        StarryNightProject().require()


def test_aws_batch_needs_a_queue_and_uses_the_image_entry_point() -> None:
    with pytest.raises(dg.Failure, match="job_queue"):
        PipecraftBackend(kind="aws_batch").build("s3://b/ws")
    b = PipecraftBackend(kind="aws_batch", job_queue="q", image="repo/sn:1", region="us-east-1")
    assert isinstance(b.build("s3://b/ws"), AwsBatchBackend)
    runner = b.runner({"X": "1"})
    assert runner.argv == ("starrynight",) and runner.image == "repo/sn:1"
