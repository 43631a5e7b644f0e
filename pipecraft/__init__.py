"""Pipecraft: domain-agnostic pipelines with local, Snakemake, Slurm and AWS Batch backends.

A module author describes work as nodes (:class:`Command`, :class:`PyFunction`) composed
with :class:`Seq`, :class:`Parallel` and :class:`Scatter` into a :class:`Pipeline`; an
infrastructure maintainer picks the backend that runs it. Pipecraft knows nothing of
the science built on it and imports nothing from it.
"""

from pipecraft.backends.aws_batch import AwsBatchBackend
from pipecraft.backends.base import Backend, NodeState, RunHandle, RunStatus
from pipecraft.backends.local import LocalBackend
from pipecraft.backends.slurm import SlurmBackend
from pipecraft.backends.snakemake import SnakemakeBackend
from pipecraft.errors import BackendConfigError, PipecraftError, PipelineError
from pipecraft.node import Command, Node, PyFunction, Resources
from pipecraft.pipeline import DAG, Parallel, Pipeline, Scatter, Seq

__all__ = [
    "DAG",
    "AwsBatchBackend",
    "Backend",
    "BackendConfigError",
    "Command",
    "LocalBackend",
    "Node",
    "NodeState",
    "Parallel",
    "PipecraftError",
    "Pipeline",
    "PipelineError",
    "PyFunction",
    "Resources",
    "RunHandle",
    "RunStatus",
    "Scatter",
    "Seq",
    "SlurmBackend",
    "SnakemakeBackend",
]
