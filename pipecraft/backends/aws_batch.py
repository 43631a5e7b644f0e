"""Run a pipeline on AWS Batch: one job per node, one array job per scatter step.

A job definition is registered once per container image (and reused afterwards). Each
node becomes a ``submit_job`` call carrying its command, environment, vCPU/memory and
retry strategy, with ``dependsOn`` for its DAG edges. Nodes made by the same step of a
:class:`~pipecraft.Scatter` become one array job when they share image, resources and
retries: each child runs ``python -m pipecraft.run_node --array SPEC`` and picks its node
with ``AWS_BATCH_JOB_ARRAY_INDEX``; SPEC is inline JSON, or a JSON file uploaded under
``staging_uri`` when too large for a request. When a scatter's second step reads only
its own item of the first (child k on child k), the two arrays are linked ``N_TO_N``, so
each item moves on as soon as its previous step is done. Batch allows 20 dependencies per
job, so wider fan-ins go through small barrier jobs.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipecraft.backends.base import NodeState, RunHandle, RunStatus, overall_status, poll_until
from pipecraft.errors import BackendConfigError
from pipecraft.node import Node, node_argv
from pipecraft.pipeline import DAG, Pipeline, as_dag
from pipecraft.retry import describe_oom, memory_cap, next_memory

MAX_DEPENDS_ON = 20
MAX_ARRAY_SIZE = 10_000
CANCEL_REASON = "cancelled by pipecraft"
#: How Batch says a container was killed for memory ("OutOfMemoryError: Container killed
#: due to memory usage").
OOM_REASON = "OutOfMemoryError"
_JOB_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")

_BATCH_STATES = {
    "SUBMITTED": NodeState.PENDING,
    "PENDING": NodeState.PENDING,
    "RUNNABLE": NodeState.PENDING,
    "STARTING": NodeState.RUNNING,
    "RUNNING": NodeState.RUNNING,
    "SUCCEEDED": NodeState.SUCCEEDED,
    "FAILED": NodeState.FAILED,
}


def job_name(*parts: str) -> str:
    """A valid Batch job name (letters, digits, ``-``, ``_``; at most 128 characters)."""
    raw = "-".join(parts)
    name = _JOB_NAME_BAD.sub("_", raw).lstrip("_-") or "job"
    if len(name) > 128:
        name = f"{name[:117]}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"
    return name


@dataclass
class Submission:
    """One submitted Batch job (a node, a scatter step as array job, or a barrier)."""

    name: str
    nodes: list[str]
    image: str
    command: list[str]
    array_size: int | None = None
    depends_on: list[str] = field(default_factory=list)  # names of other submissions
    job_id: str | None = None
    # Array dependencies whose child k needs only child k: Batch starts each child as
    # soon as its own upstream child succeeded, not after the whole upstream array.
    n_to_n: set[str] = field(default_factory=set)
    #: memory of a retry after OutOfMemoryError (None: the node's request)
    memory_mb: int | None = None
    #: attempts left for Batch's own retries (None: the node's retries + 1)
    attempts: int | None = None


class AwsBatchBackend:
    """Run pipelines on AWS Batch.

    Parameters
    ----------
    job_queue : str
        Name or ARN of the job queue.
    image : str, optional
        Default container image (a ``Command`` may set its own); it must contain
        pipecraft for array jobs and PyFunction nodes.
    client : botocore client, optional
        ``boto3.client("batch")`` to use (default: created with ``region``).
    region : str, optional
        AWS region for clients created here.
    staging_uri : str, optional
        ``s3://bucket/prefix`` where large array specs are uploaded.
    environment : mapping, optional
        Environment for every job (nodes add their own).
    job_definition_prefix : str
        Job definitions are named ``<prefix>-<hash of image>``.
    python : str
        Python interpreter inside the image.
    poll_first, poll_max : float
        First and longest pause, in seconds, between status polls (doubling backoff).
    max_inline_bytes : int
        Largest array spec passed inline in the command.
    max_memory_mb : int, optional
        Cap on a retry's memory (the largest instance the queue's compute environment
        starts), besides each node's ``Resources.max_memory_mb``.
    """

    def __init__(
        self,
        job_queue: str,
        image: str | None = None,
        *,
        client: Any = None,
        region: str | None = None,
        staging_uri: str | None = None,
        s3_client: Any = None,
        logs_client: Any = None,
        environment: dict[str, str] | None = None,
        job_definition_prefix: str = "pipecraft",
        python: str = "python",
        poll_first: float = 1.0,
        poll_max: float = 30.0,
        max_inline_bytes: int = 6000,
        max_memory_mb: int | None = None,
    ) -> None:
        if not isinstance(job_queue, str) or not job_queue:
            raise BackendConfigError(
                f"AwsBatchBackend job_queue={job_queue!r}: expected a queue name"
            )
        if image is not None and (not isinstance(image, str) or not image):
            raise BackendConfigError(f"AwsBatchBackend image={image!r}: expected an image name")
        if staging_uri is not None and not (
            isinstance(staging_uri, str) and re.match(r"^s3://[^/]+", staging_uri)
        ):
            raise BackendConfigError(
                f"AwsBatchBackend staging_uri={staging_uri!r}: expected s3://bucket[/prefix]"
            )
        if not (0 < poll_first <= poll_max):
            raise BackendConfigError(
                f"AwsBatchBackend poll_first={poll_first!r}, poll_max={poll_max!r}: expected "
                "0 < poll_first <= poll_max"
            )
        if not job_definition_prefix or _JOB_NAME_BAD.search(job_definition_prefix):
            raise BackendConfigError(
                f"AwsBatchBackend job_definition_prefix={job_definition_prefix!r}: expected "
                "letters, digits, - and _"
            )
        self.job_queue = job_queue
        self.image = image
        self.region = region
        self._client = client
        self._s3 = s3_client
        self._logs = logs_client
        self.staging_uri = staging_uri.rstrip("/") if staging_uri else None
        self.environment = dict(environment or {})
        self.job_definition_prefix = job_definition_prefix
        self.python = python
        self.poll_first = poll_first
        self.poll_max = poll_max
        self.max_inline_bytes = max_inline_bytes
        if max_memory_mb is not None and (not isinstance(max_memory_mb, int) or max_memory_mb < 1):
            raise BackendConfigError(
                f"AwsBatchBackend max_memory_mb={max_memory_mb!r}: expected an integer >= 1"
            )
        self.max_memory_mb = max_memory_mb

    # -- clients -------------------------------------------------------------------

    def _boto(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.region)

    @property
    def client(self) -> Any:
        """The Batch client."""
        if self._client is None:
            self._client = self._boto("batch")
        return self._client

    @property
    def logs_client(self) -> Any:
        """The CloudWatch Logs client (job logs)."""
        if self._logs is None:
            self._logs = self._boto("logs")
        return self._logs

    @property
    def s3_client(self) -> Any:
        """The S3 client (array spec staging)."""
        if self._s3 is None:
            self._s3 = self._boto("s3")
        return self._s3

    # -- planning ------------------------------------------------------------------

    def _image(self, node: Node) -> str:
        image = getattr(node, "image", None) or self.image
        if not image:
            raise BackendConfigError(
                f"node {node.name!r} has no container image and AwsBatchBackend has no default "
                "image: pass image=..."
            )
        return image

    def plan(self, pipeline: Pipeline | DAG, run_id: str | None = None) -> list[Submission]:
        """The jobs that :meth:`run` would submit, in submission order (nothing is sent).

        Raises
        ------
        BackendConfigError
            If a node cannot run on Batch (no image, too many retries, a function in
            ``__main__``) or an array spec is too large and no ``staging_uri`` is set.
        """
        dag = as_dag(pipeline)
        run_id = run_id or uuid.uuid4().hex[:8]
        for node in dag:
            self._image(node)
            node_argv(node, self.python, with_env=False)
            if node.retries > 9:
                raise BackendConfigError(
                    f"node {node.name!r}: retries={node.retries}, AWS Batch allows at most 9"
                )
        units = self._units(dag)
        unit_of = {n: i for i, u in enumerate(units) for n in u}
        unit_deps = [
            sorted({unit_of[d] for n in u for d in dag.deps[n]} - {i}) for i, u in enumerate(units)
        ]
        order = _unit_order(unit_deps)
        if order is None:
            # Collapsing scatter steps made a cycle at job level: one job per node.
            units = [[n] for n in dag.nodes]
            unit_of = {n: i for i, u in enumerate(units) for n in u}
            unit_deps = [sorted({unit_of[d] for d in dag.deps[u[0]]}) for u in units]
            order = list(range(len(units)))
        subs: list[Submission] = []
        sub_of_unit: dict[int, str] = {}
        for i in order:
            u = units[i]
            first = dag.nodes[u[0]]
            image = self._image(first)
            if len(u) == 1:
                name = job_name(dag.name, run_id, first.name)
                command = node_argv(first, self.python, with_env=False)
                size = None
            else:
                name = job_name(dag.name, run_id, dag.groups[u[0]][0].replace("#", "-"))
                spec = json.dumps([dag.nodes[n].to_dict() for n in u])
                if len(spec.encode()) > self.max_inline_bytes:
                    if not self.staging_uri:
                        raise BackendConfigError(
                            f"array job {name!r} ({len(u)} nodes) needs a {len(spec)}-byte spec, "
                            f"over max_inline_bytes={self.max_inline_bytes}: set staging_uri="
                            "'s3://bucket/prefix' for it"
                        )
                    spec = f"{self.staging_uri}/{run_id}/{name}.json"
                command = [self.python, "-m", "pipecraft.run_node", "--array", spec]
                size = len(u)
            deps = [sub_of_unit[d] for d in unit_deps[i]]
            aligned = {sub_of_unit[d] for d in unit_deps[i] if _aligned(dag, u, units[d])}
            deps = _barriers(deps, name, image, subs)
            aligned &= set(deps)
            subs.append(Submission(name, list(u), image, command, size, deps, None, aligned))
            sub_of_unit[i] = name
        return subs

    def _units(self, dag: DAG) -> list[list[str]]:
        """Nodes grouped into jobs: scatter steps of compatible nodes become one unit."""
        by_group: dict[str, list[str]] = {}
        for n in dag.nodes:
            g = dag.groups.get(n)
            if g is not None:
                by_group.setdefault(g[0], []).append(n)
        arrays: dict[str, list[str]] = {}
        for key, members in by_group.items():
            members.sort(key=lambda n: dag.groups[n][1])
            nodes = [dag.nodes[n] for n in members]
            same = {(self._image(x), x.resources, x.retries) for x in nodes}
            inside = set(members)
            internal = any(d in inside for n in members for d in dag.deps[n])
            if 2 <= len(members) <= MAX_ARRAY_SIZE and len(same) == 1 and not internal:
                arrays[key] = members
        units: list[list[str]] = []
        emitted: set[str] = set()
        for n in dag.nodes:
            g = dag.groups.get(n)
            if g is not None and g[0] in arrays:
                if g[0] not in emitted:
                    emitted.add(g[0])
                    units.append(arrays[g[0]])
            else:
                units.append([n])
        return units

    # -- running -------------------------------------------------------------------

    def job_definition(self, image: str) -> str:
        """ARN of an active job definition for ``image``, registering one if needed."""
        name = job_name(self.job_definition_prefix, hashlib.sha1(image.encode()).hexdigest()[:12])
        found = self.client.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
        for jd in sorted(found.get("jobDefinitions", []), key=lambda j: -j.get("revision", 0)):
            if jd.get("containerProperties", {}).get("image") == image:
                return jd["jobDefinitionArn"]
        resp = self.client.register_job_definition(
            jobDefinitionName=name,
            type="container",
            containerProperties={
                "image": image,
                "command": ["true"],
                "resourceRequirements": [
                    {"type": "VCPU", "value": "1"},
                    {"type": "MEMORY", "value": "1024"},
                ],
            },
        )
        return resp["jobDefinitionArn"]

    def _check_queue(self) -> None:
        try:
            queues = self.client.describe_job_queues(jobQueues=[self.job_queue])["jobQueues"]
        except Exception as exc:
            raise BackendConfigError(
                f"AwsBatchBackend cannot reach AWS Batch for queue {self.job_queue!r}: {exc}"
            ) from None
        if not queues:
            raise BackendConfigError(f"AWS Batch job queue {self.job_queue!r} does not exist")
        state = queues[0].get("state")
        if state and state != "ENABLED":
            raise BackendConfigError(
                f"AWS Batch job queue {self.job_queue!r} is {state}, expected ENABLED"
            )

    def run(self, pipeline: Pipeline | DAG) -> AwsBatchRunHandle:
        """Validate, submit every job and return the handle (jobs run asynchronously)."""
        dag = as_dag(pipeline)
        run_id = uuid.uuid4().hex[:8]
        subs = self.plan(dag, run_id)
        self._check_queue()
        for s in subs:
            if s.array_size and s.command[-1].startswith("s3://"):
                spec = json.dumps([dag.nodes[n].to_dict() for n in s.nodes])
                bucket, _, key = s.command[-1][5:].partition("/")
                self.s3_client.put_object(Bucket=bucket, Key=key, Body=spec.encode())
        definitions = {img: self.job_definition(img) for img in sorted({s.image for s in subs})}
        handle = AwsBatchRunHandle(dag, self, subs, run_id)
        ids: dict[str, str] = {}
        try:
            for s in subs:
                kwargs = self._submit_kwargs(dag, s, definitions[s.image], ids)
                s.job_id = self.client.submit_job(**kwargs)["jobId"]
                ids[s.name] = s.job_id
        except Exception:
            # Never leave half a pipeline queued: stop what was submitted.
            handle.cancel()
            raise
        return handle

    def _submit_kwargs(
        self, dag: DAG, s: Submission, definition: str, ids: dict[str, str]
    ) -> dict[str, Any]:
        queue = self.job_queue
        if s.nodes:
            node = dag.nodes[s.nodes[0]]
            res, retries = node.resources, node.retries
            env = {**self.environment, **(node.env if s.array_size is None else {})}
            memory = s.memory_mb or res.memory_mb
            vcpus = res.cpus
            queue = res.queue or queue
        else:  # barrier
            res, retries, env, memory, vcpus = None, 0, {}, 128, 1
        attempts = s.attempts if s.attempts is not None else retries + 1
        kwargs: dict[str, Any] = {
            "jobName": s.name,
            "jobQueue": queue,
            "jobDefinition": definition,
            "containerOverrides": {
                "command": s.command,
                "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
                "resourceRequirements": [
                    {"type": "VCPU", "value": str(vcpus)},
                    {"type": "MEMORY", "value": str(memory)},
                ],
            },
            "retryStrategy": retry_strategy(attempts),
        }
        if res is not None and res.time_min is not None:
            kwargs["timeout"] = {"attemptDurationSeconds": max(60, res.time_min * 60)}
        if s.depends_on:
            kwargs["dependsOn"] = [
                {"jobId": ids[d], "type": "N_TO_N"} if d in s.n_to_n else {"jobId": ids[d]}
                for d in s.depends_on
            ]
        if s.array_size:
            kwargs["arrayProperties"] = {"size": s.array_size}
        return kwargs


def retry_strategy(attempts: int) -> dict[str, Any]:
    """Batch's retry strategy: retry any failure but one for memory, which pipecraft
    resubmits itself with more memory (Batch would retry with the same request)."""
    strategy: dict[str, Any] = {"attempts": attempts}
    if attempts > 1:
        strategy["evaluateOnExit"] = [
            {"onReason": f"{OOM_REASON}*", "action": "EXIT"},
            {"onReason": "*", "action": "RETRY"},
        ]
    return strategy


def is_out_of_memory(job: dict[str, Any]) -> bool:
    """Whether a failed Batch job's last attempt was killed for memory."""
    texts = [job.get("statusReason"), job.get("container", {}).get("reason")]
    attempts = job.get("attempts") or []
    if attempts:
        texts += [attempts[-1].get("statusReason"), attempts[-1].get("container", {}).get("reason")]
    return any(t and OOM_REASON in t for t in texts)


def _unit_order(unit_deps: list[list[int]]) -> list[int] | None:
    """Topological order of units, or None if they form a cycle."""
    indeg = [len(d) for d in unit_deps]
    users: list[list[int]] = [[] for _ in unit_deps]
    for i, ds in enumerate(unit_deps):
        for d in ds:
            users[d].append(i)
    ready = [i for i, k in enumerate(indeg) if k == 0]
    ready.reverse()
    out: list[int] = []
    while ready:
        i = ready.pop()
        out.append(i)
        for j in users[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    return out if len(out) == len(unit_deps) else None


def _aligned(dag: DAG, unit: list[str], upstream: list[str]) -> bool:
    """Whether two array units of one size depend child k on child k only (N_TO_N).

    A barrier stands between jobs only above 20 dependencies, and then this unit's
    dependency list is rewritten, so :meth:`AwsBatchBackend.plan` keeps only names that
    are still direct dependencies.
    """
    if len(unit) < 2 or len(unit) != len(upstream):
        return False
    inside = set(upstream)
    pairs = zip(unit, upstream, strict=True)
    return all({d for d in dag.deps[n] if d in inside} == {up} for n, up in pairs)


def _barriers(deps: list[str], name: str, image: str, subs: list[Submission]) -> list[str]:
    """Reduce ``deps`` to at most 20 by adding no-op barrier jobs (a tree of them)."""
    level = 0
    while len(deps) > MAX_DEPENDS_ON:
        grouped = []
        for k in range(0, len(deps), MAX_DEPENDS_ON):
            bname = job_name(name[:100], f"barrier{level}-{k // MAX_DEPENDS_ON}")
            subs.append(Submission(bname, [], image, ["true"], None, deps[k : k + MAX_DEPENDS_ON]))
            grouped.append(bname)
        deps = grouped
        level += 1
    return deps


class AwsBatchRunHandle(RunHandle):
    """Handle of a pipeline submitted to AWS Batch."""

    def __init__(
        self, dag: DAG, backend: AwsBatchBackend, submissions: list[Submission], run_id: str
    ) -> None:
        self.dag = dag
        self.backend = backend
        self.submissions = submissions
        self.run_id = run_id
        self._cancelled = False
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}  # job id -> last description
        # out-of-memory retries: attempts spent by replaced jobs, and why a node stopped
        self._spent: dict[str, int] = {}
        self._oom_final: dict[str, str] = {}
        self._retried: set[str] = set()  # job ids already resubmitted
        self._definitions: dict[str, str] = {}

    def job_ids(self) -> dict[str, str]:
        return self._node_job_ids()

    def _node_job_ids(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in self.submissions:
            if s.job_id is None:
                continue
            if s.array_size:
                for i, n in enumerate(s.nodes):
                    out[n] = f"{s.job_id}:{i}"
            elif s.nodes:
                out[s.nodes[0]] = s.job_id
        return out

    def refresh(self) -> None:
        """Poll Batch for the jobs that have not finished yet."""
        ids = [
            j
            for j in self._node_job_ids().values()
            if self._jobs.get(j, {}).get("status") not in ("SUCCEEDED", "FAILED")
        ]
        for k in range(0, len(ids), 100):
            resp = self.backend.client.describe_jobs(jobs=ids[k : k + 100])
            with self._lock:
                for job in resp.get("jobs", []):
                    self._jobs[job["jobId"]] = job
        if not self._cancelled:
            self._retry_out_of_memory()

    # -- out-of-memory retries -----------------------------------------------------

    def _current(self) -> dict[str, tuple[Submission, int]]:
        """Each node's latest submission and its index in it."""
        out: dict[str, tuple[Submission, int]] = {}
        for s in self.submissions:
            for i, n in enumerate(s.nodes):
                out[n] = (s, i)
        return out

    def _retry_out_of_memory(self) -> None:
        """Resubmit nodes killed for memory with more of it (and what waited on them)."""
        job_ids = self._node_job_ids()
        for n in list(self.dag.nodes):
            job_id = job_ids.get(n)
            job = self._jobs.get(job_id or "", {})
            if job.get("status") != "FAILED" or job_id in self._retried:
                continue
            if not is_out_of_memory(job) or n in self._oom_final:
                continue
            self._retried.add(job_id or "")
            node = self.dag.nodes[n]
            sub, _ = self._current()[n]
            memory = sub.memory_mb or node.resources.memory_mb
            spent = self._spent.get(n, 0) + max(1, len(job.get("attempts") or []))
            cap = memory_cap(node.resources, self.backend.max_memory_mb)
            grown = next_memory(node.resources, spent, memory, True, self.backend.max_memory_mb)
            if spent > node.retries or grown is None:
                self._oom_final[n] = describe_oom(memory, cap) + (
                    ", not retried" if grown is None else f" after {spent} attempt(s)"
                )
                continue
            self._spent[n] = spent
            self._resubmit(n, grown, node.retries + 1 - spent)

    def _affected(self, node: str) -> list[str]:
        """Nodes whose current job fails because ``node``'s job failed (Batch fails
        dependants at once; ``N_TO_N`` children only for their own index)."""
        current = self._current()
        start, index = current[node]
        hit: dict[str, set[int] | None] = {start.name: {index} if start.array_size else None}
        for s in self.submissions:
            for d in s.depends_on:
                if d not in hit:
                    continue
                if d in s.n_to_n and hit[d] is not None and s.array_size:
                    got = hit.setdefault(s.name, set())
                    if got is not None:
                        got |= hit[d] or set()
                else:
                    hit[s.name] = None
        out = []
        for n in self.dag.nodes:
            s, i = current[n]
            wanted = s.name in hit and (hit[s.name] is None or i in (hit[s.name] or ()))
            if wanted and (n == node or self._state_of(n) is not NodeState.SUCCEEDED):
                out.append(n)
        return out

    def _state_of(self, node: str) -> NodeState:
        job = self._jobs.get(self._node_job_ids().get(node, ""), {})
        return _BATCH_STATES.get(job.get("status", ""), NodeState.PENDING)

    def _resubmit(self, node: str, memory_mb: int, attempts: int) -> None:
        b = self.backend
        affected = self._affected(node)
        inside = set(affected)
        current = self._current()
        ids = {s.name: s.job_id for s in self.submissions if s.job_id}
        new_name: dict[str, str] = {}
        round_ = len(self._retried)
        for n in affected:
            nd = self.dag.nodes[n]
            image = b._image(nd)
            name = job_name(self.dag.name, self.run_id, f"retry{round_}", n)
            deps: list[str] = []
            for d in self.dag.deps[n]:
                dep = new_name[d] if d in inside else current[d][0].name
                if (
                    d in inside or self._state_of(d) is not NodeState.SUCCEEDED
                ) and dep not in deps:
                    deps.append(dep)
            fresh: list[Submission] = []
            deps = _barriers(deps, name, image, fresh)
            sub = Submission(name, [n], image, node_argv(nd, b.python, with_env=False), None, deps)
            if n == node:
                sub.memory_mb, sub.attempts = memory_mb, attempts
            fresh.append(sub)
            if image not in self._definitions:
                self._definitions[image] = b.job_definition(image)
            for f in fresh:
                kwargs = b._submit_kwargs(self.dag, f, self._definitions[image], ids)
                f.job_id = b.client.submit_job(**kwargs)["jobId"]
                ids[f.name] = f.job_id
                self.submissions.append(f)
            new_name[n] = name

    def _states(self) -> tuple[dict[str, NodeState], dict[str, str]]:
        job_ids = self._node_job_ids()
        states: dict[str, NodeState] = {}
        reasons: dict[str, str] = {}
        bad: set[str] = set()
        with self._lock:
            for n in self.dag.nodes:
                job = self._jobs.get(job_ids.get(n, ""), {})
                st = _BATCH_STATES.get(job.get("status", ""), NodeState.PENDING)
                reason = job.get("statusReason") or ""
                if st is NodeState.FAILED:
                    if reason == CANCEL_REASON:
                        st = NodeState.CANCELLED
                    elif any(d in bad for d in self.dag.deps[n]) or reason.startswith(
                        "Dependent Job"
                    ):
                        st = NodeState.UPSTREAM_FAILED
                    else:
                        reasons[n] = _failure_reason(job)
                        if n in self._oom_final:
                            reasons[n] += f"; {self._oom_final[n]}"
                if st in (NodeState.FAILED, NodeState.UPSTREAM_FAILED):
                    bad.add(n)
                elif self._cancelled and not st.done:
                    st = NodeState.CANCELLED
                states[n] = st
        return states, reasons

    def node_states(self) -> dict[str, NodeState]:
        self.refresh()
        return self._states()[0]

    def status(self) -> RunStatus:
        return overall_status(self.node_states(), self._cancelled)

    def wait(self, timeout: float | None = None) -> RunStatus:
        poll_until(
            lambda: self.status().done, timeout, self.backend.poll_first, self.backend.poll_max
        )
        return self.status()

    def cancel(self) -> None:
        """Terminate every job not known to be finished (queued or running)."""
        self._cancelled = True
        for s in self.submissions:
            if s.job_id is None:
                continue
            if not s.array_size and self._jobs.get(s.job_id, {}).get("status") in (
                "SUCCEEDED",
                "FAILED",
            ):
                continue
            # terminate_job covers queued and running jobs (cancel_job only queued ones);
            # terminating an array parent terminates its children.
            self.backend.client.terminate_job(jobId=s.job_id, reason=CANCEL_REASON)

    def failures(self) -> dict[str, str]:
        self.refresh()
        states, reasons = self._states()
        return {n: reasons.get(n, "failed") for n, s in states.items() if s is NodeState.FAILED}

    def logs(self, node: str) -> str:
        self._check_node(node)
        job_id = self._node_job_ids().get(node)
        if job_id is None:
            return ""
        if job_id not in self._jobs:
            self.refresh()
        stream = self._jobs.get(job_id, {}).get("container", {}).get("logStreamName")
        if not stream:
            return ""
        lines: list[str] = []
        token = None
        try:
            while True:
                kwargs: dict[str, Any] = {
                    "logGroupName": "/aws/batch/job",
                    "logStreamName": stream,
                    "startFromHead": True,
                }
                if token:
                    kwargs["nextToken"] = token
                resp = self.backend.logs_client.get_log_events(**kwargs)
                lines += [e["message"] for e in resp.get("events", [])]
                if not resp.get("events") or resp.get("nextForwardToken") == token:
                    break
                token = resp.get("nextForwardToken")
        except Exception as exc:
            name = type(exc).__name__
            if "ResourceNotFound" in name or "ResourceNotFound" in str(exc):
                return ""
            raise
        return "\n".join(lines) + ("\n" if lines else "")


def _failure_reason(job: dict[str, Any]) -> str:
    parts = []
    code = job.get("container", {}).get("exitCode")
    if code is not None:
        parts.append(f"exit code {code}")
    for text in (job.get("statusReason"), job.get("container", {}).get("reason")):
        if text and text not in parts:
            parts.append(text)
    attempts = job.get("attempts") or []
    if attempts and attempts[-1].get("statusReason") and attempts[-1]["statusReason"] not in parts:
        parts.append(attempts[-1]["statusReason"])
    job_id = job.get("jobId", "?")
    return f"job {job_id} failed: " + (
        "; ".join(parts) if parts else "no reason given by AWS Batch"
    )
