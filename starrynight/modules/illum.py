"""Illumination correction steps: ``calc`` (functions per plate) and ``apply`` (per well).

``calc_illum`` averages every image of a group (CP: plate x channel; SBS: plate x cycle x
channel), reading each multi-channel file once for all its channels, on two threads
with their own float64 sums (tifffile's reads and numpy's additions release the GIL),
so memory does not depend on the number of images. It writes, per channel, the float32
function (``.npy``) and a heat-map (``.png``), then a JSON of statistics that also
marks the group complete.

``apply_illum`` corrects the Cell Painting images of one well with those functions and
writes one uint16 TIFF per site and channel.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from starrynight import storage, workspace
from starrynight.algorithms import illum as alg
from starrynight.errors import InputFileError, UserError
from starrynight.imageio import read_image, write_tiff

# --------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ImageRow:
    """One image file of the index, as the steps need it."""

    uri: str
    key: str
    arm: str
    cycle: int
    well: str
    site: int
    channels: tuple[str, ...]


def plate_rows(ws: str, plate: str) -> list[ImageRow]:
    """Every image of ``plate`` in the workspace's index, sorted by key.

    Raises
    ------
    UserError
        When the index is missing or holds no image of ``plate``.
    """
    from starrynight.index import dataset_root, image_uri, load_index, rows_of_plate

    table = load_index(ws)
    root = dataset_root(ws)
    selected = rows_of_plate(ws, table, plate)
    rows = [
        ImageRow(
            uri=image_uri(root, r["key"]),
            key=r["key"],
            arm=r["arm"],
            cycle=int(r["cycle"]),
            well=r["well"],
            site=int(r["site"]),
            channels=tuple(r["channels"]),
        )
        for r in selected.select(["key", "arm", "cycle", "well", "site", "channels"]).to_pylist()
    ]
    return sorted(rows, key=lambda r: r.key)


def arm_channels(ws: str, arm: str, rows: Sequence[ImageRow]) -> tuple[list[str], dict[str, str]]:
    """Channels (as written) and roles of an arm (see :func:`experiment.arm_roles`).

    Without an experiment file every channel seen in ``rows`` is used, in the order first
    seen, and the roles are guessed from the names.
    """
    from starrynight.experiment import arm_roles

    found = arm_roles(ws, arm, (ch for row in rows for ch in row.channels))  # type: ignore[arg-type]
    return found.channels, found.roles


def normalise(channel: str) -> str:
    """Channel name as used in output file names (see ``starrynight.index``)."""
    from starrynight.index import normalise_channel

    return normalise_channel(channel)


class GroupReader:
    """Reads the frames of a group's channels from each file, checking consistency.

    Every file must hold the group's channels and have the same frame shape and dtype
    as the first file read; anything else is an :class:`InputFileError` naming it.
    """

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = list(channels)
        self.reference: tuple[tuple[int, int], np.dtype, str] | None = None
        self._lock = threading.Lock()

    def settle(self, rows: Sequence[ImageRow], sample: int = 9) -> None:
        """Decide the group's frame shape and dtype before any pixel is read.

        The majority of the headers of up to ``sample`` files spread evenly over the
        group in key order (ties: the earliest key). Without it the first file a thread
        happened to read would decide, and one odd file could make ``--skip-bad`` skip
        the good ones.
        """
        from collections import Counter

        from starrynight.imageio import read_header

        ordered = sorted(rows, key=lambda r: r.key)
        picks = ordered[:: max(1, len(ordered) // sample)][:sample]
        votes: Counter[tuple[tuple[int, int], str]] = Counter()
        first: dict[tuple[tuple[int, int], str], str] = {}
        for row in picks:
            try:
                _, shape, dtype = read_header(row.uri)
            except InputFileError:
                continue  # an unreadable file has no vote; reading it fails later
            votes[(shape, dtype.str)] += 1
            first.setdefault((shape, dtype.str), row.uri)
        if votes:
            order = list(first)
            (shape, dtype), _ = max(votes.items(), key=lambda kv: (kv[1], -order.index(kv[0])))
            self.reference = (shape, np.dtype(dtype), first[(shape, dtype)])

    def read(self, row: ImageRow) -> np.ndarray:
        """``(len(channels), H, W)`` frames of ``row`` in the group's channel order."""
        missing = [c for c in self.channels if c not in row.channels]
        if missing:
            raise InputFileError(
                row.uri,
                f"channel(s) {', '.join(missing)} missing: the file name lists "
                f"{', '.join(row.channels)}",
            )
        image = read_image(row.uri, expected_channels=len(row.channels))
        shape, dtype = image.shape[1:], image.dtype
        with self._lock:
            if self.reference is None:
                self.reference = (shape, dtype, row.uri)
        ref_shape, ref_dtype, ref_uri = self.reference
        if shape != ref_shape or dtype != ref_dtype:
            raise InputFileError(
                row.uri,
                f"frames are {shape[0]}x{shape[1]} {dtype}, but {ref_uri} of the same group "
                f"has {ref_shape[0]}x{ref_shape[1]} {ref_dtype}",
            )
        index = [row.channels.index(c) for c in self.channels]
        if index == list(range(image.shape[0])):
            return image
        return image[index]


# --------------------------------------------------------------------------- calc


@dataclass
class IllumGroupResult:
    """One illumination group (plate x arm [x cycle])."""

    arm: str
    cycle: int | None
    channels: list[str]
    n_images: int
    skipped: bool
    dark_level: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


@dataclass
class IllumCalcResult:
    """What ``illum calc`` did for a plate."""

    plate: str
    groups: list[IllumGroupResult]
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def calc_illum(
    ws: str,
    plate: str,
    arm: str | None = None,
    cycle: int | None = None,
    preset: alg.Preset = "default",
    dark_level: float | None = None,
    force: bool = False,
    skip_bad: bool = False,
    workers: int = 2,
) -> IllumCalcResult:
    """Compute the illumination functions of one plate.

    Parameters
    ----------
    ws : str
        Workspace (local folder or ``s3://`` prefix) holding the index.
    plate : str
        Plate name as in the index.
    arm : {"cp", "sbs"}, optional
        Only this arm (default: every arm the plate has).
    cycle : int, optional
        Only this SBS cycle (implies ``arm="sbs"``).
    preset : {"default", "cellprofiler"}
        See :mod:`starrynight.algorithms.illum`.
    dark_level : float, optional
        Camera dark level in counts, for the default preset; ``None`` estimates it as
        the group's smallest pixel value. Ignored by the ``cellprofiler`` preset.
    force : bool
        Recompute groups whose outputs are already complete.
    skip_bad : bool
        Leave unreadable or inconsistent images out (they are listed in the result)
        instead of stopping at the first one.
    workers : int
        Reading threads.

    Returns
    -------
    IllumCalcResult
    """
    if arm not in (None, "cp", "sbs"):
        raise UserError(f"--arm {arm!r}: expected cp or sbs")
    if cycle is not None:
        if arm == "cp":
            raise UserError(f"--cycle {cycle}: cycles belong to the sbs arm, not cp")
        arm = "sbs"
    if preset not in ("default", "cellprofiler"):
        raise UserError(f"--preset {preset!r}: expected default or cellprofiler")
    rows = plate_rows(ws, plate)
    groups: dict[tuple[str, int], list[ImageRow]] = {}
    for row in rows:
        if arm is not None and row.arm != arm:
            continue
        if cycle is not None and row.cycle != cycle:
            continue
        groups.setdefault((row.arm, row.cycle), []).append(row)
    if not groups:
        what = f"arm {arm}" + (f" cycle {cycle}" if cycle is not None else "")
        raise UserError(f"plate {plate!r}: no images of {what} in the index")
    result = IllumCalcResult(plate, [])
    for (group_arm, group_cycle), group_rows in sorted(groups.items()):
        channels, _ = arm_channels(ws, group_arm, group_rows)
        sbs_cycle = group_cycle if group_arm == "sbs" else None
        settings = alg.preset_settings(preset, group_arm)
        if dark_level is not None and preset == "default":
            settings = alg.IllumSettings(**{**asdict(settings), "dark_level": float(dark_level)})
        outcome = _calc_group(
            ws, plate, group_arm, sbs_cycle, channels, group_rows, settings, preset,
            force, skip_bad, workers, result.bad_files,
        )  # fmt: skip
        result.groups.append(outcome)
    return result


def _calc_group(
    ws: str,
    plate: str,
    arm: str,
    cycle: int | None,
    channels: list[str],
    rows: list[ImageRow],
    settings: alg.IllumSettings,
    preset: str,
    force: bool,
    skip_bad: bool,
    workers: int,
    bad_files: list[tuple[str, str]],
) -> IllumGroupResult:
    names = [normalise(c) for c in channels]
    npys = [workspace.illum_path(ws, plate, n, cycle) for n in names]
    pngs = [workspace.illum_png_path(ws, plate, n, cycle) for n in names]
    stats_uri = workspace.illum_stats_path(ws, plate, cycle)
    outputs = [*npys, *pngs, stats_uri]
    if not force and _group_complete(stats_uri, outputs, len(rows), preset, channels):
        stats = json.loads(storage.read_bytes(stats_uri))
        return IllumGroupResult(
            arm, cycle, channels, stats["n_images"], True,
            {c["channel"]: c["dark_level"] for c in stats["channels"]}, outputs,
        )  # fmt: skip
    reader = GroupReader(channels)
    reader.settle(rows)
    acc, bad = accumulate(rows, reader.read, workers=workers, skip_bad=skip_bad)
    bad_files.extend(bad)
    if acc.count == 0:
        raise UserError(f"plate {plate} {arm}: every image of the group was unreadable")
    mean = acc.mean()
    per_channel = []
    darks: dict[str, float] = {}
    functions = []
    for i, channel in enumerate(channels):
        if settings.cellprofiler_scaling:
            dark = 0.0
        elif settings.dark_level is None:
            dark = alg.estimate_dark_level(mean[i], float(acc.minimum[i]))
        else:
            dark = float(settings.dark_level)
        function = alg.illumination_function(mean[i], settings, dark)
        functions.append(function)
        darks[channel] = dark
        per_channel.append(
            {
                "channel": channel,
                "file": npys[i].rsplit("/", 1)[-1],
                "min": float(function.min()),
                "max": float(function.max()),
                "mean_image_min": float(mean[i].min()),
                "mean_image_max": float(mean[i].max()),
                "dark_level": dark,
            }
        )
    for function, npy, png in zip(functions, npys, pngs, strict=True):
        with storage.atomic_local_path(npy, suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, function)
        storage.write_bytes(png, heatmap_png(function))
    stats = {
        "plate": plate,
        "arm": arm,
        "cycle": cycle,
        "preset": preset,
        "settings": asdict(settings),
        "n_images": acc.count,
        "n_indexed": len(rows),
        "shape": list(mean.shape[1:]),
        "channels": per_channel,
        "bad_files": [{"file": f, "problem": p} for f, p in bad],
    }
    storage.write_bytes(stats_uri, json.dumps(stats, indent=2).encode())
    return IllumGroupResult(arm, cycle, channels, acc.count, False, darks, outputs)


def _group_complete(
    stats_uri: str, outputs: list[str], n_rows: int, preset: str, channels: list[str]
) -> bool:
    if not storage.exists(stats_uri):
        return False
    try:
        stats = json.loads(storage.read_bytes(stats_uri))
    except (UserError, ValueError):
        return False
    same = (
        stats.get("n_indexed") == n_rows
        and stats.get("preset") == preset
        and [c.get("channel") for c in stats.get("channels", [])] == channels
    )
    return same and all(storage.exists(uri) for uri in outputs)


def accumulate(
    rows: Sequence[ImageRow],
    read: Callable[[ImageRow], np.ndarray],
    workers: int = 2,
    skip_bad: bool = False,
) -> tuple[alg.MeanAccumulator, list[tuple[str, str]]]:
    """Sum the images of ``rows``, each file read once for all its channels.

    ``workers - 1`` threads read and decode files ahead (at most ``workers + 1`` files
    in flight) while this thread adds them, in row order, into one accumulator: both
    cores busy, memory bounded independently of the number of rows, and a result
    that does not depend on timing. (Two accumulators on two threads were measured
    slower: the additions are memory-bound.)

    Returns
    -------
    (MeanAccumulator, list of (uri, problem))
        The sums and, with ``skip_bad``, the files left out.

    Raises
    ------
    InputFileError
        The first bad file (in row order) when ``skip_bad`` is False.
    """
    acc = alg.MeanAccumulator()
    bad: list[tuple[str, str]] = []

    def consume(image_or_error: np.ndarray | InputFileError) -> None:
        if isinstance(image_or_error, InputFileError):
            if not skip_bad:
                raise image_or_error
            bad.append((image_or_error.path, image_or_error.problem))
        else:
            acc.add(image_or_error)

    def safe_read(row: ImageRow) -> np.ndarray | InputFileError:
        try:
            return read(row)
        except InputFileError as exc:
            return exc

    if workers <= 1:
        for row in rows:
            consume(safe_read(row))
        return acc, bad
    ahead = workers + 1
    with ThreadPoolExecutor(max_workers=workers - 1) as pool:
        pending: deque = deque()
        for row in rows:
            pending.append(pool.submit(safe_read, row))
            if len(pending) >= ahead:
                consume(pending.popleft().result())
        while pending:
            consume(pending.popleft().result())
    return acc, bad


# Anchors of matplotlib's viridis colour map; users read these heat-maps by eye.
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)


def heatmap_png(function: np.ndarray, max_side: int = 512) -> bytes:
    """A viridis PNG of an illumination function, scaled min (dark) to max (yellow)."""
    from PIL import Image

    step = max(1, int(np.ceil(max(function.shape) / max_side)))
    small = np.asarray(function[::step, ::step], np.float64)
    lo, hi = float(small.min()), float(small.max())
    t = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    pos = t * (len(_VIRIDIS) - 1)
    i = np.clip(pos.astype(int), 0, len(_VIRIDIS) - 2)
    frac = (pos - i)[..., None]
    rgb = _VIRIDIS[i] * (1 - frac) + _VIRIDIS[i + 1] * frac
    buf = io.BytesIO()
    Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class LoadedFunction:
    """An illumination function ready to apply (see :func:`alg.apply_gain`).

    ``gain`` is the float32 ``1 / function``, ``dark`` the dark level the function was
    computed without, ``clip`` whether results can leave the uint16 range.
    """

    channel: str
    uri: str
    gain: np.ndarray
    dark: float
    clip: bool

    def apply(
        self, image: np.ndarray, out: np.ndarray | None = None, buffer: np.ndarray | None = None
    ) -> np.ndarray:
        """Correct one 2-D uint16 image of this channel (into ``out`` when given)."""
        return alg.apply_gain(image, self.gain, self.dark, out=out, clip=self.clip, buffer=buffer)


def load_functions(
    ws: str, plate: str, channels: Iterable[str], cycle: int | None = None, required: bool = True
) -> dict[str, LoadedFunction] | None:
    """Load the illumination functions of ``channels`` with their dark levels.

    Returns None when ``required`` is False and none of the files exist.

    Raises
    ------
    UserError
        When a function file is missing (naming it and the command that makes it).
    """
    channels = list(channels)
    uris = {c: workspace.illum_path(ws, plate, normalise(c), cycle) for c in channels}
    present = {c: storage.exists(u) for c, u in uris.items()}
    if not required and not any(present.values()):
        return None
    stats_uri = workspace.illum_stats_path(ws, plate, cycle)
    darks: dict[str, float] = {}
    if storage.exists(stats_uri):
        try:
            stats = json.loads(storage.read_bytes(stats_uri))
            darks = {c["channel"]: float(c["dark_level"]) for c in stats["channels"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise InputFileError(stats_uri, f"not a valid statistics file ({exc})") from exc
    loaded = {}
    for channel, uri in uris.items():
        if not present[channel]:
            cmd = f"starrynight illum calc -w {ws} --plate {plate}" + (
                f" --cycle {cycle}" if cycle is not None else " --arm cp"
            )
            raise UserError(
                f"{uri}: illumination function for channel {channel} missing (run '{cmd}')"
            )
        try:
            function = _load_npy(uri)
        except (ValueError, EOFError) as exc:
            raise InputFileError(uri, f"not a readable .npy array ({exc})") from exc
        # Two reductions check it all: NaN propagates into min, infinity shows in max.
        lo = float(function.min()) if function.ndim == 2 and function.size else float("nan")
        hi = float(function.max()) if np.isfinite(lo) else lo
        if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
            raise InputFileError(uri, "expected a 2-D array of finite positive values")
        dark = darks.get(channel, 0.0)
        gain = alg.correction_gain(function)
        loaded[channel] = LoadedFunction(channel, uri, gain, dark, alg.needs_clip(lo, dark))
    return loaded


def _load_npy(uri: str) -> np.ndarray:
    """Load a ``.npy`` array; local files directly (5x faster than via a bytes copy)."""
    if storage.is_s3(uri):
        return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    return np.load(os.path.expanduser(uri), allow_pickle=False)


@dataclass
class IllumApplyResult:
    """What ``illum apply`` did for a well."""

    plate: str
    well: str
    sites_written: int
    sites_skipped: int
    files_written: int
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def apply_illum(
    ws: str,
    plate: str,
    well: str,
    force: bool = False,
    skip_bad: bool = False,
    workers: int = 2,
    progress: bool | None = None,
) -> IllumApplyResult:
    """Correct the Cell Painting images of one well and write one TIFF per site and channel.

    Each image is corrected as ``dark + (image - dark) / function`` (``dark`` = the
    dark level its function was computed without; 0 for the cellprofiler preset, which
    is then CellProfiler's division), rounded and clipped to uint16. Every CP site of
    the well in the index is a site of the step (:func:`starrynight.siterunner.run_sites`):
    a site whose outputs exist and whose image and functions are unchanged is skipped
    unless ``force``. If the run stops on a bad image, the files it wrote are removed
    again, so a failed run leaves nothing behind.

    Parameters
    ----------
    ws, plate, well : str
        Workspace, plate and well (as written in the index).
    force : bool
        Rewrite sites that are already complete.
    skip_bad : bool
        Skip sites whose image cannot be read (listed in the result).
    workers : int
        Sites processed concurrently (threads).
    progress : bool, optional
        Progress line (default: on a terminal).

    Returns
    -------
    IllumApplyResult
    """
    from starrynight.siterunner import SiteTask, run_sites

    rows = [r for r in plate_rows(ws, plate) if r.arm == "cp" and r.well == well]
    if not rows:
        raise UserError(f"plate {plate!r} well {well!r}: no Cell Painting images in the index")
    channels, _ = arm_channels(ws, "cp", rows)
    functions = load_functions(ws, plate, channels)
    assert functions is not None
    names = [normalise(c) for c in channels]
    reader = GroupReader(channels)
    reader.settle(rows)
    function_uris = tuple(f.uri for f in functions.values())
    # Per-thread output image and float32 scratch, reused for every channel and site:
    # the corrected plane is written before the next one is computed.
    scratch = threading.local()

    def do_site(task: SiteTask) -> int:
        (row,) = task.args
        image = reader.read(row)
        if image.shape[1:] != functions[channels[0]].gain.shape:
            raise InputFileError(
                row.uri,
                f"frames are {image.shape[1]}x{image.shape[2]} but the illumination "
                f"function {functions[channels[0]].uri} is "
                f"{'x'.join(map(str, functions[channels[0]].gain.shape))}",
            )
        if getattr(scratch, "out", None) is None or scratch.out.shape != image.shape[1:]:
            scratch.out = np.empty(image.shape[1:], np.uint16)
            scratch.buffer = np.empty((alg.BLOCK_ROWS, image.shape[2]), np.float32)
        for i, channel in enumerate(channels):
            corrected = functions[channel].apply(image[i], scratch.out, scratch.buffer)
            write_tiff(task.outputs[i], corrected)
        return len(channels)

    tasks = [
        SiteTask(
            row.site,
            (row.uri, *function_uris),
            tuple(workspace.corrected_path(ws, plate, well, row.site, n) for n in names),
            (row,),
        )
        for row in rows
    ]
    run = run_sites(
        "illum apply", do_site, tasks,
        manifest=workspace.site_manifest_path(ws, "corrected_cp", plate, well),
        load=lambda task: 0, workers=workers, force=force, skip_bad=skip_bad,
        progress=progress,
        missing_hint="the index lists images that are gone (re-run inventory gen and index gen)",
    )  # fmt: skip
    return IllumApplyResult(
        plate, well, len(run.computed), len(run.current),
        sum(run.results[s] for s in run.computed), run.bad_files,
    )  # fmt: skip
