"""Default resources of every step, and a project's overrides of them.

One row per step (the step registry's names): CPU cores, memory of the first attempt,
wall time, and the cap a retry after an out-of-memory kill may grow to (pipecraft asks
for ``memory x attempt`` up to it, on every backend). The memory figures are about twice
the peak measured by ``bench/bench_site_costs.py`` for one process at 1480 x 1480 px and
12 SBS cycles with ``--workers 1`` (the steps run ``--workers 2``), with head-room for
denser images; the times cover a 1,536-site plate (per-plate steps) or a 256-site well
(per-well steps) at the measured per-site CPU cost several times over. See
``docs/scaling.md``. A project overrides any field per step in its configuration::

    "resources": {"segmentation": {"memory_mb": 8000, "time_min": 240},
                  "cell_features": {"queue": "bigmem"}}

``queue`` is the Slurm partition or AWS Batch job queue of the step and ``account`` its
Slurm account (both default to the backend's). The row ``default`` serves any step the
table does not name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pipecraft.errors import PipelineError
from pipecraft.node import Resources
from starrynight.errors import UserError

#: Name of the row used for steps the table does not list.
DEFAULT_STEP = "default"


@dataclass(frozen=True)
class StepResources:
    """What one node of a step asks for.

    Parameters
    ----------
    cpus : int
        CPU cores.
    memory_mb : int
        Memory of the first attempt, MiB.
    time_min : int or None
        Wall-time limit, minutes (None: the cluster's default).
    max_memory_mb : int or None
        Largest memory an out-of-memory retry may ask for (None: no cap but the backend's).
    queue : str or None
        Slurm partition or AWS Batch job queue (None: the backend's).
    account : str or None
        Slurm account (None: the backend's).
    """

    cpus: int = 1
    memory_mb: int = 2048
    time_min: int | None = None
    max_memory_mb: int | None = None
    queue: str | None = None
    account: str | None = None

    def to_pipecraft(self) -> Resources:
        """The :class:`pipecraft.Resources` a node of this step carries."""
        return Resources(**asdict(self))


#: Default resources per step (keys are the step registry's step names).
DEFAULTS: Mapping[str, StepResources] = {
    # per plate: listing and parsing ~10^4-10^5 file names (measured peaks 126-151 MB
    # for a small plate; the tables grow with the files)
    "inventory": StepResources(cpus=1, memory_mb=1024, time_min=60, max_memory_mb=8192),
    "index": StepResources(cpus=1, memory_mb=2048, time_min=60, max_memory_mb=8192),
    "experiment": StepResources(cpus=1, memory_mb=1024, time_min=15, max_memory_mb=4096),
    # per plate (CP) and per plate x cycle (SBS): streams every image into one float
    # accumulator per channel (peaks 382 / 490 MB)
    "illum_cp": StepResources(cpus=1, memory_mb=2048, time_min=240, max_memory_mb=8192),
    "illum_sbs": StepResources(cpus=1, memory_mb=2048, time_min=120, max_memory_mb=8192),
    # per plate x well, sites in parallel (--workers 2); peaks per process at
    # --workers 1 (bench_site_costs, 1480 px): corrected 228 MB, aligned 1,061 MB (12
    # cycles), segmentation 349 MB, barcodes 1,732 MB (12 cycles), features 4,640 MB
    # (every CellProfiler family; ~103 CPU-s per CP site: 256 sites take ~3.7 h on 2 CPUs)
    "corrected_cp": StepResources(cpus=2, memory_mb=2048, time_min=120, max_memory_mb=8192),
    "aligned_sbs": StepResources(cpus=2, memory_mb=4096, time_min=180, max_memory_mb=16384),
    "segmentation": StepResources(cpus=2, memory_mb=3072, time_min=180, max_memory_mb=12288),
    "barcode_calls": StepResources(cpus=2, memory_mb=6144, time_min=180, max_memory_mb=24576),
    "cell_features": StepResources(cpus=2, memory_mb=10240, time_min=300, max_memory_mb=32768),
    # per plate x well: the geometry step holds about one row of overlap crops (peak 949
    # MB at 1480 px and 400 sites, bench_geometry), the mosaic one band per level (452
    # MB), the merge every nucleus of the well (4.4 s / 100k cells); bench_site_costs at 6
    # CP sites: 232 / 740 / 223 MB
    "geometry": StepResources(cpus=2, memory_mb=2048, time_min=120, max_memory_mb=8192),
    "mosaic": StepResources(cpus=2, memory_mb=2048, time_min=120, max_memory_mb=8192),
    "merge": StepResources(cpus=1, memory_mb=2048, time_min=60, max_memory_mb=8192),
    # per plate: one row per gene from every well's cell table
    "gene_summary": StepResources(cpus=1, memory_mb=4096, time_min=60, max_memory_mb=16384),
    # per plate: the plate's feature matrix in float32 (1,000,000 cells x 500 features
    # is 2 GB; bench/bench_results.py); per screen: per-well guide profiles and sampled
    # cells only
    "plate_profiles": StepResources(cpus=1, memory_mb=8192, time_min=120, max_memory_mb=32768),
    "screen_hits": StepResources(cpus=2, memory_mb=4096, time_min=120, max_memory_mb=16384),
    # per plate: the QC reports read the wells' small tables and a sample of site images
    # (not measured yet: sized like the gene summary, which also reads every well's table)
    "qc_painting": StepResources(cpus=1, memory_mb=4096, time_min=60, max_memory_mb=16384),
    "qc_barcoding": StepResources(cpus=1, memory_mb=4096, time_min=60, max_memory_mb=16384),
    # per plate: every well's merge report and two columns of its cell table
    "qc_merge": StepResources(cpus=1, memory_mb=2048, time_min=30, max_memory_mb=8192),
    DEFAULT_STEP: StepResources(cpus=1, memory_mb=2048, time_min=None, max_memory_mb=8192),
}

_FIELDS = {f.name for f in fields(StepResources)}


def step_table(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    defaults: Mapping[str, StepResources] = DEFAULTS,
) -> dict[str, StepResources]:
    """The resource table of a project: ``defaults`` with its ``overrides`` applied.

    Parameters
    ----------
    overrides : mapping, optional
        Per step name, the fields to change (``cpus``, ``memory_mb``, ``time_min``,
        ``max_memory_mb``, ``queue``, ``account``), as read from the project file.
    defaults : mapping
        The table to start from (:data:`DEFAULTS`).

    Returns
    -------
    dict of str to StepResources

    Raises
    ------
    UserError
        For an unknown step or field, or a value pipecraft rejects; the message names it.
    """
    table = dict(defaults)
    if overrides is None:
        return table
    if not isinstance(overrides, Mapping):
        raise UserError(f"resources: got {overrides!r}, expected an object keyed by step name")
    for step, changes in overrides.items():
        if step not in table:
            raise UserError(
                f"resources.{step}: unknown step; expected one of {', '.join(sorted(table))}"
            )
        if not isinstance(changes, Mapping):
            raise UserError(f"resources.{step}: got {changes!r}, expected an object of fields")
        unknown = set(changes) - _FIELDS
        if unknown:
            raise UserError(
                f"resources.{step}: unknown field(s) {', '.join(sorted(unknown))}; expected "
                f"some of {', '.join(sorted(_FIELDS))}"
            )
        row = replace(table[step], **dict(changes))
        if "memory_mb" in changes and "max_memory_mb" not in changes:
            # a larger first request keeps the default's head-room for retries
            base = table[step]
            if base.max_memory_mb is not None:
                ratio = base.max_memory_mb // base.memory_mb
                row = replace(row, max_memory_mb=max(row.memory_mb * ratio, row.memory_mb))
        try:
            row.to_pipecraft()
        except PipelineError as exc:
            raise UserError(f"resources.{step}: {exc}") from None
        table[step] = row
    return table


def resources_for(step: str, table: Mapping[str, StepResources] | None = None) -> Resources:
    """The pipecraft resources of a node of ``step`` (the ``default`` row if unlisted)."""
    rows = DEFAULTS if table is None else table
    return rows.get(step, rows[DEFAULT_STEP]).to_pipecraft()
