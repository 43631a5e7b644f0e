"""Nodes: the units of work a pipeline is made of.

A node has a unique name, the paths it reads and writes (local paths or ``s3://`` URIs,
files or directories), resource hints and a retry count. Two kinds exist:

- :class:`Command` runs an argv list as a process (optionally inside a container image,
  for backends that use one);
- :class:`PyFunction` calls a module-level Python function by reference
  (``module:qualname`` plus JSON keyword arguments), so it can be serialised and run
  in another process with ``python -m pipecraft.run_node``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipecraft.errors import BackendConfigError, PipelineError

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-\[\]=,@+]*$")


@dataclass(frozen=True)
class Resources:
    """Resource hints of a node.

    Parameters
    ----------
    cpus : int
        Number of CPU cores the node uses (>= 1).
    memory_mb : int
        Memory the node needs on its first attempt, in MiB (>= 1).
    time_min : int, optional
        Wall-time limit in minutes (Slurm ``--time``, AWS Batch attempt timeout); None
        leaves it to the cluster's default.
    max_memory_mb : int, optional
        Cap on the memory of retries after an out-of-memory failure, which ask for
        ``memory_mb x attempt`` (see :mod:`pipecraft.retry`); None means no cap but the
        backend's own.
    queue : str, optional
        Where to run: the Slurm partition or AWS Batch job queue (None: the backend's).
    account : str, optional
        Slurm account charged for the job (None: the backend's; ignored elsewhere).
    """

    cpus: int = 1
    memory_mb: int = 1024
    time_min: int | None = None
    max_memory_mb: int | None = None
    queue: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cpus, int) or self.cpus < 1:
            raise PipelineError(f"Resources.cpus: got {self.cpus!r}, expected an integer >= 1")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 1:
            raise PipelineError(
                f"Resources.memory_mb: got {self.memory_mb!r}, expected an integer >= 1"
            )
        if self.time_min is not None and (not isinstance(self.time_min, int) or self.time_min < 1):
            raise PipelineError(
                f"Resources.time_min: got {self.time_min!r}, expected an integer >= 1 or None"
            )
        if self.max_memory_mb is not None and (
            not isinstance(self.max_memory_mb, int) or self.max_memory_mb < self.memory_mb
        ):
            raise PipelineError(
                f"Resources.max_memory_mb: got {self.max_memory_mb!r}, expected an integer >= "
                f"memory_mb ({self.memory_mb}) or None"
            )
        for name in ("queue", "account"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise PipelineError(
                    f"Resources.{name}: got {value!r}, expected a non-empty name or None"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form; hints left at None are omitted."""
        d: dict[str, Any] = {"cpus": self.cpus, "memory_mb": self.memory_mb}
        for name in ("time_min", "max_memory_mb", "queue", "account"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d


def normalize_path(path: str) -> str:
    """Return the canonical spelling of a node path, used to match readers and writers.

    Parameters
    ----------
    path : str
        A local path or a URI such as ``s3://bucket/key``.

    Returns
    -------
    str
        The path without trailing slashes or ``.``/``..`` segments; local paths are made
        absolute so ``out/x`` and ``./out/x`` are the same file.
    """
    import os.path
    import posixpath

    if "://" in path:
        scheme, rest = path.split("://", 1)
        rest = posixpath.normpath(rest) if rest else rest
        return f"{scheme}://{rest}".rstrip("/")
    return os.path.abspath(path)


def _check_paths(node: str, what: str, paths: Iterable[str]) -> tuple[str, ...]:
    if isinstance(paths, str):
        raise PipelineError(
            f"node {node!r}: {what} must be a list of paths, got the string {paths!r}"
        )
    out = []
    for p in paths:
        if not isinstance(p, str) or not p:
            raise PipelineError(f"node {node!r}: {what} entry {p!r} is not a non-empty path string")
        out.append(p)
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Node:
    """Base class of all nodes; use :class:`Command` or :class:`PyFunction`.

    Parameters
    ----------
    name : str
        Unique name in the pipeline (letters, digits and ``_ . : - [ ] = , @ +``).
    inputs, outputs : sequence of str
        Paths (local or ``s3://``) read and written by the node; a directory output
        covers every path below it.
    resources : Resources
        CPU and memory hints.
    retries : int
        How many times a failed node is retried (0 = run once).
    env : mapping of str to str
        Extra environment variables for the node's process.
    """

    name: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    env: Mapping[str, str] = field(default_factory=dict)

    kind = "node"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise PipelineError(
                f"node name {self.name!r} is invalid: expected letters, digits and "
                "_ . : - [ ] = , @ + (not starting with a punctuation mark)"
            )
        object.__setattr__(self, "inputs", _check_paths(self.name, "inputs", self.inputs))
        object.__setattr__(self, "outputs", _check_paths(self.name, "outputs", self.outputs))
        if not isinstance(self.retries, int) or self.retries < 0:
            raise PipelineError(
                f"node {self.name!r}: retries={self.retries!r}, expected an integer >= 0"
            )
        if not isinstance(self.resources, Resources):
            raise PipelineError(f"node {self.name!r}: resources must be a pipecraft.Resources")
        env = dict(self.env)
        for k, v in env.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise PipelineError(
                    f"node {self.name!r}: env entry {k!r}={v!r}, expected string to string"
                )
        object.__setattr__(self, "env", env)

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self.to_dict() == other.to_dict()

    def _payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible description of the node (see :func:`node_from_dict`)."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "resources": self.resources.to_dict(),
            "retries": self.retries,
            "env": dict(self.env),
        }
        d.update(self._payload())
        return d

    def fingerprint(self) -> str:
        """Hex digest of everything that defines the work, so a changed command re-runs."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        d = self.to_dict()
        # resources and retries change how, not what, is computed
        d.pop("resources")
        d.pop("retries")
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        # nodes are frozen, so the digest can be kept
        object.__setattr__(self, "_fingerprint", digest)
        return digest


@dataclass(frozen=True, eq=False)
class Command(Node):
    """A node that runs ``argv`` as a process.

    Parameters
    ----------
    argv : sequence of str
        Program and arguments; never passed through a shell.
    image : str, optional
        Container image for backends that run containers (AWS Batch; Snakemake with
        ``--software-deployment-method apptainer``). The local backend runs on the host.
    """

    argv: tuple[str, ...] = ()
    image: str | None = None

    kind = "command"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.argv, str):
            raise PipelineError(
                f"node {self.name!r}: argv must be a list of strings, got the string {self.argv!r}"
            )
        argv = tuple(self.argv)
        if not argv:
            raise PipelineError(f"node {self.name!r}: argv is empty, expected a program name")
        for a in argv:
            if not isinstance(a, str):
                raise PipelineError(f"node {self.name!r}: argv entry {a!r} is not a string")
        object.__setattr__(self, "argv", argv)

    def _payload(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "image": self.image}


_REFS: dict[Callable[..., Any], str] = {}


def function_ref(func: Callable[..., Any]) -> str:
    """Return ``module:qualname`` of a module-level function, checking it resolves back.

    Raises
    ------
    PipelineError
        If the function is a lambda, a closure or otherwise not importable by name.
    """
    try:
        if func in _REFS:
            return _REFS[func]
    except TypeError:  # unhashable callable
        pass
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise PipelineError(
            f"function {func!r} cannot be referenced by name: expected a module-level function"
        )
    ref = f"{module}:{qualname}"
    try:
        found = resolve_function(ref)
    except PipelineError:
        found = None
    if found is not func:
        raise PipelineError(
            f"function {ref} does not resolve back to {func!r}: expected a module-level function"
        )
    _REFS[func] = ref
    return ref


def resolve_function(ref: str) -> Callable[..., Any]:
    """Import and return the function named by ``module:qualname``."""
    if ":" not in ref:
        raise PipelineError(f"function reference {ref!r}: expected 'module:qualname'")
    module_name, qualname = ref.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PipelineError(f"function reference {ref!r} cannot be imported: {exc}") from None
    if not callable(obj):
        raise PipelineError(f"function reference {ref!r} is not callable")
    return obj


@dataclass(frozen=True, eq=False)
class PyFunction(Node):
    """A node that calls a module-level Python function with JSON keyword arguments.

    Parameters
    ----------
    func : callable or str
        The function, or its ``module:qualname`` reference.
    kwargs : mapping
        Keyword arguments; must be JSON-serialisable so the node can run elsewhere.
    """

    func: Any = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    kind = "pyfunction"

    def __post_init__(self) -> None:
        super().__post_init__()
        ref = self.func if isinstance(self.func, str) else None
        if ref is None:
            if not callable(self.func):
                raise PipelineError(
                    f"node {self.name!r}: func={self.func!r}, expected a function or "
                    "'module:qualname'"
                )
            ref = function_ref(self.func)
        elif ":" not in ref:
            raise PipelineError(f"node {self.name!r}: func {ref!r}, expected 'module:qualname'")
        object.__setattr__(self, "func", ref)
        kwargs = dict(self.kwargs)
        try:
            if kwargs:
                json.dumps(kwargs)
        except (TypeError, ValueError) as exc:
            raise PipelineError(
                f"node {self.name!r}: kwargs are not JSON-serialisable ({exc})"
            ) from None
        object.__setattr__(self, "kwargs", kwargs)

    def _payload(self) -> dict[str, Any]:
        return {"func": self.func, "kwargs": dict(self.kwargs)}

    def call(self) -> Any:
        """Import the function and call it with the node's keyword arguments."""
        return resolve_function(self.func)(**self.kwargs)


def node_from_dict(d: Mapping[str, Any]) -> Node:
    """Rebuild a node from :meth:`Node.to_dict` output."""
    try:
        kind = d["kind"]
        common: dict[str, Any] = {
            "name": d["name"],
            "inputs": tuple(d.get("inputs", ())),
            "outputs": tuple(d.get("outputs", ())),
            "resources": Resources(**d.get("resources", {})),
            "retries": d.get("retries", 0),
            "env": d.get("env", {}),
        }
        if kind == "command":
            return Command(argv=tuple(d["argv"]), image=d.get("image"), **common)
        if kind == "pyfunction":
            return PyFunction(func=d["func"], kwargs=d.get("kwargs", {}), **common)
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"node description {dict(d)!r} is malformed: {exc}") from None
    raise PipelineError(f"node kind {kind!r} is unknown: expected 'command' or 'pyfunction'")


def node_argv(node: Node, python: str = sys.executable, with_env: bool = True) -> list[str]:
    """The argv that runs ``node`` in a fresh process.

    Parameters
    ----------
    node : Node
        A Command (its argv) or PyFunction (``python -m pipecraft.run_node <json>``).
    python : str
        Interpreter for PyFunction nodes.
    with_env : bool
        Prefix ``env K=V ...`` for the node's environment (backends that pass the
        environment separately say False).
    """
    if isinstance(node, Command):
        argv = list(node.argv)
    elif isinstance(node, PyFunction):
        if node.func.startswith("__main__:"):
            raise BackendConfigError(
                f"node {node.name!r}: function {node.func} lives in __main__, which another "
                "process cannot import; move it into a module"
            )
        argv = [python, "-m", "pipecraft.run_node", json.dumps(node.to_dict())]
    else:
        raise BackendConfigError(f"node {node.name!r}: kind {node.kind!r} cannot run as a process")
    if with_env and node.env:
        argv = ["env", *(f"{k}={v}" for k, v in node.env.items()), *argv]
    return argv
