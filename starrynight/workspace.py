"""Where every product lives inside a workspace (local folder or ``s3://`` prefix).

The names follow PCPIP's conventions so Cell Painting Gallery users recognise them.
This module is the only place that spells them; everything else asks it.
"""

from __future__ import annotations

from starrynight import storage


def inventory_path(workspace: str) -> str:
    """``inventory/inventory.parquet``."""
    return storage.join(workspace, "inventory", "inventory.parquet")


def index_path(workspace: str) -> str:
    """``index/index.parquet``."""
    return storage.join(workspace, "index", "index.parquet")


def rejects_path(workspace: str) -> str:
    """``index/rejects.parquet``: paths that are not images of the layout, with reasons."""
    return storage.join(workspace, "index", "rejects.parquet")


def experiment_path(workspace: str) -> str:
    """``experiment/experiment.json``."""
    return storage.join(workspace, "experiment", "experiment.json")


def illum_dir(workspace: str, plate: str) -> str:
    """``illum/<plate>``."""
    return storage.join(workspace, "illum", plate)


def illum_path(workspace: str, plate: str, channel: str, cycle: int | None = None) -> str:
    """CP ``illum/<plate>/<plate>_Illum<Ch>.npy``; SBS ``..._Cycle<k>_Illum<Ch>.npy``.

    ``channel`` is the normalised channel name (no spaces or hyphens).
    """
    stem = f"{plate}_Illum{channel}" if cycle is None else f"{plate}_Cycle{cycle}_Illum{channel}"
    return storage.join(illum_dir(workspace, plate), f"{stem}.npy")


def corrected_dir(workspace: str, plate: str, well: str) -> str:
    """``images_corrected/painting/<plate>-<well>``."""
    return storage.join(workspace, "images_corrected", "painting", f"{plate}-{well}")


def corrected_path(workspace: str, plate: str, well: str, site: int, channel: str) -> str:
    """``.../Plate_<plate>_Well_<well>_Site_<site>_Corr<Ch>.tiff``."""
    name = f"Plate_{plate}_Well_{well}_Site_{site}_Corr{channel}.tiff"
    return storage.join(corrected_dir(workspace, plate, well), name)


def aligned_dir(workspace: str, plate: str, well: str, site: int) -> str:
    """``images_aligned/barcoding/<plate>-Well<well>-<site>``."""
    return storage.join(workspace, "images_aligned", "barcoding", f"{plate}-Well{well}-{site}")


def aligned_path(workspace: str, plate: str, well: str, site: int, cycle: int, channel: str) -> str:
    """``.../Plate_<plate>_Well_<well>_Site_<site>_Cycle<kk>_<Ch>.tiff``."""
    name = f"Plate_{plate}_Well_{well}_Site_{site}_Cycle{cycle:02d}_{channel}.tiff"
    return storage.join(aligned_dir(workspace, plate, well, site), name)


def well_product_dir(workspace: str, product: str, plate: str, well: str) -> str:
    """Per plate-well tables and masks: ``<product>/<plate>-<well>``.

    ``product`` is one of ``alignment``, ``segmentation``, ``barcodes``, ``features``,
    ``geometry``, ``mosaics``, ``merge``.
    """
    return storage.join(workspace, product, f"{plate}-{well}")


def site_manifest_path(workspace: str, step: str, plate: str, well: str) -> str:
    """Which sites of a plate x well a step computed, from which inputs.

    ``manifests/<step>/<plate>-<well>.json``, written by
    :func:`starrynight.siterunner.run_sites`: site -> fingerprint of its inputs.
    """
    return storage.join(workspace, "manifests", step, f"{plate}-{well}.json")


def illum_stats_path(workspace: str, plate: str, cycle: int | None = None) -> str:
    """Statistics of one ``illum calc`` group (written last: marks the group complete).

    CP ``illum/<plate>/<plate>_IllumStats.json``; SBS ``..._Cycle<k>_IllumStats.json``.
    """
    stem = f"{plate}_IllumStats" if cycle is None else f"{plate}_Cycle{cycle}_IllumStats"
    return storage.join(illum_dir(workspace, plate), f"{stem}.json")


def illum_png_path(workspace: str, plate: str, channel: str, cycle: int | None = None) -> str:
    """Heat-map of an illumination function: :func:`illum_path` with ``.png``."""
    return illum_path(workspace, plate, channel, cycle)[: -len(".npy")] + ".png"


def alignment_site_path(workspace: str, plate: str, well: str, site: int) -> str:
    """Per-site shifts and QC: ``alignment/<plate>-<well>/Site_<site>_alignment.parquet``."""
    folder = well_product_dir(workspace, "alignment", plate, well)
    return storage.join(folder, f"Site_{site}_alignment.parquet")


def alignment_table_path(workspace: str, plate: str, well: str) -> str:
    """All sites of a well: ``alignment/<plate>-<well>/Plate_<p>_Well_<w>_alignment.parquet``."""
    folder = well_product_dir(workspace, "alignment", plate, well)
    return storage.join(folder, f"Plate_{plate}_Well_{well}_alignment.parquet")


def _site_stem(plate: str, well: str, site: int) -> str:
    return f"Plate_{plate}_Well_{well}_Site_{site}"


def segmentation_mask_path(workspace: str, plate: str, well: str, site: int, obj: str) -> str:
    """CP-frame label mask ``segmentation/<plate>-<well>/Plate_.._Site_<s>_<Obj>.tiff``.

    ``obj`` is ``Nuclei`` or ``Cells``.
    """
    name = f"{_site_stem(plate, well, site)}_{obj}.tiff"
    return storage.join(well_product_dir(workspace, "segmentation", plate, well), name)


def segmentation_objects_path(workspace: str, plate: str, well: str) -> str:
    """Per-object table (area, centroid, bbox) of a well: ``.../objects.parquet``."""
    return storage.join(well_product_dir(workspace, "segmentation", plate, well), "objects.parquet")


def segmentation_counts_path(workspace: str, plate: str, well: str) -> str:
    """Per-site object counts and flags of a well: ``.../counts.parquet``."""
    return storage.join(well_product_dir(workspace, "segmentation", plate, well), "counts.parquet")


def segcheck_overlay_path(workspace: str, plate: str, well: str, site: int) -> str:
    """Outline overlay for review: ``segcheck/<plate>-<well>/Plate_.._Site_<s>_overlay.png``."""
    name = f"{_site_stem(plate, well, site)}_overlay.png"
    return storage.join(well_product_dir(workspace, "segcheck", plate, well), name)


def segcheck_counts_path(workspace: str, plate: str, well: str) -> str:
    """Counts and flags of the checked sites: ``segcheck/<plate>-<well>/counts.parquet``."""
    return storage.join(well_product_dir(workspace, "segcheck", plate, well), "counts.parquet")


def sbs_mask_path(workspace: str, plate: str, well: str, site: int, obj: str) -> str:
    """SBS-frame label mask ``barcodes/<plate>-<well>/Plate_.._Site_<s>_SBS<Obj>.tiff``."""
    name = f"{_site_stem(plate, well, site)}_SBS{obj}.tiff"
    return storage.join(well_product_dir(workspace, "barcodes", plate, well), name)


def spots_path(workspace: str, plate: str, well: str) -> str:
    """Every SBS spot of a well with its read: ``barcodes/<plate>-<well>/spots.parquet``."""
    return storage.join(well_product_dir(workspace, "barcodes", plate, well), "spots.parquet")


def cell_barcodes_path(workspace: str, plate: str, well: str) -> str:
    """Barcode call of every SBS cell: ``barcodes/<plate>-<well>/cells.parquet``."""
    return storage.join(well_product_dir(workspace, "barcodes", plate, well), "cells.parquet")


def cell_features_path(workspace: str, plate: str, well: str) -> str:
    """CP cells with barcode, gene, features: ``features/<plate>-<well>/cells.parquet``."""
    return storage.join(well_product_dir(workspace, "features", plate, well), "cells.parquet")


def gene_summary_path(workspace: str, plate: str) -> str:
    """Per-gene summary of a plate: ``features/<plate>_gene_summary.parquet``."""
    return storage.join(workspace, "features", f"{plate}_gene_summary.parquet")


def loaddata_dir(workspace: str, step: str) -> str:
    """CellProfiler LoadData CSVs of one step: ``loaddata/<step>``."""
    return storage.join(workspace, "loaddata", step)


def loaddata_path(workspace: str, step: str, unit: str) -> str:
    """One unit of work's LoadData CSV: ``loaddata/<step>/<unit>.csv``.

    ``unit`` is the grouping values joined by ``-`` (``<plate>[-<well>[-<site>]]``).
    """
    return storage.join(loaddata_dir(workspace, step), f"{unit}.csv")


def cellprofiler_dir(workspace: str, step: str) -> str:
    """Outputs of ``cp run`` for one step: ``cellprofiler/<step>``."""
    return storage.join(workspace, "cellprofiler", step)


def cellprofiler_output_dir(workspace: str, step: str, unit: str) -> str:
    """CellProfiler's output folder (``-o``) for one unit: ``cellprofiler/<step>/<unit>``."""
    return storage.join(cellprofiler_dir(workspace, step), unit)


def arm_label(arm: str, cycle: int | None = None) -> str:
    """``CP``, or ``SBS_Cycle<kk>`` for one SBS cycle: names a geometry group."""
    return "CP" if arm == "cp" else f"SBS_Cycle{int(cycle or 0):02d}"


def geometry_dir(workspace: str, plate: str, well: str) -> str:
    """Site positions and registration of a well: ``geometry/<plate>-<well>``."""
    return well_product_dir(workspace, "geometry", plate, well)


def positions_path(
    workspace: str, plate: str, well: str, arm: str, cycle: int | None = None
) -> str:
    """Positions of an arm's sites in the well frame.

    ``geometry/<p>-<w>/Plate_<p>_Well_<w>_<CP|SBS_Cycle<kk>>_positions.parquet``.
    """
    name = f"Plate_{plate}_Well_{well}_{arm_label(arm, cycle)}_positions.parquet"
    return storage.join(geometry_dir(workspace, plate, well), name)


def pairs_path(workspace: str, plate: str, well: str, arm: str, cycle: int | None = None) -> str:
    """Registered neighbour pairs of an arm: ``..._<CP|SBS_Cycle<kk>>_pairs.parquet``."""
    name = f"Plate_{plate}_Well_{well}_{arm_label(arm, cycle)}_pairs.parquet"
    return storage.join(geometry_dir(workspace, plate, well), name)


def geometry_report_path(workspace: str, plate: str, well: str) -> str:
    """Per-well report (pairs used, residual, sites kept recorded): ``..._geometry.json``.

    Written last: marks the well's geometry complete.
    """
    name = f"Plate_{plate}_Well_{well}_geometry.json"
    return storage.join(geometry_dir(workspace, plate, well), name)


def mosaic_path(workspace: str, plate: str, well: str, arm: str) -> str:
    """The well's stitched OME-Zarr per arm: ``mosaics/<plate>-<well>/<arm>.zarr``."""
    return storage.join(well_product_dir(workspace, "mosaics", plate, well), f"{arm}.zarr")


def mosaic_thumbnail_path(workspace: str, plate: str, well: str, arm: str) -> str:
    """A small PNG of the mosaic: ``mosaics/<plate>-<well>/<arm>.png``."""
    return storage.join(well_product_dir(workspace, "mosaics", plate, well), f"{arm}.png")


def merge_dir(workspace: str, plate: str, well: str) -> str:
    """CP <-> SBS merge of a well: ``merge/<plate>-<well>``."""
    return well_product_dir(workspace, "merge", plate, well)


def merge_cells_path(workspace: str, plate: str, well: str) -> str:
    """One row per physical CP cell with its SBS match: ``merge/<plate>-<well>/cells.parquet``."""
    return storage.join(merge_dir(workspace, plate, well), "cells.parquet")


def merge_report_path(workspace: str, plate: str, well: str) -> str:
    """Transform, residuals, match rate and flags: ``merge/<plate>-<well>/report.json``.

    Written last: marks the well's merge complete.
    """
    return storage.join(merge_dir(workspace, plate, well), "report.json")


def merge_qc_path(workspace: str, plate: str, well: str) -> str:
    """CP and registered SBS nuclei over the CP mosaic: ``merge/<plate>-<well>/qc.png``."""
    return storage.join(merge_dir(workspace, plate, well), "qc.png")


def qc_report_dir(workspace: str, plate: str, gate: str) -> str:
    """One QC report (figures and their data): ``qc_reports/<plate>/<gate>``.

    ``gate`` is ``painting`` or ``barcoding``.
    """
    return storage.join(workspace, "qc_reports", plate, gate)


def qc_index_path(workspace: str, plate: str, gate: str) -> str:
    """The report's list of figures and findings: ``qc_reports/<plate>/<gate>/index.json``.

    Written last: marks the report complete.
    """
    return storage.join(qc_report_dir(workspace, plate, gate), "index.json")


def qc_figure_path(workspace: str, plate: str, gate: str, name: str, ext: str) -> str:
    """A figure of a report (``ext`` ``png``) or its data (``parquet``): ``.../<name>.<ext>``."""
    return storage.join(qc_report_dir(workspace, plate, gate), f"{name}.{ext}")


def qc_gate_dir(workspace: str, plate: str, gate: str) -> str:
    """A plate's gate decisions, one JSON object each: ``qc_reports/<plate>/gates/<gate>/``.

    Beside the reports the reviewer decides from (``gates`` is not a report name, so it
    never collides with a report folder).
    """
    return storage.join(workspace, "qc_reports", plate, "gates", gate)


def qc_gate_path(workspace: str, plate: str, gate: str) -> str:
    """The older single gate file (state and history): ``qc_reports/<plate>/gates/<gate>.json``.

    Read as the start of the gate's history; decisions are now written to
    :func:`qc_gate_dir`.
    """
    return storage.join(workspace, "qc_reports", plate, "gates", f"{gate}.json")


def results_plate_dir(workspace: str, plate: str) -> str:
    """Per-plate profiles: ``results/<plate>``."""
    return storage.join(workspace, "results", plate)


def plate_cell_profiles_path(workspace: str, plate: str) -> str:
    """Filtered cells, robust z-scored to the plate's controls: ``<plate>_cells_normalized``."""
    return storage.join(results_plate_dir(workspace, plate), f"{plate}_cells_normalized.parquet")


def plate_guide_profiles_path(workspace: str, plate: str) -> str:
    """Median z-profile per well x sgRNA of a plate: ``results/<plate>/<plate>_guides.parquet``."""
    return storage.join(results_plate_dir(workspace, plate), f"{plate}_guides.parquet")


def plate_profiles_report_path(workspace: str, plate: str) -> str:
    """Filter counts and normalisation notes (written last: marks the plate complete)."""
    return storage.join(results_plate_dir(workspace, plate), f"{plate}_profiles.json")


def screen_results_dir(workspace: str) -> str:
    """Per-screen results: ``results/screen``."""
    return storage.join(workspace, "results", "screen")


def screen_results_path(workspace: str, name: str) -> str:
    """One per-screen product: ``results/screen/<name>``.

    ``name`` is ``hits.parquet``, ``hits.csv``, ``gene_profiles.parquet``,
    ``guide_profiles.parquet`` or ``screen.json`` (written last: marks it complete).
    """
    return storage.join(screen_results_dir(workspace), name)


def cropped_well_dir(workspace: str, plate: str, well: str) -> str:
    """Tiles of both arms of a well (PCPIP's stitch-and-crop output).

    ``images_corrected_cropped/<plate>_Well<well>``: PCPIP names the folder
    ``<Metadata_Plate>_<Metadata_Well>`` with its wells spelled ``WellA1``.
    """
    return storage.join(workspace, "images_corrected_cropped", f"{plate}_Well{well}")


def cropped_path(workspace: str, plate: str, well: str, image: str, site: int) -> str:
    """One tile of one image: ``.../<image>/<image>_Site_<N>.tiff`` (N from 1).

    ``image`` is the CellProfiler image name the tile is loaded as: ``Corr<Name>``
    (CP), ``Cycle<kk>_<Base>`` or ``Cycle<kk>_DAPI`` (SBS).
    """
    return storage.join(
        cropped_well_dir(workspace, plate, well), image, f"{image}_Site_{site}.tiff"
    )


def tiles_dir(workspace: str, plate: str, well: str) -> str:
    """The tile grid of a well and its report: ``tiles/<plate>-<well>``."""
    return well_product_dir(workspace, "tiles", plate, well)


def tiles_plan_path(workspace: str, plate: str, well: str) -> str:
    """What the tiles on disk were cut with (grid, transform, mosaics).

    ``tiles/<plate>-<well>/plan.json``, written before the tiles.
    """
    return storage.join(tiles_dir(workspace, plate, well), "plan.json")


def tiles_table_path(workspace: str, plate: str, well: str) -> str:
    """One row per tile (place in the well, coverage): ``..._tiles.parquet``."""
    return storage.join(
        tiles_dir(workspace, plate, well), f"Plate_{plate}_Well_{well}_tiles.parquet"
    )


def tiles_report_path(workspace: str, plate: str, well: str) -> str:
    """The well's tiling report, written last: marks its tiles complete."""
    return storage.join(tiles_dir(workspace, plate, well), f"Plate_{plate}_Well_{well}_tiles.json")
