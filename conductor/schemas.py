"""Request and response bodies of the API (pydantic), separate from the ORM models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Plate and well names end up in Dagster partition keys, which may not hold | [ ] ,
PARTITION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
ExperimentType = Literal["ops", "cellpainting"]
Backend = Literal["local", "snakemake", "aws_batch", "slurm"]
Gate = Literal["painting", "barcoding"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_uri(value: str) -> str:
    if "\x00" in value or not value.strip():
        raise ValueError("expected a local folder or s3://bucket/prefix")
    if "://" in value and not value.startswith("s3://"):
        raise ValueError(f"{value!r}: only local paths and s3:// URIs are supported")
    if not value.startswith("s3://") and not value.startswith("/"):
        raise ValueError(f"{value!r}: local paths must be absolute")
    return value.rstrip("/") or "/"


class ProjectCreate(_Strict):
    """A new project."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique name: letters, digits, _ . -")
    dataset_uri: str = Field(max_length=2000, description="Dataset root (read-only input).")
    workspace_uri: str = Field(max_length=2000, description="Where outputs are written.")
    experiment_type: ExperimentType = "ops"
    grammar: str | None = Field(
        default=None, max_length=2000, description="Path-grammar file; default Gallery layout."
    )
    backend: Backend = "local"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    qc_gates: list[Gate] = Field(
        default_factory=lambda: ["painting", "barcoding"],
        description="QC gates a reviewer must approve per plate before what follows runs "
        "(default both; [] runs through).",
    )

    @field_validator("dataset_uri", "workspace_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v)


class ProjectUpdate(_Strict):
    """Fields to change; absent fields are kept."""

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    dataset_uri: str | None = Field(default=None, max_length=2000)
    workspace_uri: str | None = Field(default=None, max_length=2000)
    experiment_type: ExperimentType | None = None
    grammar: str | None = Field(default=None, max_length=2000)
    backend: Backend | None = None
    backend_options: dict[str, Any] | None = None
    qc_gates: list[Gate] | None = None

    @field_validator("dataset_uri", "workspace_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v)


class ProjectOut(BaseModel):
    """A project as stored."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    dataset_uri: str
    workspace_uri: str
    experiment_type: str
    grammar: str | None
    backend: str
    backend_options: dict[str, Any]
    qc_gates: list[str]
    configured_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Page(BaseModel):
    """One page of a list."""

    total: int
    limit: int
    offset: int


class ProjectPage(Page):
    """A page of projects."""

    items: list[ProjectOut]


class ConfigureRequest(_Strict):
    """What ``configure`` should do beyond inventory and index."""

    experiment: dict[str, Any] | None = Field(
        default=None,
        description="Experiment (roles per arm); default: the template guessed from the index.",
    )


class ConfigureOut(BaseModel):
    """Outcome of inventory + index + experiment validation."""

    inventory_files: int
    index: str
    experiment: dict[str, Any]
    plates: list[str]


class Selection(_Strict):
    """What to materialise. Empty lists mean everything known.

    ``stale_only`` keeps only partitions that are missing, failed or older than their
    upstream.
    """

    assets: list[str] = Field(default_factory=list, max_length=100)
    plates: list[str] = Field(default_factory=list, max_length=1000)
    wells: list[str] = Field(default_factory=list, max_length=2000)
    stale_only: bool = False

    @field_validator("plates", "wells")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        import re

        for v in values:
            if not re.fullmatch(PARTITION_NAME, v):
                raise ValueError(f"{v!r}: expected letters, digits, _ . - (no | [ ] ,)")
        return values

    @field_validator("assets")
    @classmethod
    def _assets(cls, values: list[str]) -> list[str]:
        import re

        for v in values:
            if not re.fullmatch(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$", v):
                raise ValueError(f"{v!r}: expected an asset name such as illum_cp")
        return values


class StepOut(BaseModel):
    """One Dagster run of a Conductor run: some assets for one partition."""

    dagster_run_id: str
    assets: list[str]
    partition: str | None
    status: str
    materialized: list[str]


class RunOut(BaseModel):
    """A run with its progress."""

    id: int
    project_id: int
    selection: dict[str, Any]
    status: str
    message: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    steps: list[StepOut]
    progress: dict[str, int]


class RunPage(Page):
    """A page of runs."""

    items: list[RunOut]


class PartitionStatusOut(BaseModel):
    """Per asset, per partition: done, failed, stale, running or missing."""

    plates: list[str]
    wells: dict[str, list[str]]
    assets: dict[str, dict[str, str]]
    dimensions: dict[str, list[str]]


class FileOut(BaseModel):
    """A file of the workspace."""

    path: str
    size: int
    modified_ns: int


class FileList(BaseModel):
    """Files under a prefix of the workspace."""

    prefix: str
    items: list[FileOut]
    truncated: bool


class GeneResult(BaseModel):
    """One gene of the screen's results (``results/screen/hits.parquet``)."""

    gene_symbol: str
    n_cells: int
    n_guides: int
    mAP: float | None = Field(description="copairs mean average precision against controls.")
    p_value: float | None
    q_value: float | None = Field(description="Benjamini-Hochberg corrected p.")
    hit: bool
    guide_consistency: float | None = None
    activity_status: str = Field(description="scored, or why the gene could not be.")
    top_features: str | None = Field(None, description="The features that move most, with z.")


class ScreenResultsOut(BaseModel):
    """The screen's gene table, or why there is none yet (``status``, ``message``)."""

    status: Literal["scored", "no_usable_plates", "none"]
    message: str
    plates: list[str]
    excluded: dict[str, str] = Field(description="Plates left out, with the reason.")
    control_label: str
    threshold: float
    unit: str
    n_hits: int
    genes: list[GeneResult]


class GeneResultOut(GeneResult):
    """One gene with its largest feature shifts (median robust z against controls)."""

    feature_shifts: dict[str, float]


class GateDecisionIn(_Strict):
    """A reviewer's decision on one plate's gate."""

    approved: bool = Field(description="true: approve (what follows may run); false: close.")
    comment: str = Field(default="", max_length=5000, description="Why (kept with it).")


class GateDecisionOut(BaseModel):
    """One recorded decision."""

    model_config = ConfigDict(from_attributes=True)

    plate: str
    gate: str
    approved: bool
    decided_by: str
    comment: str
    decided_at: datetime


class GateOut(BaseModel):
    """A plate's gate now: on or off for the project, open or closed, and its history."""

    plate: str
    gate: str
    enabled: bool
    state: str  # approved | closed
    open: bool  # approved for the current report (or the gate is off)
    report: bool  # the report exists
    reason: str
    history: list[GateDecisionOut]
