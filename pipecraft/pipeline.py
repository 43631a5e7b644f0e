"""Composition of nodes into pipelines, and their compilation into a validated DAG.

``Seq(a, b)`` runs ``b`` after every last node of ``a``; ``Parallel(a, b)`` adds no
order; ``Scatter(name, items, body)`` builds ``body(item)`` once per item (one node or a
whole sub-pipeline per well, site...). They nest to any depth. ``Pipeline.compile()``
adds the edges implied by data (a node reading a path another writes, or a path under
a directory another writes) and validates the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from pipecraft.errors import PipelineError
from pipecraft.node import Node, node_from_dict, normalize_path

Step = Union[Node, "Seq", "Parallel", "Scatter"]


class Seq:
    """Run steps one after the other: each step starts after every sink of the previous."""

    def __init__(self, *steps: Step) -> None:
        self.steps = _check_steps("Seq", steps)


class Parallel:
    """Run steps with no order between them."""

    def __init__(self, *steps: Step) -> None:
        self.steps = _check_steps("Parallel", steps)


class Scatter:
    """One copy of a sub-pipeline per item of work.

    Parameters
    ----------
    name : str
        Name of the scatter; nodes made by the same position of ``body`` across items
        form a group that backends may run as one array job.
    items : iterable
        The units of work (wells, sites...).
    body : callable
        ``body(item)`` returns the step (node or composition) for one item; node names
        must differ between items (include the item in them).
    """

    def __init__(self, name: str, items: Iterable[Any], body: Callable[[Any], Step]) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineError(f"Scatter name {name!r} is invalid: expected a non-empty string")
        if not callable(body):
            raise PipelineError(f"Scatter {name!r}: body {body!r} is not callable")
        self.name = name
        self.items = list(items)
        self.body = body


def _check_steps(kind: str, steps: Sequence[Any]) -> tuple[Step, ...]:
    for s in steps:
        if not isinstance(s, Node | Seq | Parallel | Scatter):
            raise PipelineError(f"{kind}(...) got {s!r}: expected a Node, Seq, Parallel or Scatter")
    return tuple(steps)


@dataclass
class _Builder:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    groups: dict[str, tuple[str, int]] = field(default_factory=dict)
    group_sizes: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def add(self, node: Node) -> None:
        if node.name in self.nodes:
            raise PipelineError(f"duplicate node name {node.name!r}: node names must be unique")
        self.nodes[node.name] = node
        self.order.append(node.name)

    def walk(self, step: Step, scatter: str | None = None) -> tuple[list[str], list[str]]:
        """Add ``step``; return its (sources, sinks)."""
        if isinstance(step, Node):
            self.add(step)
            return [step.name], [step.name]
        if isinstance(step, Seq):
            return self._walk_seq(step, scatter)
        if isinstance(step, Parallel):
            srcs: list[str] = []
            snks: list[str] = []
            for sub in step.steps:
                src, snk = self.walk(sub, scatter)
                srcs += src
                snks += snk
            return srcs, snks
        if isinstance(step, Scatter):
            return self._walk_scatter(step)
        raise PipelineError(f"cannot compose {step!r}: expected a Node, Seq, Parallel or Scatter")

    def _walk_seq(self, step: Seq, scatter: str | None) -> tuple[list[str], list[str]]:
        """Add the steps in order, each sink of one before each source of the next."""
        first: list[str] | None = None
        prev: list[str] = []
        for sub in step.steps:
            src, snk = self.walk(sub, scatter)
            if not src:
                continue
            if first is None:
                first = src
            for a in prev:
                for b in src:
                    self.edges.append((a, b))
            prev = snk
        return first or [], prev

    def _walk_scatter(self, step: Scatter) -> tuple[list[str], list[str]]:
        """Add the body's step for every item, grouping the n-th nodes of the items."""
        srcs: list[str] = []
        snks: list[str] = []
        for item in step.items:
            sub = self._scatter_body(step, item)
            before = len(self.order)
            src, snk = self.walk(sub, step.name)
            # Nodes made by this item that no inner scatter claimed; the n-th of
            # them across items is "the same step" for array jobs.
            slot = 0
            for name in self.order[before:]:
                if name not in self.groups:
                    key = f"{step.name}#{slot}"
                    idx = self.group_sizes.get(key, 0)
                    self.groups[name] = (key, idx)
                    self.group_sizes[key] = idx + 1
                    slot += 1
            srcs += src
            snks += snk
        return srcs, snks

    @staticmethod
    def _scatter_body(step: Scatter, item: Any) -> Step:
        """``step.body(item)``, refused when it fails or does not return a step."""
        try:
            sub = step.body(item)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"Scatter {step.name!r}: body failed for item {item!r}: {exc}"
            ) from exc
        if not isinstance(sub, Node | Seq | Parallel | Scatter):
            raise PipelineError(
                f"Scatter {step.name!r}: body returned {sub!r} for item {item!r}, "
                "expected a Node, Seq, Parallel or Scatter"
            )
        return sub


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    try:
        from pyarrow import fs as pafs

        filesystem, p = pafs.FileSystem.from_uri(path)
        return filesystem.get_file_info(p).type != pafs.FileType.NotFound
    except Exception:
        # Unreachable storage is reported as missing; the error says which path.
        return False


class DAG:
    """A validated, explicit graph of nodes in topological order.

    Attributes
    ----------
    name : str
        Pipeline name.
    nodes : dict of str to Node
        Every node, in a topological order (dependencies first).
    deps : dict of str to tuple of str
        Direct predecessors of each node.
    groups : dict of str to (str, int)
        For nodes made by a :class:`Scatter`: their group key and index in the group.
    """

    def __init__(
        self,
        name: str,
        nodes: dict[str, Node],
        edges: Iterable[tuple[str, str]],
        groups: dict[str, tuple[str, int]] | None = None,
        check_inputs: bool = True,
    ) -> None:
        self.name = name
        self.groups = dict(groups or {})
        deps: dict[str, set[str]] = {n: set() for n in nodes}
        for a, b in edges:
            for x in (a, b):
                if x not in nodes:
                    raise PipelineError(f"edge {a!r} -> {b!r} names unknown node {x!r}")
            if a != b:
                deps[b].add(a)
        self._add_data_edges(nodes, deps, check_inputs)
        order = _toposort(list(nodes), deps)
        self.nodes: dict[str, Node] = {n: nodes[n] for n in order}
        self.deps: dict[str, tuple[str, ...]] = {n: tuple(sorted(deps[n])) for n in order}
        self._dependents: dict[str, list[str]] | None = None

    @staticmethod
    def _add_data_edges(
        nodes: dict[str, Node], deps: dict[str, set[str]], check_inputs: bool
    ) -> None:
        writers: dict[str, str] = {}
        for node in nodes.values():
            for out in node.outputs:
                key = normalize_path(out)
                other = writers.get(key)
                if other is not None and other != node.name:
                    raise PipelineError(
                        f"nodes {other!r} and {node.name!r} both write {out!r}: "
                        "each output must have one writer"
                    )
                writers[key] = node.name
        missing: list[str] = []
        for node in nodes.values():
            for inp in node.inputs:
                key = normalize_path(inp)
                producer = _find_writer(key, writers)
                if producer is None:
                    if check_inputs and not _exists(inp):
                        missing.append(f"{node.name!r} reads {inp!r}")
                elif producer != node.name:
                    deps[node.name].add(producer)
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise PipelineError(
                "input not produced by any node and not found: " + "; ".join(missing[:3]) + more
            )

    @property
    def dependents(self) -> dict[str, list[str]]:
        """Direct successors of each node."""
        if self._dependents is None:
            out: dict[str, list[str]] = {n: [] for n in self.nodes}
            for n, ds in self.deps.items():
                for d in ds:
                    out[d].append(n)
            self._dependents = out
        return self._dependents

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge ``(before, after)``, in topological order of ``after``."""
        return [(d, n) for n, ds in self.deps.items() for d in ds]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def descendants(self, name: str) -> set[str]:
        """Every node that depends, directly or not, on ``name``."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            for d in self.dependents[stack.pop()]:
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return seen

    # -- drawing -------------------------------------------------------------------

    def to_dot(self) -> str:
        """Graphviz DOT text of the DAG."""

        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [f"digraph {q(self.name)} {{", "  rankdir=LR;"]
        for n, node in self.nodes.items():
            shape = "box" if node.kind == "command" else "ellipse"
            lines.append(f"  {q(n)} [shape={shape}];")
        for a, b in self.edges:
            lines.append(f"  {q(a)} -> {q(b)};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """Mermaid flowchart text of the DAG."""
        ids = {n: f"n{i}" for i, n in enumerate(self.nodes)}

        def label(s: str) -> str:
            return s.replace('"', "#quot;")

        lines = ["flowchart LR"]
        for n in self.nodes:
            lines.append(f'  {ids[n]}["{label(n)}"]')
        for a, b in self.edges:
            lines.append(f"  {ids[a]} --> {ids[b]}")
        return "\n".join(lines) + "\n"

    # -- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description: nodes, edges and scatter groups."""
        return {
            "pipecraft": 1,
            "name": self.name,
            "nodes": [node.to_dict() for node in self.nodes.values()],
            "edges": [list(e) for e in self.edges],
            "groups": {n: list(g) for n, g in self.groups.items()},
        }

    def to_json(self, indent: int | None = None) -> str:
        """Serialise to JSON text (see :meth:`from_json`)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any], check_inputs: bool = False) -> DAG:
        """Rebuild and re-validate a DAG from :meth:`to_dict` output."""
        try:
            if d.get("pipecraft") != 1:
                raise PipelineError(
                    f"pipeline JSON version {d.get('pipecraft')!r} is unsupported: expected 1"
                )
            nodes: dict[str, Node] = {}
            for nd in d["nodes"]:
                node = node_from_dict(nd)
                if node.name in nodes:
                    raise PipelineError(f"duplicate node name {node.name!r} in pipeline JSON")
                nodes[node.name] = node
            edges = [(a, b) for a, b in d.get("edges", [])]
            groups = {n: (g[0], int(g[1])) for n, g in d.get("groups", {}).items()}
            name = d["name"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, PipelineError):
                raise
            raise PipelineError(f"pipeline JSON is malformed: {exc!r}") from None
        return cls(name, nodes, edges, groups, check_inputs=check_inputs)

    @classmethod
    def from_json(cls, text: str, check_inputs: bool = False) -> DAG:
        """Parse JSON text made by :meth:`to_json`."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"pipeline JSON is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise PipelineError("pipeline JSON must be an object")
        return cls.from_dict(d, check_inputs=check_inputs)


def _find_writer(path: str, writers: dict[str, str]) -> str | None:
    """The node writing ``path`` or a directory containing it."""
    p = path
    while True:
        w = writers.get(p)
        if w is not None:
            return w
        cut = p.rfind("/")
        if cut <= 0 or p[cut - 1] == "/":
            return None
        p = p[:cut]


def _toposort(order: list[str], deps: dict[str, set[str]]) -> list[str]:
    """Kahn's algorithm, stable with respect to ``order``; names a cycle if any."""
    indeg = {n: len(deps[n]) for n in order}
    dependents: dict[str, list[str]] = {n: [] for n in order}
    for n in order:
        for d in deps[n]:
            dependents[d].append(n)
    pos = {n: i for i, n in enumerate(order)}
    import heapq

    heap = [(pos[n], n) for n in order if indeg[n] == 0]
    heapq.heapify(heap)
    out: list[str] = []
    while heap:
        _, n = heapq.heappop(heap)
        out.append(n)
        for m in dependents[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                heapq.heappush(heap, (pos[m], m))
    if len(out) < len(order):
        left = {n for n in order if indeg[n] > 0}
        cycle = _find_cycle(left, deps)
        raise PipelineError("cycle between nodes: " + " -> ".join(repr(c) for c in cycle))
    return out


def _find_cycle(left: set[str], deps: dict[str, set[str]]) -> list[str]:
    # Every remaining node has a remaining predecessor, so walking back must repeat.
    start = min(left)
    path = [start]
    seen = {start: 0}
    cur = start
    while True:
        cur = min(d for d in deps[cur] if d in left)
        if cur in seen:
            cyc = [*path[seen[cur] :], cur]
            return list(reversed(cyc))
        seen[cur] = len(path)
        path.append(cur)


class Pipeline:
    """A named composition of nodes, compiled into a :class:`DAG` before it runs.

    Parameters
    ----------
    name : str
        Pipeline name (used in run folders, job names and drawings).
    root : Node, Seq, Parallel or Scatter
        The composition.
    check_inputs : bool
        Whether :meth:`compile` checks that inputs no node produces already exist.
    """

    def __init__(self, name: str, root: Step, check_inputs: bool = True) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineError(f"pipeline name {name!r} is invalid: expected a non-empty string")
        if not isinstance(root, Node | Seq | Parallel | Scatter):
            raise PipelineError(
                f"pipeline {name!r}: root {root!r}, expected a Node, Seq, Parallel or Scatter"
            )
        self.name = name
        self.root = root
        self.check_inputs = check_inputs
        self._dag: DAG | None = None

    def compile(self) -> DAG:
        """Build the explicit DAG and validate it.

        Raises
        ------
        PipelineError
            On duplicate node names, two writers of one output, a cycle, or an input
            no node produces and that does not exist; the message names the nodes.
        """
        if self._dag is None:
            b = _Builder()
            b.walk(self.root)
            self._dag = DAG(self.name, b.nodes, b.edges, b.groups, self.check_inputs)
        return self._dag

    def to_dot(self) -> str:
        """Graphviz DOT text of the compiled DAG."""
        return self.compile().to_dot()

    def to_mermaid(self) -> str:
        """Mermaid flowchart text of the compiled DAG."""
        return self.compile().to_mermaid()

    def to_json(self, indent: int | None = None) -> str:
        """JSON of the compiled DAG; :meth:`from_json` gives an equivalent pipeline."""
        return self.compile().to_json(indent)

    @classmethod
    def from_json(cls, text: str, check_inputs: bool = False) -> Pipeline:
        """Rebuild a pipeline from :meth:`to_json` text (validated again)."""
        dag = DAG.from_json(text, check_inputs=check_inputs)
        p = cls(dag.name, Parallel(*dag.nodes.values()), check_inputs=check_inputs)
        p._dag = dag
        return p


def as_dag(pipeline: Pipeline | DAG) -> DAG:
    """Compile a pipeline, or pass a DAG through."""
    if isinstance(pipeline, DAG):
        return pipeline
    if isinstance(pipeline, Pipeline):
        return pipeline.compile()
    raise PipelineError(f"expected a pipecraft Pipeline or DAG, got {pipeline!r}")
