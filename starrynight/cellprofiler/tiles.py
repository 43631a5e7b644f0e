"""``cp tiles``: both arms of a well cut into one tile grid, for PCPIP's 9_Analysis.

When Cell Painting (20X) and SBS (10X) were imaged on different site grids, CP site 3
and SBS site 3 are different fields of view, so a lab's 9_Analysis.cppipe cannot run on
sites paired by number. PCPIP's answer (its Fiji "stitch and crop" steps 4 and 8) is to
stitch each arm's well, scale SBS by the magnification ratio, pad both to one canvas and
cut both into the same ``tileperside`` x ``tileperside`` tiles; tile N of either arm
then shows the same cells. This module does that from StarryNight's products:

- the CP mosaic (``mosaics/<plate>-<well>/cp.zarr``, drawn by ``starrynight mosaic``
  from the illumination-corrected images) is cut as it is: the canvas is its pixel
  grid, anchored top-left and padded with zeros to ``tiles_per_side * tile_size``;
- the SBS mosaic (``sbs.zarr``: the aligned images, in the frame of the first cycle) is
  resampled into that canvas (bilinear) through the merge's registered SBS -> CP
  similarity (``merge/<plate>-<well>/report.json``: scale, rotation and translation
  measured from the nuclei of both arms) or, with ``transform="stage"``, through the
  recorded stage positions alone (both arms' positions taken as one frame);
- both mosaics are read chunk by chunk through zarr: one tile at a time, one image at a
  time, so memory holds one tile and its SBS source box, never the well.

Outputs, under PCPIP's names (see :func:`starrynight.workspace.cropped_path`):
``images_corrected_cropped/<plate>_Well<well>/<image>/<image>_Site_<N>.tiff`` for every
image 9_Analysis loads (``Corr<Name>``, ``Cycle<kk>_<Base>``, ``Cycle01_DAPI``), tiles
numbered as PCPIP does (column-major from 1); ``tiles/<plate>-<well>/plan.json`` (what
the tiles were cut with, written before them), ``..._tiles.parquet`` (one row per tile:
its place in the mosaic and the well frame, the share of it each arm covers) and
``..._tiles.json`` (the report, written last: marks the well's tiles complete).

Every file is written atomically; a re-run with the same plan skips the tiles whose
files all exist, and a different plan (grid, transform, a redrawn mosaic, other names)
removes the old tiles first, so no folder mixes two grids.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from starrynight import storage, workspace
from starrynight.algorithms import tiles as tl
from starrynight.cellprofiler.loaddata import analysis_images
from starrynight.errors import UserError
from starrynight.experiment import load_experiment
from starrynight.imageio import write_tiff

TRANSFORMS = ("merge", "stage")

TILES_SCHEMA = pa.schema(
    [
        ("plate", pa.string()),
        ("well", pa.string()),
        ("site", pa.int32()),
        ("tile_row", pa.int32()),
        ("tile_col", pa.int32()),
        ("y0_px", pa.int64()),
        ("x0_px", pa.int64()),
        ("y_um", pa.float64()),
        ("x_um", pa.float64()),
        ("size_px", pa.int32()),
        ("cp_fraction", pa.float64()),
        ("sbs_fraction", pa.float64()),
    ]
)


@dataclass
class TilesResult:
    """What :func:`tile_well` did for one well."""

    plate: str
    well: str
    tiles_per_side: int
    tile_size: int
    extent: tuple[int, int]
    transform: dict[str, Any]
    images: list[str]
    written: int = 0
    skipped: int = 0
    removed_stale: bool = False
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the CLI."""
        h, w = self.extent
        n = self.tiles_per_side
        t = self.transform
        how = (
            f"SBS placed by the merge's {t['model']} (scale {t['scale_px']:.4f} CP px per SBS px, "
            f"rotation {t['rotation_deg']:.3f} deg)"
            if t["source"] == "merge"
            else "SBS placed by the stage positions (no registration)"
        )
        return (
            f"{self.plate} {self.well}: {n * n} tile(s) of {self.tile_size} px ({n} per side, "
            f"canvas {n * self.tile_size} px over the CP mosaic's {h} x {w} px), "
            f"{len(self.images)} image(s) each; {how}; wrote {self.written}, "
            f"skipped {self.skipped} complete"
        )


# --------------------------------------------------------------------------- mosaics


class StorageStore(Store):
    """A read-only zarr store over the storage layer (a local folder or ``s3://``).

    zarr's own fsspec store needs ``s3fs``, which is not a dependency; this one reads
    every chunk through :mod:`starrynight.storage`, as every other input is read.
    """

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, root: str) -> None:
        super().__init__(read_only=True)
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageStore) and other.root == self.root

    def _read(self, key: str) -> bytes | None:
        fs, path = storage.filesystem(storage.join(self.root, *key.split("/")))
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(f"{self.root}/{key}: cannot read ({exc})") from exc

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        data = self._read(key)
        if data is None:
            return None
        if isinstance(byte_range, RangeByteRequest):
            data = data[byte_range.start : byte_range.end]
        elif isinstance(byte_range, OffsetByteRequest):
            data = data[byte_range.offset :]
        elif isinstance(byte_range, SuffixByteRequest):
            data = data[-byte_range.suffix :]
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype, key_ranges):
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return storage.exists(storage.join(self.root, *key.split("/")))

    async def set(self, key: str, value: Buffer) -> None:
        raise NotImplementedError("read-only")

    async def delete(self, key: str) -> None:
        raise NotImplementedError("read-only")

    async def list(self) -> AsyncIterator[str]:
        for e in storage.list_files(self.root):
            yield e.key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for e in storage.list_files(self.root):
            if e.key.startswith(prefix):
                yield e.key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        base = storage.join(self.root, *[p for p in prefix.split("/") if p])
        seen = set()
        for e in storage.list_files(base):
            head = e.key.split("/")[0]
            if head not in seen:
                seen.add(head)
                yield head


@dataclass
class _Mosaic:
    """Level 0 of an arm's OME-NGFF mosaic and where it lies in the arm's pixel frame."""

    uri: str
    array: Any  # zarr.Array (c, y, x)
    channels: list[str]
    shape: tuple[int, int]
    origin_px: tuple[float, float]
    pixel_um: tuple[float, float]
    field_px: int
    fields: tl.MosaicFields
    stamp: list[Any]

    def channel(self, label: str) -> int:
        try:
            return self.channels.index(label)
        except ValueError:
            raise UserError(
                f"{self.uri}: has no channel {label!r} (channels: {', '.join(self.channels)}); "
                "redraw it with 'starrynight mosaic --force'"
            ) from None


def _read_mosaic(
    ws: str, plate: str, well: str, arm: str, positions_uri: str, make: str
) -> _Mosaic:
    import zarr

    uri = workspace.mosaic_path(ws, plate, well, arm)
    attrs_uri = storage.join(uri, ".zattrs")
    if not storage.exists(attrs_uri):
        raise UserError(
            f"{uri}: no {arm.upper()} mosaic yet (run 'starrynight mosaic -w {ws} --plate "
            f"{plate} --well {well}'{make})"
        )
    if not storage.exists(positions_uri):
        raise UserError(
            f"{positions_uri}: no {arm.upper()} site positions (run 'starrynight geometry -w "
            f"{ws} --plate {plate} --well {well}')"
        )
    try:
        root = zarr.open_group(StorageStore(uri), mode="r")
        attrs = dict(root.attrs)
        level0 = attrs["multiscales"][0]["datasets"][0]["path"]
        channels = [str(c["label"]) for c in attrs["omero"]["channels"]]
        array = root[level0]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise UserError(f"{uri}: not an OME-NGFF mosaic of StarryNight ({exc})") from exc
    pos = _read_table(positions_uri).to_pylist()
    if not pos:
        raise UserError(f"{positions_uri}: no site positions")
    # The mosaic's pixel (0, 0) is the floor of the smallest position (see modules.mosaic).
    y0 = math.floor(min(p["y_px"] for p in pos))
    x0 = math.floor(min(p["x_px"] for p in pos))
    fh, fw = int(pos[0]["height_px"]), int(pos[0]["width_px"])
    expect = (
        max(round(p["y_px"] - y0) for p in pos) + fh,
        max(round(p["x_px"] - x0) for p in pos) + fw,
    )
    shape = (int(array.shape[1]), int(array.shape[2]))
    if shape != expect or len(channels) != array.shape[0]:
        raise UserError(
            f"{uri}: is {shape[0]} x {shape[1]} px but the site positions in {positions_uri} "
            f"draw {expect[0]} x {expect[1]} px: the mosaic is older than the geometry; "
            f"run 'starrynight mosaic -w {ws} --plate {plate} --well {well} --force'"
        )
    stamp = storage.stat_many([attrs_uri, positions_uri])
    return _Mosaic(
        uri, array, channels, shape, (float(y0), float(x0)),
        (float(pos[0]["pixel_size_y_um"]), float(pos[0]["pixel_size_x_um"])),
        max(fh, fw),
        tl.MosaicFields.from_positions(
            np.array([[p["y_px"] - y0, p["x_px"] - x0] for p in pos]), (fh, fw)
        ),
        [list(s) if s else None for s in stamp],
    )  # fmt: skip


def _first_sbs_cycle(ws: str, plate: str, well: str, cycles: Iterable[int]) -> int:
    for k in sorted(cycles):
        if storage.exists(workspace.positions_path(ws, plate, well, "sbs", k)):
            return k
    raise UserError(
        f"plate {plate!r} well {well!r}: no SBS site positions under "
        f"{workspace.geometry_dir(ws, plate, well)} (run 'starrynight geometry -w {ws} "
        f"--plate {plate} --well {well}')"
    )


def _transform(ws: str, plate: str, well: str, how: str, sbs_cycle: int) -> dict[str, Any]:
    """The SBS -> CP map (well-frame um, acting on ``(x, y, 1)``) and where it comes from."""
    if how == "stage":
        return {
            "source": "stage", "model": "identity", "matrix_xy_um": np.eye(3).tolist(),
            "scale": 1.0, "scale_px": None, "rotation_deg": 0.0, "flags": [],
            "note": "both arms' recorded stage positions taken as one frame (no registration)",
        }  # fmt: skip
    uri = workspace.merge_report_path(ws, plate, well)
    if not storage.exists(uri):
        raise UserError(
            f"{uri}: no merge for plate {plate!r} well {well!r} yet, so SBS cannot be placed "
            f"in the CP frame (run 'starrynight merge -w {ws} --plate {plate} --well {well}', "
            "or pass --transform stage to trust the stage positions)"
        )
    report = json.loads(storage.read_bytes(uri))
    t = report.get("transform")
    if report.get("status") != "registered" or not t:
        raise UserError(
            f"{uri}: plate {plate!r} well {well!r} is {report.get('status')!r} "
            f"({report.get('reason') or 'no transform'}): no tiles cut on a guessed placement "
            "(pass --transform stage to trust the stage positions)"
        )
    merged_cycle = (report.get("sbs") or {}).get("cycle")
    if merged_cycle is not None and int(merged_cycle) != sbs_cycle:
        raise UserError(
            f"{uri}: registered SBS cycle {merged_cycle}, but the SBS mosaic is in the frame "
            f"of cycle {sbs_cycle}; re-run 'starrynight merge --force' for this well"
        )
    return {
        "source": "merge", "model": t["model"], "matrix_xy_um": t["matrix_xy_um"],
        "scale": t["scale"], "scale_px": t["scale_px"], "rotation_deg": t["rotation_deg"],
        "flags": list(report.get("flags") or []),
        "residual_rms_um": ((report.get("registration") or {}).get("residual_um") or {}).get("rms"),
    }  # fmt: skip


# --------------------------------------------------------------------------- tiles


def _cp_tiles(m: _Mosaic, channels: list[int], y0: int, x0: int, size: int) -> np.ndarray:
    """The CP channels of one tile, ``(len(channels), size, size)``, zero-padded.

    One zarr read for all channels: their chunks are fetched and decoded concurrently.
    """
    out = np.zeros((len(channels), size, size), np.uint16)
    y1, x1 = min(m.shape[0], y0 + size), min(m.shape[1], x0 + size)
    if channels and y1 > y0 and x1 > x0:
        sel = (channels, slice(y0, y1), slice(x0, x1))
        out[:, : y1 - y0, : x1 - x0] = m.array.get_orthogonal_selection(sel)
    return out


def _sbs_tiles(m: _Mosaic, channels: list[int], sampler: tl.Resampler) -> np.ndarray:
    """The SBS channels resampled into one tile; only the box of the mosaic it needs is read."""
    if sampler.box is None or not channels:
        return np.zeros((len(channels), *sampler.shape), np.uint16)
    ys, ye, xs, xe = sampler.box
    regions = m.array.get_orthogonal_selection((channels, slice(ys, ye), slice(xs, xe)))
    return np.stack([sampler(r) for r in regions])


def tile_well(
    ws: str,
    plate: str,
    well: str,
    tiles_per_side: int | None = None,
    tile_size: int | None = None,
    names: Mapping[str, str] | None = None,
    transform: str = "merge",
    force: bool = False,
    workers: int = 2,
) -> TilesResult:
    """Cut both arms' mosaics of a well into one tile grid (see the module's docstring).

    Parameters
    ----------
    ws, plate, well : str
        Workspace, plate and well.
    tiles_per_side, tile_size : int, optional
        PCPIP's ``tileperside`` and ``final_tile_size`` (CP pixels); see
        :func:`starrynight.algorithms.tiles.tile_grid` for the defaults.
    names : mapping, optional
        Channel (as written) -> CellProfiler name, as ``cp loaddata --name``.
    transform : {"merge", "stage"}
        How SBS is placed in the CP frame.
    force : bool
        Cut every tile again.
    workers : int
        Tiles cut at once.

    Raises
    ------
    UserError
        A mosaic, positions or the merge missing (naming the file and the command that
        makes it), a grid that does not fit the well, or a well that is not registered.
    """
    if transform not in TRANSFORMS:
        raise UserError(f"--transform {transform!r}: expected one of {', '.join(TRANSFORMS)}")
    exp = load_experiment(ws)
    images = analysis_images(exp, names)
    assert exp.sbs is not None  # analysis_images raised otherwise
    sbs_cycle = _first_sbs_cycle(ws, plate, well, exp.sbs.cycles)
    cp = _read_mosaic(ws, plate, well, "cp", workspace.positions_path(ws, plate, well, "cp"), "")
    sbs = _read_mosaic(
        ws, plate, well, "sbs", workspace.positions_path(ws, plate, well, "sbs", sbs_cycle),
        " after 'starrynight align'",
    )  # fmt: skip
    try:
        grid = tl.tile_grid(cp.shape, tiles_per_side, tile_size, field_px=cp.field_px)
    except ValueError as exc:
        raise UserError(f"plate {plate!r} well {well!r}: {exc}") from None
    t = _transform(ws, plate, well, transform, sbs_cycle)
    affine = tl.cp_to_sbs_pixels(
        cp.origin_px, cp.pixel_um, sbs.origin_px, sbs.pixel_um, np.asarray(t["matrix_xy_um"])
    )
    labels = {
        img.name: (cp if img.arm == "cp" else sbs).channel(
            img.channel if img.arm == "cp" else f"Cycle{img.cycle:02d}_{img.channel}"
        )
        for img in images
    }
    plan = {
        "tiles_per_side": grid.tiles_per_side, "tile_size": grid.tile_size,
        "extent": list(grid.extent), "canvas": grid.canvas, "transform": t,
        "images": {i.name: [i.arm, i.channel, i.cycle] for i in images},
        "cp_mosaic": cp.stamp, "sbs_mosaic": sbs.stamp, "sbs_cycle": sbs_cycle,
        "numbering": "PCPIP: column-major from 1 (site = col * tiles_per_side + row + 1)",
    }  # fmt: skip
    result = TilesResult(
        plate, well, grid.tiles_per_side, grid.tile_size, grid.extent, t, [i.name for i in images]
    )
    if t["flags"]:
        result.warnings.append(
            f"the merge flagged this well ({', '.join(t['flags'])}): SBS tiles may be off"
        )
    _start(ws, plate, well, plan, force, result)

    def cut(tile: tuple[int, int, int, int, int]) -> tuple[bool, dict[str, Any]]:
        site, row, col, y0, x0 = tile
        uris = {i.name: workspace.cropped_path(ws, plate, well, i.name, site) for i in images}
        done = all(s is not None for s in storage.stat_many(list(uris.values())))
        if not done:
            # Where every tile pixel's SBS content lies in the SBS mosaic, once per tile;
            # both mosaics' half-pixel pastings are undone (at 10X up to a CP pixel).
            coords = tl.source_coordinates(affine, y0, x0, grid.tile_size, cp.fields, sbs.fields)
            sampler = tl.resampler(coords, sbs.shape)
            del coords
            for arm, mosaic in (("cp", cp), ("sbs", sbs)):
                mine = [i for i in images if i.arm == arm]
                channels = [labels[i.name] for i in mine]
                if arm == "cp":
                    stack = _cp_tiles(mosaic, channels, y0, x0, grid.tile_size)
                else:
                    stack = _sbs_tiles(mosaic, channels, sampler)
                for img, pixels in zip(mine, stack, strict=True):
                    write_tiff(uris[img.name], pixels)
                del stack
        size = grid.tile_size
        inside = max(0, min(cp.shape[0], y0 + size) - y0) * max(0, min(cp.shape[1], x0 + size) - x0)
        row_out = {
            "plate": plate, "well": well, "site": site, "tile_row": row, "tile_col": col,
            "y0_px": y0, "x0_px": x0,
            "y_um": (y0 + cp.origin_px[0]) * cp.pixel_um[0],
            "x_um": (x0 + cp.origin_px[1]) * cp.pixel_um[1],
            "size_px": size, "cp_fraction": inside / size**2,
            "sbs_fraction": tl.coverage(affine, y0, x0, size, sbs.shape),
        }  # fmt: skip
        return done, row_out

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = list(pool.map(cut, grid.tiles()))
    result.skipped = sum(done for done, _ in outcomes)
    result.written = len(outcomes) - result.skipped
    table_uri = workspace.tiles_table_path(ws, plate, well)
    table = pa.Table.from_pylist([r for _, r in outcomes], schema=TILES_SCHEMA)
    with storage.atomic_local_path(table_uri, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    report_uri = workspace.tiles_report_path(ws, plate, well)
    report = {
        **plan, "plate": plate, "well": well, "tiles": grid.count,
        "folder": workspace.cropped_well_dir(ws, plate, well),
        "warnings": result.warnings, "table": table_uri,
        "status": "flagged" if t["flags"] else "complete",
    }  # fmt: skip
    storage.write_bytes(report_uri, (json.dumps(report, indent=2) + "\n").encode())
    result.outputs = [workspace.cropped_well_dir(ws, plate, well), table_uri, report_uri]
    return result


def _start(
    ws: str, plate: str, well: str, plan: dict[str, Any], force: bool, result: TilesResult
) -> None:
    """Record the plan; tiles of another plan (or all, with ``force``) are removed first."""
    plan_uri = workspace.tiles_plan_path(ws, plate, well)
    old = json.loads(storage.read_bytes(plan_uri)) if storage.exists(plan_uri) else None
    folder = workspace.cropped_well_dir(ws, plate, well)
    if force or old != json.loads(json.dumps(plan)):
        for uri in (workspace.tiles_report_path(ws, plate, well), plan_uri):
            if storage.exists(uri):
                storage.remove(uri)
        if storage.exists(folder):
            storage.remove_tree(folder)
            result.removed_stale = old is not None or force
    storage.write_bytes(plan_uri, (json.dumps(plan, indent=2) + "\n").encode())


def _read_table(uri: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except pa.ArrowInvalid as exc:
        raise UserError(f"{uri}: not a readable parquet file ({exc})") from exc
