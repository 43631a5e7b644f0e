"""SBS cycle alignment of one well: correct illumination, register, shift, write, QC.

As PCPIP's barcoding pipeline does, every SBS image is first corrected with its
plate x cycle x channel illumination function (when ``illum calc`` has made them;
raw images otherwise), then each cycle's nuclear image is registered to cycle 1's
and the same shift is applied to all of that cycle's channels. Every site gets a row
per cycle in a table of shifts and post-alignment correlations; sites whose shift or
correlation fails the QC thresholds are flagged in the table and the result, and
their images are still written.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import storage, workspace
from starrynight.algorithms import align as alg
from starrynight.errors import InputFileError, UserError
from starrynight.imageio import write_tiff
from starrynight.modules.illum import (
    GroupReader,
    ImageRow,
    arm_channels,
    load_functions,
    normalise,
    plate_rows,
)
from starrynight.siterunner import SiteRun, SiteTask, run_sites

WINDOW_ALPHA = 0.25
SCHEMA = pa.schema(
    [
        ("plate", pa.string()),
        ("well", pa.string()),
        ("site", pa.int32()),
        ("cycle", pa.int32()),
        ("dy", pa.float64()),
        ("dx", pa.float64()),
        ("shift_px", pa.float64()),
        ("correlation", pa.float64()),
        ("status", pa.string()),
        ("illum_corrected", pa.bool_()),
    ]
)


@dataclass
class AlignResult:
    """What ``align`` did for a well.

    ``flagged`` and ``warned`` hold ``(site, cycle, reason)`` for the cycles that failed
    QC (shift above the limit or correlation below the minimum) or are below the
    warning correlation.
    """

    plate: str
    well: str
    cycles: list[int]
    illum_corrected: bool
    sites_written: int
    sites_skipped: int
    table: str
    flagged: list[tuple[int, int, str]] = field(default_factory=list)
    warned: list[tuple[int, int, str]] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def align_well(
    ws: str,
    plate: str,
    well: str,
    interpolation: alg.Interpolation = "cubic",
    upsample: int = 20,
    qc: alg.AlignmentQC | None = None,
    force: bool = False,
    skip_bad: bool = False,
    workers: int = 2,
    progress: bool | None = None,
) -> AlignResult:
    """Align every SBS cycle of every site of a well to cycle 1 and write the images.

    Parameters
    ----------
    ws, plate, well : str
        Workspace, plate and well (as written in the index).
    interpolation : {"cubic", "linear", "integer"}
        How shifted images are resampled (``integer`` rounds the shift, as
        CellProfiler's Align does, and copies pixels).
    upsample : int
        Registration precision is ``1 / upsample`` pixel.
    qc : AlignmentQC, optional
        Shift and correlation thresholds (default: 50 px, 0.8, warn below 0.9).
    force : bool
        Redo sites whose outputs are already complete.
    skip_bad : bool
        Skip sites with an unreadable image (listed in the result).
    workers : int
        Sites processed concurrently (threads).
    progress : bool, optional
        Progress line (default: on a terminal).

    Returns
    -------
    AlignResult
    """
    qc = qc or alg.AlignmentQC()
    if interpolation not in ("cubic", "linear", "integer"):
        raise UserError(f"--interpolation {interpolation!r}: expected cubic, linear or integer")
    sbs, well_rows = _sbs_rows(ws, plate, well)
    cycles = sorted({r.cycle for r in sbs})
    sites = _sites_by_cycle(plate, well, well_rows, cycles)
    channels, roles = arm_channels(ws, "sbs", sbs)
    nuclei = _nuclear_channel(plate, channels, roles)
    functions = {k: load_functions(ws, plate, channels, k, required=False) for k in cycles}
    corrected = _illum_corrected(ws, plate, channels, functions)
    job = _WellJob(
        ws, plate, well, cycles, channels, channels.index(nuclei), functions, corrected,
        interpolation, upsample, qc,
    )  # fmt: skip
    job.reader.settle(well_rows)
    function_uris = tuple(f.uri for fs in functions.values() if fs for f in fs.values())
    tasks = [
        SiteTask(
            site,
            (*(by_cycle[k].uri for k in cycles), *function_uris),
            (*job.outputs(site), workspace.alignment_site_path(ws, plate, well, site)),
            (by_cycle,),
        )
        for site, by_cycle in sorted(sites.items())
    ]
    run = run_sites(
        "align", job.site, tasks,
        manifest=workspace.site_manifest_path(ws, "aligned_sbs", plate, well),
        load=_read_site_table, workers=workers, force=force, skip_bad=skip_bad,
        progress=progress,
        missing_hint="the index lists images that are gone (re-run inventory gen and index gen)",
    )  # fmt: skip
    return _write_well_table(ws, plate, well, cycles, corrected, run, qc)


def _sbs_rows(ws: str, plate: str, well: str) -> tuple[list[ImageRow], list[ImageRow]]:
    """The plate's SBS index rows and the well's; refused when either is empty."""
    sbs = [r for r in plate_rows(ws, plate) if r.arm == "sbs"]
    if not sbs:
        raise UserError(f"plate {plate!r}: no SBS cycles in the index, nothing to align")
    well_rows = [r for r in sbs if r.well == well]
    if not well_rows:
        wells = sorted({r.well for r in sbs})
        raise UserError(
            f"plate {plate!r} well {well!r}: no SBS images (wells with SBS: {', '.join(wells)})"
        )
    return sbs, well_rows


def _sites_by_cycle(
    plate: str, well: str, well_rows: list[ImageRow], cycles: list[int]
) -> dict[int, dict[int, ImageRow]]:
    """Site -> cycle -> row; refused when a site lacks one of the plate's cycles."""
    sites: dict[int, dict[int, ImageRow]] = {}
    for row in well_rows:
        sites.setdefault(row.site, {})[row.cycle] = row
    for site, by_cycle in sorted(sites.items()):
        missing = [k for k in cycles if k not in by_cycle]
        if missing:
            raise UserError(
                f"plate {plate!r} well {well!r} site {site}: SBS cycle(s) "
                f"{', '.join(map(str, missing))} missing from the index (plate has cycles "
                f"{', '.join(map(str, cycles))})"
            )
    return sites


def _nuclear_channel(plate: str, channels: list[str], roles: dict[str, str]) -> str:
    """The SBS channel cycles are registered on; refused when there is none."""
    nuclei = roles.get("nuclei")
    if nuclei is None or nuclei not in channels:
        raise UserError(
            f"plate {plate!r}: no nuclear channel among SBS channels {', '.join(channels)} "
            "(name one DAPI/Hoechst, or set the nuclei role in the experiment)"
        )
    return nuclei


def _illum_corrected(ws: str, plate: str, channels: list[str], functions: dict) -> bool:
    """Whether every cycle has illumination functions; refused when only some have."""
    corrected = all(f is not None for f in functions.values())
    if not corrected and any(f is not None for f in functions.values()):
        missing_cycles = [k for k, f in functions.items() if f is None]
        example = workspace.illum_path(ws, plate, normalise(channels[0]), missing_cycles[0])
        raise UserError(
            f"{example}: SBS illumination functions exist for some cycles but not for "
            f"cycle(s) {', '.join(map(str, missing_cycles))} (run 'starrynight illum calc "
            f"-w {ws} --plate {plate} --arm sbs')"
        )
    return corrected


def _write_well_table(
    ws: str,
    plate: str,
    well: str,
    cycles: list[int],
    corrected: bool,
    run: SiteRun[pa.Table],
    qc: alg.AlignmentQC,
) -> AlignResult:
    """Write the well's table of shifts from its site tables; the result lists QC flags."""
    table_uri = workspace.alignment_table_path(ws, plate, well)
    tables = run.ordered()
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    with storage.atomic_local_path(table_uri, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    result = AlignResult(
        plate, well, cycles, corrected, len(run.computed), len(run.current), table_uri
    )
    for r in table.to_pylist():
        if r["status"] == "flag":
            result.flagged.append((r["site"], r["cycle"], _reason(r, qc)))
        elif r["status"] == "warn":
            result.warned.append((r["site"], r["cycle"], _reason(r, qc)))
    result.bad_files = run.bad_files
    return result


def _read_site_table(task: SiteTask) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(task.outputs[-1])))


def _reason(row: dict, qc: alg.AlignmentQC) -> str:
    if max(abs(row["dy"]), abs(row["dx"])) > qc.max_shift:
        return f"shift ({row['dy']:.1f}, {row['dx']:.1f}) px exceeds {qc.max_shift:g} px"
    return f"correlation after alignment {row['correlation']:.3f}"


@dataclass
class _WellJob:
    ws: str
    plate: str
    well: str
    cycles: list[int]
    channels: list[str]
    nuclei_index: int
    functions: dict
    corrected: bool
    interpolation: alg.Interpolation
    upsample: int
    qc: alg.AlignmentQC

    def __post_init__(self) -> None:
        self.reader = GroupReader(self.channels)
        self.names = [normalise(c) for c in self.channels]
        self.lock = threading.Lock()
        self.windows: dict[tuple[int, int], np.ndarray] = {}

    def outputs(self, site: int) -> list[str]:
        return [
            workspace.aligned_path(self.ws, self.plate, self.well, site, k, n)
            for k in self.cycles
            for n in self.names
        ]

    def site(self, task: SiteTask) -> pa.Table:
        """Register, shift and write one site's cycles; its table is written last."""
        site, (by_cycle,) = task.site, task.args
        images = {k: self._load(by_cycle[k], k) for k in self.cycles}
        shape = images[self.cycles[0]].shape[1:]
        with self.lock:
            window = self.windows.setdefault(shape, alg.tukey_window(shape, WINDOW_ALPHA))
        reference = images[self.cycles[0]][self.nuclei_index]
        ref_spectrum = alg.reference_spectrum(reference, window)
        records = []
        for k in self.cycles:
            planes = images[k]
            if k == self.cycles[0]:
                shift, correlation = np.zeros(2), 1.0
            else:
                moving = alg.reference_spectrum(planes[self.nuclei_index], window)
                shift, _ = alg.register_translation(ref_spectrum, moving, self.upsample)
                correlation = alg.overlap_correlation(reference, planes[self.nuclei_index], shift)
            for i, name in enumerate(self.names):
                uri = workspace.aligned_path(self.ws, self.plate, self.well, site, k, name)
                write_tiff(uri, alg.shift_image(planes[i], shift, self.interpolation))
            status = alg.qc_status(shift, correlation, self.qc)
            records.append(
                {
                    "plate": self.plate,
                    "well": self.well,
                    "site": site,
                    "cycle": k,
                    # Content displacement of cycle k relative to cycle 1 (the images
                    # were moved by minus this), the sample ground truth's convention.
                    "dy": -float(shift[0]),
                    "dx": -float(shift[1]),
                    "shift_px": float(np.hypot(shift[0], shift[1])),
                    "correlation": float(correlation),
                    "status": status,
                    "illum_corrected": self.corrected,
                }
            )
        table = pa.Table.from_pylist(records, schema=SCHEMA)
        with storage.atomic_local_path(task.outputs[-1], suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        return table

    def _load(self, row: ImageRow, cycle: int) -> np.ndarray:
        image = self.reader.read(row)
        functions = self.functions.get(cycle)
        if functions is None:
            return image
        out = np.empty_like(image, dtype=np.uint16)
        for i, channel in enumerate(self.channels):
            f = functions[channel]
            if f.gain.shape != image.shape[1:]:
                raise InputFileError(
                    row.uri,
                    f"frames are {image.shape[1]}x{image.shape[2]} but the illumination "
                    f"function {f.uri} is {f.gain.shape[0]}x{f.gain.shape[1]}",
                )
            f.apply(image[i], out=out[i])
        return out
