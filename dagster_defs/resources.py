"""Resources: the project (dataset, workspace, experiment, QC thresholds) and the backend.

Both are built from one configuration so a single code location serves whichever project
its environment names:

- ``STARRYNIGHT_PROJECT_FILE``: optional JSON file with the fields ``dataset_uri``,
  ``workspace_uri``, ``backend``, ``backend_options`` (and optionally ``experiment_file``,
  ``stable_seconds``, ``qc``, ``tick_seconds`` — seconds between the daemon's sensor
  and automation ticks, default 30 —, ``resources`` — per-step overrides of
  :data:`starrynight.pipelines.resources.DEFAULTS`);
- ``STARRYNIGHT_DATASET_URI``, ``STARRYNIGHT_WORKSPACE_URI``, ``STARRYNIGHT_BACKEND``
  (``local`` | ``snakemake`` | ``slurm`` | ``aws_batch``; default ``local``) override
  the file.

A code location loads even when nothing is configured (the UI then says so); assets and
the sensor refuse to run with one clear message instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, ValidationError, field_validator, model_validator

from pipecraft import AwsBatchBackend, Backend, LocalBackend, SlurmBackend, SnakemakeBackend
from pipecraft.errors import PipecraftError
from starrynight import storage
from starrynight.errors import UserError
from starrynight.modules.qc_merge import MIN_MATCH_RATE, WARN_MATCH_RATE
from starrynight.pipelines import Runner
from starrynight.pipelines.resources import StepResources, step_table

BACKENDS = ("local", "snakemake", "slurm", "aws_batch")
_PROJECT_KEYS = {
    "dataset_uri",
    "workspace_uri",
    "backend",
    "backend_options",
    "experiment_file",
    "stable_seconds",
    "tick_seconds",
    "qc",
    "results",
    "resources",
}


class ConfigError(ValueError):
    """The project configuration (file or environment) is invalid; one-line message."""


class QCThresholds(dg.Config):
    """Limits the asset checks apply."""

    max_flagged_site_share: float = Field(
        0.25, description="Largest share of sites alignment may flag."
    )
    min_cells_per_site: float = Field(1.0, description="Fewest cells a site may hold.")
    max_cells_per_site: float = Field(20000.0, description="Most cells a site may hold.")
    max_flagged_segmentation_share: float = Field(
        0.25, description="Largest share of sites segmentation may flag."
    )
    min_assignment_rate: float = Field(
        0.3, description="Smallest share of SBS cells that must get a barcode."
    )
    max_unplaced_site_share: float = Field(
        0.1, description="Largest share of sites the geometry refinement may leave unplaced."
    )
    warn_match_rate: float = Field(
        WARN_MATCH_RATE,
        description="Merge: warn when fewer CP cells inside the SBS area are matched.",
    )
    min_match_rate: float = Field(
        MIN_MATCH_RATE,
        description="Merge: below this share of matched CP cells the well is blocked.",
    )
    gates: list[str] = Field(
        default_factory=list,
        description="QC gates this project holds for a reviewer's approval: painting, "
        "barcoding (default none: every step runs through).",
    )

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, value: list[str]) -> list[str]:
        from starrynight.gates import GATES

        unknown = [g for g in value if g not in GATES]
        if unknown:
            raise ValueError(f"unknown gate(s) {unknown}: expected some of {list(GATES)}")
        return value

    @model_validator(mode="after")
    def _match_rates_in_order(self) -> QCThresholds:
        if self.min_match_rate > self.warn_match_rate:
            raise ValueError(
                f"min_match_rate {self.min_match_rate:g} is above warn_match_rate "
                f"{self.warn_match_rate:g}: a well is blocked below the first and warned "
                "below the second"
            )
        return self


class ResultsSettings(dg.Config):
    """How the screen's results are computed (``results`` in the project file)."""

    control_label: str = Field(
        "NTC", description="gene_symbol of the non-targeting control guides (Barcodes.csv)."
    )
    unit: str = Field(
        "guide",
        description="Profiles compared for mAP: guide (well x sgRNA medians) or cell.",
    )
    threshold: float = Field(0.05, description="q-value below which a gene is a hit.")
    null_size: int = Field(10000, description="Permutations of the mAP null distribution.")

    def profiles_args(self) -> list[str]:
        """``results profiles`` options of these settings."""
        return ["--control-label", self.control_label]

    def hits_args(self) -> list[str]:
        """``results hits`` options of these settings."""
        return [
            "--control-label", self.control_label, "--unit", self.unit,
            "--threshold", repr(self.threshold), "--null-size", str(self.null_size),
        ]  # fmt: skip


class StarryNightProject(dg.ConfigurableResource):
    """Where a project's data lives and how it is judged."""

    dataset_uri: str = Field("", description="Dataset root (local folder or s3://).")
    workspace_uri: str = Field("", description="Workspace for every product (local or s3://).")
    experiment_file: str | None = Field(
        None,
        description="The user's experiment file; absent: the template guessed from the index.",
    )
    stable_seconds: float = Field(
        60.0, description="A new plate starts once no file changed for this many seconds."
    )
    qc: QCThresholds = Field(default_factory=QCThresholds, description="Asset check limits.")
    results: ResultsSettings = Field(
        default_factory=ResultsSettings, description="Control label, unit and hit threshold."
    )

    def require(self) -> tuple[str, str]:
        """``(dataset_uri, workspace_uri)``, or a Dagster failure saying what to set."""
        missing = [
            env
            for value, env in (
                (self.dataset_uri, "STARRYNIGHT_DATASET_URI"),
                (self.workspace_uri, "STARRYNIGHT_WORKSPACE_URI"),
            )
            if not value
        ]
        if missing:
            raise dg.Failure(
                description="no StarryNight project configured: set "
                + " and ".join(missing)
                + " (or STARRYNIGHT_PROJECT_FILE) for the code location"
            )
        return self.dataset_uri, self.workspace_uri


class PipecraftBackend(dg.ConfigurableResource):
    """The pipecraft backend every asset hands its pipeline to."""

    kind: str = Field("local", description="local, snakemake, slurm or aws_batch.")
    workdir: str | None = Field(
        None,
        description="Local folder for node logs and markers "
        "(default: <workspace>/.pipecraft, or ~/.cache/starrynight/pipecraft for s3).",
    )
    max_workers: int | None = Field(None, description="Local/Snakemake worker slots.")
    step_workers: int | None = Field(
        None, description="--workers passed to each step (default: the step's CPUs)."
    )
    executor: str | None = Field(None, description="Snakemake executor plugin.")
    job_queue: str | None = Field(None, description="AWS Batch job queue.")
    image: str | None = Field(None, description="AWS Batch container image.")
    region: str | None = Field(None, description="AWS region.")
    staging_uri: str | None = Field(None, description="s3:// prefix for large array specs.")
    partition: str | None = Field(None, description="Slurm partition (default: the cluster's).")
    account: str | None = Field(None, description="Slurm account charged for the jobs.")
    qos: str | None = Field(None, description="Slurm quality of service.")
    sbatch_args: list[str] = Field(
        default_factory=list, description="Further sbatch options for every Slurm job."
    )
    max_memory_mb: int | None = Field(
        None,
        description="Largest memory an out-of-memory retry may ask for on this cluster or "
        "queue (Slurm, AWS Batch), besides each step's own cap.",
    )
    step_resources: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-step overrides of the default resources (the project's "
        "'resources'): cpus, memory_mb, time_min, max_memory_mb, queue, account.",
    )
    poll_seconds: float = Field(1.0, description="Interval between status relays.")
    log_tail: int = Field(200, description="Last log lines of each node relayed to Dagster.")
    cli: list[str] | None = Field(
        None, description="How a node invokes the starrynight CLI (default per backend)."
    )

    def runner(self, env: Mapping[str, str] | None = None) -> Runner:
        """The CLI runner matching this backend (the image's entry point on AWS Batch)."""
        if self.cli:
            argv = tuple(self.cli)
        elif self.kind == "aws_batch":
            argv = ("starrynight",)
        else:
            argv = (sys.executable, "-m", "starrynight.cli")
        image = self.image if self.kind == "aws_batch" else None
        return Runner(
            argv=argv,
            image=image,
            env=dict(env or {}),
            step_workers=self.step_workers,
            resources=self.step_table(),
        )

    def step_table(self) -> dict[str, StepResources]:
        """Resources per step: the defaults with this project's overrides."""
        return step_table(self.step_resources)

    def build(self, workspace: str) -> Backend:
        """The pipecraft backend for ``workspace``.

        Raises
        ------
        dagster.Failure
            When the configuration cannot make a backend (unknown kind, no job queue...).
        """
        try:
            if self.kind == "aws_batch":
                if not self.job_queue:
                    raise ConfigError(
                        "backend aws_batch needs backend_options.job_queue (an AWS Batch queue)"
                    )
                return AwsBatchBackend(
                    self.job_queue,
                    self.image,
                    region=self.region,
                    staging_uri=self.staging_uri,
                    poll_first=min(self.poll_seconds, 1.0),
                    poll_max=max(self.poll_seconds, 1.0),
                    max_memory_mb=self.max_memory_mb,
                )
            workdir = self.workdir or default_workdir(workspace, self.kind)
            if self.kind == "slurm":
                if storage.is_s3(workspace) and not self.workdir:
                    raise ConfigError(
                        "backend slurm needs backend_options.workdir (a folder every compute "
                        "node sees) when the workspace is on s3://"
                    )
                return SlurmBackend(
                    workdir,
                    partition=self.partition,
                    account=self.account,
                    qos=self.qos,
                    sbatch_args=self.sbatch_args,
                    max_memory_mb=self.max_memory_mb,
                    poll_first=min(self.poll_seconds, 1.0),
                    poll_max=max(self.poll_seconds, 1.0),
                )
            if self.kind == "snakemake":
                return SnakemakeBackend(workdir, cores=self.max_workers, executor=self.executor)
            if self.kind == "local":
                return LocalBackend(workdir, max_workers=self.max_workers)
            raise ConfigError(f"backend {self.kind!r} is unknown: expected one of {BACKENDS}")
        except (ConfigError, PipecraftError) as exc:
            raise dg.Failure(description=f"backend configuration: {exc}") from None


def default_workdir(workspace: str, kind: str) -> str:
    """Local folder for a backend's logs and completion markers."""
    if storage.is_s3(workspace):
        import hashlib

        digest = hashlib.sha1(workspace.encode()).hexdigest()[:12]
        return str(Path.home() / ".cache" / "starrynight" / "pipecraft" / f"{kind}-{digest}")
    return str(Path(workspace) / ".pipecraft" / kind)


def load_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The project settings from ``STARRYNIGHT_PROJECT_FILE`` and the environment.

    Returns
    -------
    dict
        Keys of the project file; environment variables override the file.

    Raises
    ------
    ConfigError
        When the file is unreadable, not a JSON object, has unknown keys, or the backend
        is not one of :data:`BACKENDS`.
    """
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    path = env.get("STARRYNIGHT_PROJECT_FILE")
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(
                f"STARRYNIGHT_PROJECT_FILE={path}: cannot read ({exc.strerror})"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object with dataset_uri, workspace_uri")
        unknown = set(data) - _PROJECT_KEYS
        if unknown:
            raise ConfigError(
                f"{path}: unknown field(s) {sorted(unknown)}: expected {sorted(_PROJECT_KEYS)}"
            )
        settings.update(data)
    for key, var in (
        ("dataset_uri", "STARRYNIGHT_DATASET_URI"),
        ("workspace_uri", "STARRYNIGHT_WORKSPACE_URI"),
        ("backend", "STARRYNIGHT_BACKEND"),
    ):
        if env.get(var):
            settings[key] = env[var]
    backend = settings.setdefault("backend", "local")
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown: expected one of {', '.join(BACKENDS)}")
    options = settings.setdefault("backend_options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"backend_options {options!r}: expected a JSON object")
    known = set(PipecraftBackend.model_fields) - {"kind", "step_resources"}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(
            f"backend_options: unknown field(s) {sorted(unknown)}: expected some of {sorted(known)}"
        )
    try:
        step_table(settings.get("resources"))
    except UserError as exc:
        raise ConfigError(str(exc)) from None
    qc = settings.get("qc")
    if qc is not None:
        if not isinstance(qc, dict):
            raise ConfigError(f"qc {qc!r}: expected a JSON object")
        try:
            QCThresholds(**qc)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(["qc", *(str(p) for p in err["loc"])])
            message = str(err["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{where}: {message}") from None
    return settings


def build_resources(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"project": StarryNightProject, "backend": PipecraftBackend}`` from settings."""
    project_kw: dict[str, Any] = {
        "dataset_uri": settings.get("dataset_uri", "") or "",
        "workspace_uri": settings.get("workspace_uri", "") or "",
        "experiment_file": settings.get("experiment_file"),
    }
    if "stable_seconds" in settings:
        project_kw["stable_seconds"] = float(settings["stable_seconds"])
    if settings.get("qc"):
        project_kw["qc"] = QCThresholds(**settings["qc"])
    if settings.get("results"):
        project_kw["results"] = ResultsSettings(**settings["results"])
    backend = PipecraftBackend(
        kind=settings.get("backend", "local"),
        step_resources=dict(settings.get("resources") or {}),
        **settings["backend_options"],
    )
    return {"project": StarryNightProject(**project_kw), "backend": backend}
