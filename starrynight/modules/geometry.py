"""``geometry``: every site's place in the well frame, per arm (CP; SBS per cycle).

For one plate x well, each arm's (and each SBS cycle's) recorded positions come from
the files' OME-XML, the experiment's declared layout or a positions CSV (see
:mod:`starrynight.geometry`). They are refined by registering every pair of
overlapping neighbours on the nuclear channel (illumination-corrected when the
functions exist) and solving all positions together (:mod:`starrynight.algorithms.stitch`).

Sites are streamed in the order of their recorded position: each image is read once,
and only the overlap boxes its pairs need (:func:`starrynight.geometry.read_boxes`;
memory-mapped views of local uncompressed files, so only the pages registration
samples are read); those crops are kept until the partner arrives, so memory holds
about one row of overlaps, not the well. For local files the pairs are registered in
``workers`` forked processes, one band of sites each (:func:`_measure_in_processes`).

Outputs (all validated before anything is written; the report is written last and
marks the well complete):

- ``positions`` table per arm/cycle: site, key, ``y_um, x_um`` (top-left corner of the
  field), ``y_px, x_px``, the recorded position, its source, ``status`` (``refined`` or
  ``kept_recorded``) and the reason;
- ``pairs`` table per arm/cycle: every neighbour pair with recorded and measured offset,
  correlation, residual and status;
- the well's report (JSON): pairs used and dropped by reason, residual, sites kept at
  their recorded position, per arm/cycle.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import geometry as geo
from starrynight import storage, workspace
from starrynight.algorithms import ncc, stitch
from starrynight.errors import InputFileError, UserError
from starrynight.modules.illum import (
    ImageRow,
    arm_channels,
    load_functions,
    plate_rows,
)

POSITIONS_SCHEMA = pa.schema(
    [
        ("plate", pa.string()),
        ("well", pa.string()),
        ("arm", pa.string()),
        ("cycle", pa.int32()),
        ("site", pa.int32()),
        ("key", pa.string()),
        ("y_um", pa.float64()),
        ("x_um", pa.float64()),
        ("y_px", pa.float64()),
        ("x_px", pa.float64()),
        ("recorded_y_um", pa.float64()),
        ("recorded_x_um", pa.float64()),
        ("height_px", pa.int32()),
        ("width_px", pa.int32()),
        ("pixel_size_y_um", pa.float64()),
        ("pixel_size_x_um", pa.float64()),
        ("source", pa.string()),
        ("status", pa.string()),
        ("pairs_used", pa.int32()),
        ("reason", pa.string()),
    ]
)
PAIRS_SCHEMA = pa.schema(
    [
        ("site_i", pa.int32()),
        ("site_j", pa.int32()),
        ("recorded_dy_px", pa.float64()),
        ("recorded_dx_px", pa.float64()),
        ("measured_dy_px", pa.float64()),
        ("measured_dx_px", pa.float64()),
        ("correlation", pa.float64()),
        ("residual_px", pa.float64()),
        ("status", pa.string()),
    ]
)


@dataclass(frozen=True)
class RefineOptions:
    """Registration and solve settings.

    Attributes
    ----------
    max_shift_um : float
        Largest correction of a recorded neighbour offset that is searched (stage error
        of both sites together); corrections at this bound are rejected.
    min_correlation : float
        Pairs whose overlaps correlate less after the shift are dropped.
    max_residual_px : float
        Pairs that disagree with the joint solution by more are dropped (one at a time).
    min_overlap_px : int
        Narrower recorded overlaps are not registered.
    allow_isolated : bool
        Accept sites whose recorded field overlaps no other site (kept where recorded);
        otherwise that is an error, since a layout with gaps is usually a wrong layout.
    illum : bool
        Correct the nuclear channel with the arm's illumination function when it exists.
    """

    max_shift_um: float = 10.0
    min_correlation: float = 0.5
    max_residual_px: float = 1.5
    min_overlap_px: int = 16
    allow_isolated: bool = False
    illum: bool = True


@dataclass
class GroupReport:
    """What the refinement found for one arm (or SBS cycle) of a well."""

    arm: str
    cycle: int | None
    label: str
    source: str
    sites: int
    pixel_size_um: tuple[float, float]
    field_px: tuple[int, int]
    illum_corrected: bool
    pairs: int
    pairs_used: int
    pairs_dropped: dict[str, int]
    residual_rms_px: float | None
    residual_max_px: float | None
    correction_rms_px: float | None
    components: int
    kept_recorded: list[dict]
    unplaced_fraction: float
    positions: str
    pairs_table: str
    #: How recorded positions were turned into image axes (:data:`geo.STAGE_AXES`), and
    #: why: "declared", "detected", "recorded" (or "recorded (no orientation fitted clearly
    #: better)" after comparing), "layout" (image axes already).
    stage_axes: str = "as_recorded"
    stage_axes_decided: str = "recorded"
    #: Mean correlation of the probe pairs per orientation, when orientations were
    #: compared (only when most pairs failed as recorded).
    stage_axes_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class GeometryResult:
    """What ``geometry`` did for a well."""

    plate: str
    well: str
    report: str
    skipped: bool
    groups: list[GroupReport] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        """Every table written, then the report."""
        return [u for g in self.groups for u in (g.positions, g.pairs_table)] + [self.report]


def geometry_well(
    ws: str,
    plate: str,
    well: str,
    arms: Sequence[str] = ("cp", "sbs"),
    cycles: Sequence[int] | None = None,
    options: RefineOptions | None = None,
    force: bool = False,
    workers: int = 2,
) -> GeometryResult:
    """Position every site of a well in its arm's well frame and refine by registration.

    Parameters
    ----------
    ws, plate, well : str
        Workspace, plate and well (as written in the index).
    arms : sequence of {"cp", "sbs"}
        Arms to place; an arm the well lacks is skipped when others exist.
    cycles : sequence of int, optional
        SBS cycles (default: all in the index).
    options : RefineOptions, optional
        Registration and solve settings.
    force : bool
        Redo a well whose report exists.
    workers : int
        Threads reading and registering.

    Returns
    -------
    GeometryResult

    Raises
    ------
    UserError
        For the bad inputs of :func:`_recorded_positions` (mixed or disagreeing
        metadata, a layout that does not fit the files...) and sites with no
        overlapping neighbour; nothing is written then.
    """
    options = options or RefineOptions()
    report_uri = workspace.geometry_report_path(ws, plate, well)
    unknown = [a for a in arms if a not in ("cp", "sbs")]
    if unknown:
        raise UserError(f"--arm {unknown[0]!r}: expected cp or sbs")
    rows = [r for r in plate_rows(ws, plate) if r.well == well]
    if not rows:
        raise UserError(f"plate {plate!r} well {well!r}: no images in the index")
    groups = _groups(rows, arms, cycles, plate, well)
    wanted = [workspace.arm_label(arm, cycle) for (arm, cycle), _ in groups]
    # The report holds every arm/cycle placed so far; a run for some of them keeps
    # the others (so arms can be placed by separate calls).
    done: dict[str, GroupReport] = {}
    if storage.exists(report_uri):
        data = json.loads(storage.read_bytes(report_uri))
        done = {g["label"]: GroupReport(**g) for g in data["groups"]}
    if not force and all(label in done for label in wanted):
        return GeometryResult(plate, well, report_uri, True, [done[label] for label in wanted])
    computed = [
        _place_group(ws, plate, well, arm, cycle, g, options, workers)
        for (arm, cycle), g in groups
        if force or workspace.arm_label(arm, cycle) not in done
    ]
    result = GeometryResult(plate, well, report_uri, False)
    for placed in computed:
        report_group = _write_group(ws, plate, well, placed)
        done[report_group.label] = report_group
    result.groups = [done[label] for label in wanted]
    order = sorted(done.values(), key=lambda g: (g.arm, g.cycle or 0))
    report = {
        "plate": plate,
        "well": well,
        "stage_point": geo.STAGE_POINT,
        "position": "top-left corner of the field in the arm's well frame; x right, y down",
        "options": asdict(options),
        "groups": [asdict(g) for g in order],
    }
    storage.write_bytes(report_uri, (json.dumps(report, indent=2) + "\n").encode())
    return result


def _groups(
    rows: list[ImageRow], arms: Sequence[str], cycles: Sequence[int] | None, plate: str, well: str
) -> list[tuple[tuple[str, int | None], list[ImageRow]]]:
    out: dict[tuple[str, int | None], list[ImageRow]] = {}
    for r in rows:
        if r.arm not in arms:
            continue
        if r.arm == "sbs" and cycles is not None and r.cycle not in cycles:
            continue
        out.setdefault((r.arm, r.cycle if r.arm == "sbs" else None), []).append(r)
    if not out:
        wanted = "/".join(arms) + (f" cycle(s) {list(cycles)}" if cycles else "")
        raise UserError(f"plate {plate!r} well {well!r}: no {wanted} images in the index")
    return sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))


@dataclass
class _Placed:
    arm: str
    cycle: int | None
    source: str
    rows: list[ImageRow]
    shape: tuple[int, int]
    pixel_size: tuple[float, float]
    recorded_um: np.ndarray
    pairs: list[stitch.Pair]
    measurements: list[stitch.PairMeasurement]
    solution: stitch.Solution
    illum_corrected: bool
    isolated: set[int]
    stage_axes: str
    stage_axes_decided: str
    stage_axes_scores: dict[str, float]


def _place_group(
    ws: str,
    plate: str,
    well: str,
    arm: str,
    cycle: int | None,
    rows: list[ImageRow],
    options: RefineOptions,
    workers: int,
) -> _Placed:
    rows = sorted(rows, key=lambda r: r.site)
    label = workspace.arm_label(arm, cycle)
    channels, roles = arm_channels(ws, arm, rows)
    nuclei = roles.get("nuclei")
    if nuclei is None:
        raise UserError(
            f"plate {plate!r} {label}: no nuclear channel among {', '.join(channels)} "
            "(set the nuclei role in the experiment)"
        )
    for row in rows:
        if nuclei not in row.channels:
            raise InputFileError(row.uri, f"no {nuclei} frame: the file name lists {row.channels}")
    frames = [row.channels.index(nuclei) for row in rows]
    layout = _arm_layout(ws, arm)
    headers = _read_headers(rows, frames, workers)
    shape, pixel_size = _field(headers, layout, f"{plate} {well} {label}")
    source, stage_um = _recorded_positions(rows, headers, layout, shape, pixel_size, ws, arm)
    declared = layout.stage_axes if layout is not None else "auto"
    axes = "as_recorded" if source == "layout" or declared == "auto" else declared
    decided = "layout" if source == "layout" else "declared" if declared != "auto" else "recorded"
    ps = np.array(pixel_size)
    recorded_um = geo.orient_positions(stage_um, axes)
    pairs, isolated = _neighbours(recorded_um / ps, shape, options)
    if isolated and not options.allow_isolated:
        k = min(isolated)
        raise UserError(
            f"{rows[k].uri}: site {rows[k].site} ({label}) overlaps no other site at its "
            f"recorded position ({recorded_um[k][1]:.1f}, {recorded_um[k][0]:.1f}) um; check the "
            "layout or stage positions (--allow-isolated keeps such sites where recorded)"
        )
    function = None
    if options.illum:
        loaded = load_functions(ws, plate, [nuclei], cycle, required=False)
        function = loaded[nuclei] if loaded else None
    margin = max(2, math.ceil(options.max_shift_um / min(pixel_size)))
    if function is not None and function.gain.shape != shape:
        raise InputFileError(
            function.uri, f"function is {function.gain.shape} but the {label} fields are {shape}"
        )

    def read(k: int, boxes: Sequence[geo.Box]) -> list[np.ndarray]:
        # Stored dtype, uncorrected, mapped where the file allows (from the layout its
        # header gave, without parsing it again): registration converts and corrects
        # only what it samples (a fraction of each crop), and only those pages are read.
        return geo.read_boxes(
            rows[k].uri, frames[k], boxes, shape, view=True, layout=headers[k].frame
        )

    gain = function.gain if function is not None else None
    dark = function.dark if function is not None else 0.0
    # Forked processes for local files; threads where reads go to S3 (its client's
    # event loop and connections do not survive a fork).
    local = not any(storage.is_s3(r.uri) for r in rows)

    def measure(
        positions_px: np.ndarray, chosen: Sequence[stitch.Pair], n_workers: int
    ) -> tuple[list[stitch.PairMeasurement], list[str]]:
        order = sorted(range(len(rows)), key=lambda k: (positions_px[k][0], positions_px[k][1]))
        measured = measure_streaming(
            order, chosen, shape, read, margin, n_workers, gain, dark, processes=local
        )
        verdict = stitch.screen_pairs(measured, options.min_correlation, float(margin))
        return measured, verdict

    measurements, status = measure(recorded_um / ps, pairs, workers)
    scores: dict[str, float] = {}
    if decided == "recorded" and _used_share(status) < AXES_PROBE_BELOW:
        # Most pairs failed: the stage's axes may not be the image's (a mirrored or
        # swapped stage is the common cause); see which orientation fits best.
        passing: dict[str, float] = {}
        for a in geo.STAGE_AXES:
            if a == axes:  # already registered: its probe pairs' results are at hand
                picks = _probe_picks(len(pairs))
                measured = [measurements[n] for n in picks]
                verdict = [status[n] for n in picks]
            else:
                oriented_px = geo.orient_positions(stage_um, a) / ps
                chosen = _neighbours(oriented_px, shape, options)[0]
                probe = [chosen[n] for n in _probe_picks(len(chosen))]
                measured, verdict = measure(oriented_px, probe, 1)
            scores[a] = _mean_correlation(measured)
            passing[a] = _used_share(verdict)
        best = max(geo.STAGE_AXES, key=lambda a: scores[a])  # ties keep the recorded axes
        if passing[best] >= AXES_MIN_SHARE and scores[best] - scores[axes] >= AXES_MARGIN:
            axes, decided = best, "detected"
            recorded_um = geo.orient_positions(stage_um, axes)
            pairs, isolated = _neighbours(recorded_um / ps, shape, options)
            measurements, status = measure(recorded_um / ps, pairs, workers)
        else:
            decided = "recorded (no orientation fitted clearly better)"
    solution = stitch.solve_positions(
        recorded_um / ps, measurements, status, options.max_residual_px
    )
    return _Placed(
        arm, cycle, source, rows, shape, pixel_size, recorded_um, pairs, measurements, solution,
        function is not None, isolated, axes, decided, scores,
    )  # fmt: skip


#: Below this share of pairs passing registration, other stage orientations are tried.
AXES_PROBE_BELOW = 0.9
#: Pairs per orientation registered to compare orientations.
AXES_PROBE_PAIRS = 24
#: An orientation replaces the recorded one when at least this share of its probe pairs
#: pass registration...
AXES_MIN_SHARE = 0.5
#: ... and its probe pairs' mean correlation beats the recorded axes' by this much
#: (unrelated overlaps still reach 0.3-0.7 at their best shift; true ones 0.8-1).
AXES_MARGIN = 0.1


def _neighbours(
    positions_px: np.ndarray, shape: tuple[int, int], options: RefineOptions
) -> tuple[list[stitch.Pair], set[int]]:
    """Overlapping neighbour pairs at these positions, and the sites in none."""
    pairs = stitch.neighbour_pairs(positions_px, shape, options.min_overlap_px)
    linked = {p.i for p in pairs} | {p.j for p in pairs}
    n = len(positions_px)
    return pairs, ({k for k in range(n) if k not in linked} if n > 1 else set())


def _probe_picks(n_pairs: int) -> list[int]:
    """Indices of up to :data:`AXES_PROBE_PAIRS` pairs spread evenly over ``n_pairs``."""
    if n_pairs <= AXES_PROBE_PAIRS:
        return list(range(n_pairs))
    picks = np.linspace(0, n_pairs - 1, AXES_PROBE_PAIRS).round().astype(int)
    return sorted(set(picks.tolist()))


def _mean_correlation(measured: Sequence[stitch.PairMeasurement]) -> float:
    """Mean correlation of registered pairs, a flat (nan) or anti-correlated one as 0."""
    values = [max(m.correlation, 0.0) if np.isfinite(m.correlation) else 0.0 for m in measured]
    return float(np.mean(values)) if values else 0.0


def _used_share(status: Sequence[str]) -> float:
    return sum(s == stitch.PAIR_USED for s in status) / len(status) if status else 0.0


def retain_freed_memory(limit_bytes: int = 32 << 20) -> None:
    """Let glibc keep freed blocks below ``limit_bytes`` for reuse (process-wide).

    Registration and banding allocate many short-lived arrays of 0.1-5 MB. By default
    glibc maps each one fresh from the kernel and unmaps it when freed, so every
    allocation faults in its pages again: measured, that doubled the cost of a pair.
    Raising the mmap and trim thresholds keeps at most about ``2 * limit_bytes`` of
    freed memory in the heap, independent of the number of sites. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, limit_bytes)
    mallopt(m_trim_threshold, 2 * limit_bytes)


def measure_streaming(
    order: Sequence[int],
    pairs: Sequence[stitch.Pair],
    shape: tuple[int, int],
    read: Callable[[int, Sequence[geo.Box]], list[np.ndarray]],
    margin: int,
    workers: int = 2,
    gain: np.ndarray | None = None,
    dark: float = 0.0,
    processes: bool = False,
) -> list[stitch.PairMeasurement]:
    """Register every pair, reading each site once in ``order``, and only its overlaps.

    Parameters
    ----------
    order : sequence of int
        Sites in reading order (by recorded position, so partners arrive soon).
    pairs : sequence of Pair
        Neighbour pairs to register.
    shape : tuple of int
        Tile shape.
    read : callable
        ``read(site_index, boxes) -> [2-D array per box]`` (called from worker threads):
        the site's overlap crops, cut by :func:`stitch.overlap_boxes`, uncorrected.
    margin : int
        Search bound of :func:`stitch.register_overlap`, pixels.
    workers : int
        Threads reading and registering.
    gain : numpy.ndarray, optional
        Illumination gain of the fields (their shape); registration corrects the crops
        with it (:func:`stitch.register_overlap`).
    dark : float
        Dark level of the illumination function.
    processes : bool
        Register in ``workers`` forked processes instead of threads (see
        :func:`_measure_in_processes`); ignored where ``fork`` is not available.

    Returns
    -------
    list of PairMeasurement
        In the order of ``pairs``.
    """
    if processes and workers > 1 and len(pairs) > 1 and _can_fork():
        return _measure_in_processes(order, pairs, shape, read, margin, workers, gain, dark)
    retain_freed_memory()
    needs: dict[int, list[tuple[int, int]]] = {}
    boxes = [stitch.overlap_boxes(p.offset, shape) for p in pairs]
    for n, p in enumerate(pairs):
        needs.setdefault(p.i, []).append((n, 0))
        needs.setdefault(p.j, []).append((n, 1))
    crops: dict[int, list[np.ndarray | None]] = {}
    results: list[stitch.PairMeasurement | None] = [None] * len(pairs)

    def load(k: int) -> list[tuple[tuple[int, int], np.ndarray]]:
        wanted = needs.get(k, [])
        return list(zip(wanted, read(k, [boxes[n][side] for n, side in wanted]), strict=True))

    def measure(n: int, a: np.ndarray, b: np.ndarray) -> None:
        gains = None if gain is None else (gain[boxes[n][0]], gain[boxes[n][1]])
        results[n] = stitch.measure_crops(a, b, pairs[n], margin, gains, dark)

    # Reads run a few sites ahead; registrations queue behind them on the same threads.
    # Only crops waiting for their partner are held: about one row of overlaps.
    ahead = max(2, 2 * workers)
    # One worker runs inline: handing each read and registration to a thread and
    # back costs more than either.
    with _Inline() if workers <= 1 else ThreadPoolExecutor(max_workers=workers) as pool:
        reads: deque[Future] = deque()
        pending: deque[Future] = deque()
        todo = iter([k for k in order if k in needs])
        for k in todo:
            reads.append(pool.submit(load, k))
            if len(reads) >= ahead:
                break
        while reads:
            got = reads.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                reads.append(pool.submit(load, nxt))
            for (n, side), crop in got:
                slot = crops.setdefault(n, [None, None])
                slot[side] = crop
                if slot[0] is not None and slot[1] is not None:
                    pending.append(pool.submit(measure, n, slot[0], slot[1]))
                    del crops[n]
            del got
            while len(pending) > 4 * ahead:
                pending.popleft().result()
        for f in pending:
            f.result()
    return [m for m in results if m is not None]


class _Inline:
    """An executor that runs what is submitted at once, in the calling thread."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller by result(), as a pool does
            done.set_exception(exc)
        return done


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


#: What the forked registration processes work on (set only while they run).
_FORK_JOB: tuple | None = None


def _measure_in_processes(
    order: Sequence[int],
    pairs: Sequence[stitch.Pair],
    shape: tuple[int, int],
    read: Callable[[int, Sequence[geo.Box]], list[np.ndarray]],
    margin: int,
    workers: int,
    gain: np.ndarray | None,
    dark: float,
) -> list[stitch.PairMeasurement]:
    """:func:`measure_streaming` split over ``workers`` forked processes by band of sites.

    Registration is many small NumPy steps: threads serialise on the interpreter lock
    between them, processes do not. Each pair goes to the band of whichever of its two
    sites is read later; the bands cut the reading order so that they hold equal
    numbers of pairs. A process reads its band's sites and, of the sites just before
    its band, only the overlaps its pairs need (about one row of sites), so the pixels
    read grow by one row per extra process, and each process holds one row of
    overlaps. Forked, the processes share the read function and the illumination gain
    with this one instead of receiving copies.
    """
    global _FORK_JOB
    rank = {k: r for r, k in enumerate(order)}
    by_later = sorted(range(len(pairs)), key=lambda n: max(rank[pairs[n].i], rank[pairs[n].j]))
    cuts = [len(by_later) * b // workers for b in range(workers + 1)]
    bands = [by_later[cuts[b] : cuts[b + 1]] for b in range(workers)]
    _FORK_JOB = (order, pairs, shape, read, margin, gain, dark, bands)
    # Loaded here, the compiled kernels are inherited by every worker (each would
    # otherwise start the compiler and load them itself, about a second).
    ncc.load()
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            parts = list(pool.map(_measure_band, range(len(bands))))
    finally:
        _FORK_JOB = None
    results: list[stitch.PairMeasurement | None] = [None] * len(pairs)
    for band, part in zip(bands, parts, strict=True):
        for n, measured in zip(band, part, strict=True):
            results[n] = measured
    return [m for m in results if m is not None]


def _measure_band(band: int) -> list[stitch.PairMeasurement]:
    """In a forked process: register the pairs of one band, one thread."""
    assert _FORK_JOB is not None, "only run in a process forked by _measure_in_processes"
    order, pairs, shape, read, margin, gain, dark, bands = _FORK_JOB
    mine = [pairs[n] for n in bands[band]]
    return measure_streaming(order, mine, shape, read, margin, 1, gain, dark)


def _arm_layout(ws: str, arm: str) -> geo.Layout | None:
    if not storage.exists(workspace.experiment_path(ws)):
        return None
    from starrynight.experiment import load_experiment

    exp = load_experiment(ws)
    part = exp.cp if arm == "cp" else exp.sbs
    return part.layout if part is not None else None


def _read_headers(rows: list[ImageRow], frames: list[int], workers: int) -> list[geo.OmeHeader]:
    """Each file's header, and where its nuclear frame lies (``frames``: its index)."""
    if not any(storage.is_s3(r.uri) for r in rows):
        # Parsing a header is Python work (about 0.3 ms): threads only contend for
        # the interpreter lock, measured 2.5x slower than one after another.
        return [geo.read_ome_header(r.uri, f) for r, f in zip(rows, frames, strict=True)]
    # On S3 each header is a round trip: overlap them.
    with ThreadPoolExecutor(max_workers=max(1, workers) * 4) as pool:
        return list(pool.map(geo.read_ome_header, [r.uri for r in rows], frames))


def _field(
    headers: list[geo.OmeHeader], layout: geo.Layout | None, where: str
) -> tuple[tuple[int, int], tuple[float, float]]:
    first = headers[0]
    for h in headers[1:]:
        if (h.height, h.width) != (first.height, first.width):
            raise UserError(
                f"{h.uri}: field is {h.height}x{h.width} px but {first.uri} of the same arm is "
                f"{first.height}x{first.width}"
            )
    sized = [h for h in headers if h.pixel_size_um is not None]
    if sized:
        ref = sized[0]
        for h in sized[1:]:
            if not all(
                math.isclose(a, b, rel_tol=1e-3)
                for a, b in zip(h.pixel_size_um, ref.pixel_size_um, strict=True)
            ):
                raise UserError(
                    f"{h.uri}: PhysicalSizeX/Y {h.pixel_size_um[1]:g}/{h.pixel_size_um[0]:g} um "
                    f"disagrees with {ref.uri} ({ref.pixel_size_um[1]:g}/"
                    f"{ref.pixel_size_um[0]:g} um) in the same arm"
                )
        if len(sized) < len(headers):
            bare = next(h for h in headers if h.pixel_size_um is None)
            raise UserError(
                f"{bare.uri}: no PhysicalSizeX in its OME-XML, but {ref.uri} of the same arm "
                "has one; all files of an arm must record it, or none"
            )
        size = ref.pixel_size_um
    elif layout is not None and layout.pixel_size_um is not None:
        size = (layout.pixel_size_um, layout.pixel_size_um)
    else:
        raise UserError(
            f"{first.uri}: no PhysicalSizeX/Y in the file and no layout.pixel_size_um in the "
            f"experiment for {where}; the pixel size is needed to place sites"
        )
    return (first.height, first.width), (float(size[0]), float(size[1]))


def _recorded_positions(
    rows: list[ImageRow],
    headers: list[geo.OmeHeader],
    layout: geo.Layout | None,
    shape: tuple[int, int],
    pixel_size: tuple[float, float],
    ws: str,
    arm: str,
) -> tuple[str, np.ndarray]:
    """Recorded top-left ``(y_um, x_um)`` per row and where they came from."""
    with_pos = [h for h in headers if h.position_um is not None]
    source = layout.source if layout is not None else "auto"
    where = f"{workspace.experiment_path(ws)}: {arm}.layout"
    if source in ("auto", "metadata") and with_pos:
        if len(with_pos) < len(headers):
            bare = next(h for h in headers if h.position_um is None)
            raise UserError(
                f"{bare.uri}: no Plane PositionX/Y in its OME-XML, but {with_pos[0].uri} of the "
                "same arm has them; all files of an arm must record positions, or none "
                "(declare a layout with source 'layout' to ignore them)"
            )
        half = np.array([shape[0] * pixel_size[0], shape[1] * pixel_size[1]]) / 2
        return "metadata", np.array([h.position_um for h in headers], np.float64) - half
    if source == "metadata":
        raise UserError(f"{headers[0].uri}: no Plane PositionX/Y in its OME-XML ({where}.source)")
    sites = [r.site for r in rows]
    if layout is not None and layout.declared and source in ("auto", "layout"):
        pos = geo.layout_positions(layout, sites, shape, pixel_size[1], where)
        return "layout", np.array([pos[s] for s in sites], np.float64)
    if layout is not None and layout.positions_csv:
        table = geo.read_positions_csv(layout.positions_csv)
        missing = [s for s in sites if s not in table]
        if missing:
            raise UserError(
                f"{layout.positions_csv}: no position for site(s) "
                f"{', '.join(map(str, missing[:10]))} of the {arm} files"
            )
        return "csv", np.array([table[s] for s in sites], np.float64)
    raise UserError(
        f"{headers[0].uri}: no stage positions in the OME-XML and no layout for the {arm} arm; "
        f"declare one in {where} (rows/columns, round, or positions_csv)"
    )


def _write_group(ws: str, plate: str, well: str, p: _Placed) -> GroupReport:
    sol = p.solution
    ps = np.array(p.pixel_size)
    refined_um = sol.positions * ps
    used_by = np.zeros(len(p.rows), int)
    for m, s in zip(p.measurements, sol.pair_status, strict=True):
        if s == stitch.PAIR_USED:
            used_by[m.i] += 1
            used_by[m.j] += 1
    reasons = _reasons(p)
    label = workspace.arm_label(p.arm, p.cycle)
    records = []
    for k, row in enumerate(p.rows):
        records.append(
            {
                "plate": plate, "well": well, "arm": p.arm, "cycle": p.cycle, "site": row.site,
                "key": row.key, "y_um": float(refined_um[k, 0]), "x_um": float(refined_um[k, 1]),
                "y_px": float(sol.positions[k, 0]), "x_px": float(sol.positions[k, 1]),
                "recorded_y_um": float(p.recorded_um[k, 0]),
                "recorded_x_um": float(p.recorded_um[k, 1]),
                "height_px": p.shape[0], "width_px": p.shape[1],
                "pixel_size_y_um": p.pixel_size[0], "pixel_size_x_um": p.pixel_size[1],
                "source": p.source, "status": sol.status[k], "pairs_used": int(used_by[k]),
                "reason": reasons.get(k, ""),
            }
        )  # fmt: skip
    pos_uri = workspace.positions_path(ws, plate, well, p.arm, p.cycle)
    _write_table(pos_uri, pa.Table.from_pylist(records, schema=POSITIONS_SCHEMA))
    pair_records = [
        {
            "site_i": p.rows[m.i].site, "site_j": p.rows[m.j].site,
            "recorded_dy_px": m.offset[0] - m.correction[0],
            "recorded_dx_px": m.offset[1] - m.correction[1],
            "measured_dy_px": m.offset[0], "measured_dx_px": m.offset[1],
            "correlation": m.correlation, "residual_px": float(r), "status": s,
        }
        for m, s, r in zip(p.measurements, sol.pair_status, sol.pair_residual, strict=True)
    ]  # fmt: skip
    pairs_uri = workspace.pairs_path(ws, plate, well, p.arm, p.cycle)
    _write_table(pairs_uri, pa.Table.from_pylist(pair_records, schema=PAIRS_SCHEMA))
    used = np.array([s == stitch.PAIR_USED for s in sol.pair_status], bool)
    dropped: dict[str, int] = {}
    for s in sol.pair_status:
        if s != stitch.PAIR_USED:
            dropped[s] = dropped.get(s, 0) + 1
    corrections = np.linalg.norm(sol.positions - p.recorded_um / ps, axis=1)
    refined = np.array([s == stitch.SITE_REFINED for s in sol.status], bool)
    kept = [
        {"site": p.rows[k].site, "reason": reasons.get(k, "")}
        for k in range(len(p.rows))
        if not refined[k]
    ]
    return GroupReport(
        arm=p.arm,
        cycle=p.cycle,
        label=label,
        source=p.source,
        sites=len(p.rows),
        pixel_size_um=p.pixel_size,
        field_px=p.shape,
        illum_corrected=p.illum_corrected,
        pairs=len(p.measurements),
        pairs_used=int(used.sum()),
        pairs_dropped=dropped,
        residual_rms_px=_finite(sol.residual_rms),
        residual_max_px=_finite(float(sol.pair_residual[used].max())) if used.any() else None,
        correction_rms_px=_finite(float(np.sqrt(np.mean(corrections[refined] ** 2))))
        if refined.any()
        else None,
        components=sol.components,
        kept_recorded=kept,
        unplaced_fraction=float(1 - refined.mean()) if len(p.rows) > 1 else 0.0,
        positions=pos_uri,
        pairs_table=pairs_uri,
        stage_axes=p.stage_axes,
        stage_axes_decided=p.stage_axes_decided,
        stage_axes_scores=p.stage_axes_scores,
    )


def _reasons(p: _Placed) -> dict[int, str]:
    """Why each site kept its recorded position (site index -> text)."""
    if len(p.rows) == 1:
        return {0: "single site: nothing to register against"}
    out: dict[int, str] = {}
    for k in range(len(p.rows)):
        if p.solution.status[k] != stitch.SITE_RECORDED:
            continue
        if k in p.isolated:
            out[k] = "no overlapping neighbour at the recorded position"
            continue
        counts: dict[str, int] = {}
        for m, s in zip(p.measurements, p.solution.pair_status, strict=True):
            if k in (m.i, m.j):
                counts[s] = counts.get(s, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        out[k] = f"no neighbour pair passed registration ({detail})"
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _write_table(uri: str, table: pa.Table) -> None:
    with storage.atomic_local_path(uri, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
