"""The AWS Batch backend against moto's Batch (no Docker: jobs finish at submission).

Moto's simple Batch marks every job succeeded, or failed when MOTO_SIMPLE_BATCH_FAIL_AFTER
is set. ``Recorder`` wraps the real (moto) client to record every call and, where a test
asks, to emulate what moto does not: a chosen job failing, a job failing because a job it
depends on failed (as Batch does), or jobs still queued when the run is cancelled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipecraft import (
    BackendConfigError,
    Command,
    NodeState,
    Parallel,
    Pipeline,
    PyFunction,
    Resources,
    RunStatus,
    Scatter,
    Seq,
)
from pipecraft.backends.aws_batch import CANCEL_REASON, AwsBatchBackend
from pipecraft.pipeline import DAG
from pipecraft.testing import DEMO_EXPECTED, demo_pipeline, write_text
from tests.conftest import BATCH_QUEUE, BATCH_REGION, write_batch_log


class Recorder:
    """A boto3 Batch client wrapper that records calls (and can emulate failures/queues)."""

    def __init__(
        self,
        client: Any,
        fail: tuple[str, ...] = (),
        queued: bool = False,
        oom: dict[str, int] | None = None,
    ) -> None:
        self._client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        # node -> memory (MB) it needs: below that its job fails with OutOfMemoryError
        self.oom = dict(oom or {})
        self.oom_ids: set[str] = set()
        self.queued = queued
        self.terminated: dict[str, str] = {}

    def calls_to(self, op: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.calls if name == op]

    def __getattr__(self, op: str) -> Any:
        method = getattr(self._client, op)

        def call(**kw: Any) -> Any:
            self.calls.append((op, kw))
            if op == "submit_job":
                return self._submit(method, kw)
            if op == "terminate_job":
                self.terminated[kw["jobId"]] = kw["reason"]
            resp = method(**kw)
            if op == "describe_jobs":
                for job in resp["jobs"]:
                    if job["jobId"] in self.oom_ids:
                        job["status"] = "FAILED"
                        job.setdefault("container", {})
                        job["statusReason"] = (
                            "OutOfMemoryError: Container killed due to memory usage"
                        )
                        job["container"]["exitCode"] = 137
            if op == "describe_jobs" and self.queued:
                for job in resp["jobs"]:
                    parent = job["jobId"].split(":")[0]
                    if parent in self.terminated:
                        job["status"], job["statusReason"] = "FAILED", self.terminated[parent]
                    else:
                        job["status"] = "RUNNABLE"
            return resp

        return call

    def _submit(self, method: Any, kw: dict[str, Any]) -> Any:
        deps = [d["jobId"] for d in kw.get("dependsOn", [])]
        dep_failed = bool(deps) and any(
            j["status"] == "FAILED" or j["jobId"] in self.oom_ids
            for j in self._client.describe_jobs(jobs=deps)["jobs"]
        )
        memory = next(
            int(r["value"])
            for r in kw["containerOverrides"]["resourceRequirements"]
            if r["type"] == "MEMORY"
        )
        oom = any(kw["jobName"].endswith(f"-{n}") and memory < m for n, m in self.oom.items())
        command = kw["containerOverrides"]["command"]
        if "arrayProperties" in kw and command[3:4] == ["--array"] and self.oom:
            # an array job: the child running an OOM node fails, and so the parent
            children = [n["name"] for n in json.loads(command[4])]
            resp = method(**kw)
            for i, n in enumerate(children):
                if memory < self.oom.get(n, 0):
                    self.oom_ids |= {f"{resp['jobId']}:{i}", resp["jobId"]}
            return resp
        if oom:
            os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"] = "0"
            try:
                resp = method(**kw)
            finally:
                del os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"]
            self.oom_ids.add(resp["jobId"])
            return resp
        if any(kw["jobName"].endswith(f"-{n}") for n in self.fail) or dep_failed:
            os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"] = "0"
            try:
                return method(**kw)
            finally:
                del os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"]
        return method(**kw)


def backend(client: Any, **kw: Any) -> AwsBatchBackend:
    kw.setdefault("image", "repo/starrynight:1")
    return AwsBatchBackend(
        BATCH_QUEUE, client=client, region=BATCH_REGION, poll_first=0.01, poll_max=0.05, **kw
    )


def states(handle) -> dict[str, str]:
    return {n: s.value for n, s in handle.node_states().items()}


def test_demo_pipeline_exact_submissions_and_results(moto_batch, tmp_path: Path) -> None:
    rec = Recorder(moto_batch, fail=("doomed",))
    p = demo_pipeline(tmp_path, python="python")
    h = backend(rec).run(p)
    assert h.wait(10) is RunStatus.FAILED
    assert states(h) == DEMO_EXPECTED

    subs = rec.calls_to("submit_job")
    prefix = f"demo-{h.run_id}-"
    names = [s["jobName"] for s in subs]
    assert names == [prefix + n for n in ("prepare", "work-0", "gather", "doomed", "after-doomed")]
    id_to_name = {s.job_id: s.name for s in h.submissions}
    deps = {s["jobName"]: [id_to_name[d["jobId"]] for d in s.get("dependsOn", [])] for s in subs}
    assert deps == {
        prefix + "prepare": [],
        prefix + "work-0": [prefix + "prepare"],
        prefix + "gather": [prefix + "work-0"],
        prefix + "doomed": [],
        prefix + "after-doomed": [prefix + "doomed"],
    }
    arrays = {s["jobName"]: s["arrayProperties"]["size"] for s in subs if "arrayProperties" in s}
    assert arrays == {prefix + "work-0": 3}
    nodes = p.compile().nodes
    by_name = {s["jobName"]: s for s in subs}
    assert by_name[prefix + "prepare"]["containerOverrides"]["command"] == list(
        nodes["prepare"].argv
    )
    array_cmd = by_name[prefix + "work-0"]["containerOverrides"]["command"]
    assert array_cmd[:4] == ["python", "-m", "pipecraft.run_node", "--array"]
    assert [n["name"] for n in json.loads(array_cmd[4])] == ["work-a", "work-b", "work-c"]
    for s in subs:
        assert s["jobQueue"] == BATCH_QUEUE
        assert s["retryStrategy"] == {"attempts": 1}
        assert s["containerOverrides"]["resourceRequirements"] == [
            {"type": "VCPU", "value": "1"},
            {"type": "MEMORY", "value": "1024"},
        ]

    # what Batch itself recorded
    work = moto_batch.describe_jobs(jobs=[by_name_id(h, prefix + "work-0")])["jobs"][0]
    assert work["arrayProperties"]["size"] == 3
    assert work["dependsOn"] == [{"jobId": by_name_id(h, prefix + "prepare")}]
    assert work["container"]["command"] == array_cmd
    doomed_id = by_name_id(h, prefix + "doomed")
    assert h.failures() == {"doomed": f"job {doomed_id} failed: no reason given by AWS Batch"}


def by_name_id(handle, name: str) -> str:
    return next(s.job_id for s in handle.submissions if s.name == name)


def test_every_job_failing_maps_to_failed_and_upstream_failed(
    moto_batch, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    h = backend(moto_batch).run(demo_pipeline(tmp_path))
    assert h.wait(10) is RunStatus.FAILED
    assert states(h) == {
        "prepare": "failed",
        "work-a": "upstream_failed",
        "work-b": "upstream_failed",
        "work-c": "upstream_failed",
        "gather": "upstream_failed",
        "doomed": "failed",
        "after-doomed": "upstream_failed",
    }
    assert sorted(h.failures()) == ["doomed", "prepare"]


def test_success_and_job_definition_is_registered_once(moto_batch, tmp_path: Path) -> None:
    rec = Recorder(moto_batch)
    p = Pipeline(
        "ok",
        Seq(
            Command(
                name="a",
                argv=["echo", "a b,c"],
                env={"K": "v"},
                resources=Resources(cpus=4, memory_mb=8000),
                retries=2,
            ),
            Command(name="b", argv=["true"], image="other:2"),
        ),
    )
    h = backend(rec).run(p)
    assert h.wait(10) is RunStatus.SUCCEEDED
    assert states(h) == {"a": "succeeded", "b": "succeeded"}
    a = rec.calls_to("submit_job")[0]
    assert a["containerOverrides"] == {
        "command": ["echo", "a b,c"],
        "environment": [{"name": "K", "value": "v"}],
        "resourceRequirements": [
            {"type": "VCPU", "value": "4"},
            {"type": "MEMORY", "value": "8000"},
        ],
    }
    assert a["retryStrategy"] == {
        "attempts": 3,
        # Batch retries everything but a kill for memory, which pipecraft resubmits bigger
        "evaluateOnExit": [
            {"onReason": "OutOfMemoryError*", "action": "EXIT"},
            {"onReason": "*", "action": "RETRY"},
        ],
    }
    assert backend(rec).run(p).wait(10) is RunStatus.SUCCEEDED
    images = sorted(
        c["containerProperties"]["image"] for c in rec.calls_to("register_job_definition")
    )
    assert images == ["other:2", "repo/starrynight:1"]  # one each, reused by the second run
    defs = {s["jobName"].split("-")[-1]: s["jobDefinition"] for s in rec.calls_to("submit_job")}
    assert defs["a"] != defs["b"]


def test_cancel_terminates_queued_jobs(moto_batch, tmp_path: Path) -> None:
    rec = Recorder(moto_batch, queued=True)
    h = backend(rec).run(demo_pipeline(tmp_path))
    assert h.status() is RunStatus.PENDING
    assert h.wait(0.05) is RunStatus.PENDING  # still queued: the wait times out
    h.cancel()
    terminated = [c["jobId"] for c in rec.calls_to("terminate_job")]
    assert sorted(terminated) == sorted(s.job_id for s in h.submissions)
    assert {c["reason"] for c in rec.calls_to("terminate_job")} == {CANCEL_REASON}
    # moto keeps the reason on the job, as Batch does
    for job in moto_batch.describe_jobs(jobs=terminated)["jobs"]:
        assert job["statusReason"] == CANCEL_REASON
    assert h.wait(5) is RunStatus.CANCELLED
    assert set(h.node_states().values()) == {NodeState.CANCELLED}
    assert h.failures() == {}


def test_wide_fan_in_uses_barrier_jobs(moto_batch, tmp_path: Path) -> None:
    rec = Recorder(moto_batch)
    p = Pipeline(
        "wide",
        Seq(
            Parallel(*[Command(name=f"p{i}", argv=["true"], image="x:1") for i in range(25)]),
            Command(name="end", argv=["true"]),
        ),
    )
    h = backend(rec).run(p)
    assert h.wait(10) is RunStatus.SUCCEEDED
    subs = rec.calls_to("submit_job")
    assert len(subs) == 25 + 2 + 1
    assert all(len(s.get("dependsOn", [])) <= 20 for s in subs)
    end = subs[-1]
    assert end["jobName"].endswith("-end") and len(end["dependsOn"]) == 2
    barriers = [s for s in subs if "barrier" in s["jobName"]]
    assert sorted(len(b["dependsOn"]) for b in barriers) == [5, 20]


def test_per_item_chains_use_n_to_n_array_dependencies(moto_batch, tmp_path: Path) -> None:
    rec = Recorder(moto_batch)

    def site(i: int) -> Seq:
        return Seq(
            Command(name=f"correct-{i}", argv=["true"]),
            Command(name=f"segment-{i}", argv=["true"]),
        )

    p = Pipeline(
        "chain",
        Seq(
            Command(name="illum", argv=["true"]),
            Scatter("site", range(3), site),
            Command(name="summary", argv=["true"]),
        ),
    )
    h = backend(rec).run(p)
    assert h.wait(10) is RunStatus.SUCCEEDED
    subs = {s["jobName"].split("-", 2)[2]: s for s in rec.calls_to("submit_job")}
    id_to_name = {s.job_id: s.name.split("-", 2)[2] for s in h.submissions}
    deps = {
        name: [(id_to_name[d["jobId"]], d.get("type")) for d in s.get("dependsOn", [])]
        for name, s in subs.items()
    }
    # site-0 is the scatter's first step (correct), site-1 its second (segment):
    # segment-k waits for correct-k only; illum and summary stay whole-job edges.
    assert deps == {
        "illum": [],
        "site-0": [("illum", None)],
        "site-1": [("site-0", "N_TO_N")],
        "summary": [("site-1", None)],
    }
    assert all(s.get("arrayProperties", {}).get("size", 3) == 3 for s in subs.values())


def test_unaligned_array_dependency_stays_whole_job() -> None:
    def item(i: int) -> Command:
        return Command(name=f"b-{i}", argv=["true"])

    # every b-k reads every a-k: not child-to-child, so a plain dependency on the array
    p = Pipeline(
        "cross",
        Seq(Scatter("a", range(3), lambda i: Command(name=f"a-{i}", argv=["true"])),
            Scatter("b", range(3), item)),
    )  # fmt: skip
    subs = backend(None).plan(p, "r1")
    b = next(s for s in subs if s.array_size and s.nodes[0].startswith("b-"))
    assert b.depends_on and b.n_to_n == set()


def test_large_scatter_is_staged_to_s3_and_runs_by_array_index(moto_batch, tmp_path: Path) -> None:
    boto3.client("s3", region_name=BATCH_REGION).create_bucket(Bucket="stage")
    p = Pipeline(
        "big",
        Scatter(
            "site",
            range(40),
            lambda i: PyFunction(
                name=f"site-{i}",
                func=write_text,
                kwargs={"path": str(tmp_path / f"site {i}, out.txt"), "text": f"site {i}"},
            ),
        ),
    )
    with pytest.raises(BackendConfigError, match="set staging_uri"):
        backend(moto_batch, max_inline_bytes=1000).run(p)
    assert moto_batch.list_jobs(jobQueue=BATCH_QUEUE)["jobSummaryList"] == []
    rec = Recorder(moto_batch)
    be = backend(rec, max_inline_bytes=1000, staging_uri="s3://stage/runs", python=sys.executable)
    h = be.run(p)
    assert h.wait(10) is RunStatus.SUCCEEDED
    (sub,) = rec.calls_to("submit_job")
    assert sub["arrayProperties"] == {"size": 40}
    cmd = sub["containerOverrides"]["command"]
    assert cmd[-1] == f"s3://stage/runs/{h.run_id}/{sub['jobName']}.json"
    # run child 7 exactly as the container would, reading the staged spec from (moto) S3
    from pipecraft.run_node import main as run_node_main

    os.environ["AWS_BATCH_JOB_ARRAY_INDEX"] = "7"
    try:
        assert run_node_main(cmd[3:]) == 0
    finally:
        del os.environ["AWS_BATCH_JOB_ARRAY_INDEX"]
    assert (tmp_path / "site 7, out.txt").read_text() == "site 7"
    assert not (tmp_path / "site 6, out.txt").exists()


def test_inline_array_command_runs_the_indexed_node(tmp_path: Path) -> None:
    p = demo_pipeline(tmp_path, python=sys.executable)
    subs = AwsBatchBackend("q", image="img", python=sys.executable).plan(p)
    (array,) = [s for s in subs if s.array_size]
    (tmp_path / "prepared.txt").write_text("prepared\n")
    env = {**os.environ, "AWS_BATCH_JOB_ARRAY_INDEX": "1"}
    subprocess.run(array.command, env=env, check=True)
    assert (tmp_path / "work" / "b.txt").read_text() == "prepared+b\n"
    assert not (tmp_path / "work" / "a.txt").exists()


def test_logs_come_from_cloudwatch(moto_batch, tmp_path: Path) -> None:
    h = backend(moto_batch).run(Pipeline("l", Command(name="a", argv=["true"])))
    assert h.wait(10) is RunStatus.SUCCEEDED
    assert h.logs("a") == ""  # no events written yet
    stream = moto_batch.describe_jobs(jobs=[h.submissions[0].job_id])["jobs"][0]["container"][
        "logStreamName"
    ]
    write_batch_log(stream, ["line one", "line two"])
    assert h.log_lines("a") == ["line one", "line two"]


def test_bad_configuration_fails_before_submitting(moto_batch, tmp_path: Path) -> None:
    rec = Recorder(moto_batch)
    no_image = Pipeline("n", Command(name="a", argv=["true"]))
    with pytest.raises(BackendConfigError, match="node 'a' has no container image"):
        AwsBatchBackend(BATCH_QUEUE, client=rec).run(no_image)
    with pytest.raises(BackendConfigError, match="job queue 'missing-q' does not exist"):
        AwsBatchBackend("missing-q", image="i", client=rec).run(no_image)
    too_many = Pipeline("r", Command(name="a", argv=["true"], retries=10))
    with pytest.raises(BackendConfigError, match="retries=10, AWS Batch allows at most 9"):
        backend(rec).run(too_many)
    assert rec.calls_to("submit_job") == []
    with pytest.raises(BackendConfigError, match="staging_uri='/tmp/x'"):
        AwsBatchBackend("q", staging_uri="/tmp/x")
    with pytest.raises(BackendConfigError, match="job_queue=''"):
        AwsBatchBackend("")


def memory_of(kw: dict[str, Any]) -> int:
    reqs = kw["containerOverrides"]["resourceRequirements"]
    return next(int(r["value"]) for r in reqs if r["type"] == "MEMORY")


def test_out_of_memory_resubmits_with_growing_memory(moto_batch, tmp_path: Path) -> None:
    # work-b needs 2500 MB: 1000 fails, 2000 fails, 2500 (the cap) succeeds; its array
    # siblings are not re-run, gather (which Batch failed with it) is resubmitted.
    p = demo_pipeline(tmp_path, python="python")
    dag = p.compile()
    res = Resources(memory_mb=1000, max_memory_mb=2500)
    nodes = {
        n: replace(node, resources=res, retries=3) if n.startswith("work-") else node
        for n, node in dag.nodes.items()
    }
    edges = [(d, n) for n, ds in dag.deps.items() for d in ds]
    dag = DAG("demo", nodes, edges, dag.groups, check_inputs=False)
    rec = Recorder(moto_batch, fail=("doomed",), oom={"work-b": 2500})
    h = backend(rec).run(dag)
    assert h.wait(10) is RunStatus.FAILED
    assert states(h) == DEMO_EXPECTED
    subs = rec.calls_to("submit_job")
    retried = [(s["jobName"].split("-", 2)[2], memory_of(s)) for s in subs[5:]]
    assert retried == [
        ("retry1-work-b", 2000),
        ("retry1-gather", 1024),
        ("retry2-work-b", 2500),
        ("retry2-gather", 1024),
    ]
    # attempts left shrink; the first retry spent one of four
    by_name = {s["jobName"].split("-", 2)[2]: s for s in subs[5:]}
    assert by_name["retry1-work-b"]["retryStrategy"]["attempts"] == 3
    assert by_name["retry2-work-b"]["retryStrategy"]["attempts"] == 2
    ids = {s.name.split("-", 2)[2]: s.job_id for s in h.submissions}
    assert by_name["retry2-gather"]["dependsOn"] == [{"jobId": ids["retry2-work-b"]}]
    assert h.failures().keys() == {"doomed"}


def test_out_of_memory_at_the_cap_fails_with_the_reason(moto_batch, tmp_path: Path) -> None:
    hog = Command(
        name="hog",
        argv=["true"],
        resources=Resources(memory_mb=1000, max_memory_mb=1500),
        retries=5,
    )
    after = Command(name="after", argv=["true"])
    rec = Recorder(moto_batch, oom={"hog": 99999})
    h = backend(rec).run(Pipeline("p", Seq(hog, after)))
    assert h.wait(10) is RunStatus.FAILED
    assert states(h) == {"hog": "failed", "after": "upstream_failed"}
    assert [memory_of(s) for s in rec.calls_to("submit_job") if "hog" in s["jobName"]] == [
        1000,
        1500,
    ]
    reason = h.failures()["hog"]
    assert "OutOfMemoryError" in reason and "exit code 137" in reason
    assert reason.endswith("out of memory with 1500 MB (the cap, 1500 MB), not retried")
