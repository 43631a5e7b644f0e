"""The step registry: one data row per processing step.

A row says what a step is called, at which level it runs (the whole project, a plate,
or a plate x well), which arms' images it needs, how its ``starrynight`` CLI command is
invoked, which steps' products it reads and which workspace files it writes. The
pipeline builders (:mod:`starrynight.pipelines`), the Dagster assets and their
dependencies (:mod:`dagster_defs`), Conductor's asset list (read from the Dagster graph)
and the tests' asset lists all derive from :data:`STEPS`.

A module author adds a step by writing the algorithm, the module, the CLI command and
one row here (``docs/adding-a-step.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from starrynight import workspace as wsp

Level = Literal["project", "plate", "well"]

#: ``outputs(ws, plate, well)`` -> the workspace URIs a step writes for one partition
#: (``plate``/``well`` are ``""`` at the levels that lack them).
Outputs = Callable[[str, str, str], list[str]]


@dataclass(frozen=True)
class Step:
    """One processing step.

    Parameters
    ----------
    name : str
        Step and Dagster asset name (``[a-z_]+``).
    level : {"project", "plate", "well"}
        The partition it runs for.
    command : tuple of str
        The ``starrynight`` sub-command words, e.g. ``("illum", "apply")``.
    description : str
        One line: what the product is and where it lands.
    group : str
        Dagster asset group.
    needs : tuple of str
        Steps whose products it reads: its Dagster dependencies and, at the same level,
        the file inputs of its pipeline node.
    arms : tuple of str
        Arms (``cp``, ``sbs``) whose images it needs; a partition lacking one of them
        has no such product ("not applicable").
    outputs : callable
        The workspace URIs it writes for a partition (see :data:`Outputs`).
    site_parallel : bool
        Whether the command takes ``--workers`` (sites processed in parallel).
    site_runner : bool
        Whether it runs its sites on :func:`starrynight.siterunner.run_sites` (and so
        takes ``--force``, ``--skip-bad`` and ``--progress``); well-level computations
        (neighbour pairs, mosaic bands, the merge of a well) take ``--force`` only.
    extra_args : tuple of str
        Arguments the pipelines always pass (after the partition's).
    """

    name: str
    level: Level
    command: tuple[str, ...]
    description: str
    group: str
    outputs: Outputs
    needs: tuple[str, ...] = ()
    arms: tuple[str, ...] = ()
    site_parallel: bool = True
    site_runner: bool = True
    extra_args: tuple[str, ...] = ()

    def argv(self, ws: str, plate: str, well: str, workers: int) -> list[str]:
        """CLI arguments of a plate x well step for one partition."""
        if self.level != "well":
            raise ValueError(f"step {self.name}: argv() is for plate x well steps")
        args = [*self.command, "-w", ws, "--plate", plate, "--well", well]
        if self.site_parallel:
            args += ["--workers", str(workers)]
        return [*args, *self.extra_args]


def _well(fn: Callable[[str, str, str], str]) -> Outputs:
    return lambda ws, plate, well: [fn(ws, plate, well)]


STEPS: tuple[Step, ...] = (
    Step(
        "inventory", "plate", ("inventory", "gen"),
        "Every file of the plate: key, size, modified time "
        "(inventory/inventory.parquet, the plate's rows).",
        "catalog", lambda ws, p, w: [wsp.inventory_path(ws)], site_parallel=False,
    ),
    Step(
        "index", "plate", ("index", "gen"),
        "One row per image of the plate: arm, cycle, well, site, channels "
        "(index/index.parquet, the plate's rows).",
        "catalog", lambda ws, p, w: [wsp.index_path(ws)], needs=("inventory",),
        site_parallel=False,
    ),
    Step(
        "experiment", "project", ("exp", "new"),
        "Which channel plays which role, per arm; frame; barcode table "
        "(experiment/experiment.json).",
        "catalog", lambda ws, p, w: [wsp.experiment_path(ws)], needs=("index",),
        site_parallel=False,
    ),
    Step(
        "illum_cp", "plate", ("illum", "calc"),
        "Cell Painting illumination function per channel "
        "(illum/<plate>/<plate>_Illum<Ch>.npy).",
        "illumination", lambda ws, p, w: [wsp.illum_stats_path(ws, p)],
        needs=("index", "experiment"), arms=("cp",),
    ),
    Step(
        "illum_sbs", "plate", ("illum", "calc"),
        "SBS illumination functions per cycle and channel "
        "(illum/<plate>/<plate>_Cycle<k>_Illum<Ch>.npy).",
        # one statistics file per cycle; the builder names them from the index's cycles
        "illumination", lambda ws, p, w: [], needs=("index", "experiment"), arms=("sbs",),
    ),
    Step(
        "corrected_cp", "well", ("illum", "apply"),
        "Illumination-corrected CP images, one TIFF per site and channel "
        "(images_corrected/painting/<plate>-<well>/).",
        "wells", _well(wsp.corrected_dir), needs=("illum_cp", "index"), arms=("cp",),
    ),
    Step(
        "aligned_sbs", "well", ("align",),
        "SBS cycles corrected and aligned to cycle 1, with per-site QC "
        "(images_aligned/barcoding/, alignment/<plate>-<well>/).",
        "wells", _well(wsp.alignment_table_path), needs=("illum_sbs", "index"), arms=("sbs",),
    ),
    Step(
        "segmentation", "well", ("segment",),
        "Nuclei and cell label masks and per-object tables (segmentation/<plate>-<well>/).",
        "wells", _well(wsp.segmentation_counts_path), needs=("corrected_cp", "experiment"),
        arms=("cp",),
    ),
    Step(
        "barcode_calls", "well", ("barcodes", "call"),
        "Spots, reads and the barcode of every SBS cell (barcodes/<plate>-<well>/).",
        "wells", _well(wsp.cell_barcodes_path), needs=("aligned_sbs", "experiment"),
        arms=("sbs",),
    ),
    Step(
        "geometry", "well", ("geometry",),
        "Every site's place in the well frame per arm (CP; SBS per cycle), refined by "
        "registering overlapping neighbours (geometry/<plate>-<well>/).",
        # A site without an overlapping neighbour keeps its recorded position and says
        # so (shared-grid layouts have none); the asset check counts such sites.
        "wells", _well(wsp.geometry_report_path), needs=("illum_cp", "index", "experiment"),
        arms=("cp",), site_runner=False, extra_args=("--allow-isolated",),
    ),
    Step(
        "mosaic", "well", ("mosaic",),
        "The well stitched per arm: OME-Zarr pyramid and PNG thumbnail "
        "(mosaics/<plate>-<well>/<arm>.zarr).",
        "wells", lambda ws, p, w: [wsp.mosaic_thumbnail_path(ws, p, w, "cp")],
        needs=("geometry", "corrected_cp", "aligned_sbs"), arms=("cp",), site_runner=False,
    ),
    # The QC gates: a reviewer approves a plate's report before its expensive steps run
    # (the Dagster asset carries the blocking check; starrynight.gates holds decisions).
    Step(
        "qc_painting", "plate", ("qc", "report"),
        "Painting QC report of the plate for its gate: illumination, segmentation "
        "overlays, cells per site (qc_reports/<plate>/painting/).",
        "qc", lambda ws, p, w: [wsp.qc_index_path(ws, p, "painting")],
        needs=("illum_cp", "corrected_cp", "segmentation", "geometry"), arms=("cp",),
        site_parallel=False, site_runner=False, extra_args=("--report", "painting"),
    ),
    Step(
        "qc_barcoding", "plate", ("qc", "report"),
        "Barcoding QC report of the plate for its gate: alignment, base frequencies, "
        "read matching and quality (qc_reports/<plate>/barcoding/).",
        "qc", lambda ws, p, w: [wsp.qc_index_path(ws, p, "barcoding")],
        needs=("illum_sbs", "aligned_sbs", "barcode_calls"), arms=("sbs",),
        site_parallel=False, site_runner=False, extra_args=("--report", "barcoding"),
    ),
    Step(
        "merge", "well", ("merge",),
        "Every CP cell once, matched to its SBS cell in the well frame: transform, "
        "statuses, barcode and gene (merge/<plate>-<well>/).",
        "wells", _well(wsp.merge_report_path),
        needs=("segmentation", "barcode_calls", "geometry", "qc_barcoding"),
        arms=("cp", "sbs"),
        site_parallel=False, site_runner=False,
    ),
    # After the merge: a report per plate that gates nothing (no reviewer's approval is
    # asked for after the merge). Not in group "qc": that group is the gates.
    Step(
        "qc_merge", "plate", ("qc", "report"),
        "After-merge QC report of the plate: match rate per well with the merge checks' "
        "thresholds, match distances, registration residuals (qc_reports/<plate>/merge/).",
        "merge_qc", lambda ws, p, w: [wsp.qc_index_path(ws, p, "merge")],
        needs=("merge",), arms=("cp", "sbs"),
        site_parallel=False, site_runner=False, extra_args=("--report", "merge"),
    ),
    Step(
        "cell_features", "well", ("analysis", "run"),
        "One row per CP cell: barcode, gene and features (features/<plate>-<well>/).",
        "wells", _well(wsp.cell_features_path),
        needs=("segmentation", "barcode_calls", "merge", "qc_painting"), arms=("cp", "sbs"),
    ),
    Step(
        "gene_summary", "plate", ("analysis", "summary"),
        "Per-gene cell counts and median features of a plate "
        "(features/<plate>_gene_summary.parquet).",
        "analysis", lambda ws, p, w: [wsp.gene_summary_path(ws, p)], needs=("cell_features",),
        site_parallel=False,
    ),
    # A plate without non-targeting control cells cannot be normalised: with
    # --allow-no-controls its report says so (status no_controls) and the screen leaves
    # it out and lists it, instead of one plate failing the screen's results.
    Step(
        "plate_profiles", "plate", ("results", "profiles"),
        "A plate's cells filtered and robust z-scored to its own non-targeting controls; "
        "median profile per well x sgRNA (results/<plate>/).",
        "results", lambda ws, p, w: [wsp.plate_profiles_report_path(ws, p)],
        needs=("cell_features",), site_parallel=False, extra_args=("--allow-no-controls",),
    ),
    Step(
        "screen_hits", "project", ("results", "hits"),
        "Per-gene profiles across plates, phenotypic activity (copairs mAP, p, q), hits "
        "and their top features, volcano plot (results/screen/).",
        "results", lambda ws, p, w: [wsp.screen_results_path(ws, "screen.json")],
        needs=("plate_profiles",), site_parallel=False, extra_args=("--allow-no-controls",),
    ),
)  # fmt: skip

BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}


def step(name: str) -> Step:
    """The registry row of ``name``.

    Raises
    ------
    KeyError
        Naming the known steps.
    """
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(BY_NAME)}") from None


def steps_at(level: Level) -> tuple[Step, ...]:
    """The steps of one level, in registry (dependency) order."""
    return tuple(s for s in STEPS if s.level == level)


def names_at(level: Level) -> tuple[str, ...]:
    """Names of :func:`steps_at`."""
    return tuple(s.name for s in steps_at(level))


def same_level_inputs(s: Step, ws: str, plate: str, well: str) -> list[str]:
    """The files ``s`` reads that steps of its own level write (its node's inputs)."""
    return [
        uri
        for need in s.needs
        if BY_NAME[need].level == s.level
        for uri in BY_NAME[need].outputs(ws, plate, well)
    ]


def applicable(s: Step, arms: Iterable[str]) -> bool:
    """Whether a partition holding images of ``arms`` can have the product of ``s``."""
    present = set(arms)
    return bool(present) and set(s.arms) <= present


def topological(names: Sequence[str]) -> list[str]:
    """``names`` in registry order (which is a dependency order)."""
    wanted = set(names)
    return [s.name for s in STEPS if s.name in wanted]
