"""The sample screen imaged the real way: two magnifications, two site grids, one plate.

``starrynight sample generate --geometry real`` (``SampleSpec(geometry="real")``) draws
one continuous layer of cells per well and images it twice, as optical pooled screens
do:

- Cell Painting at "20X": a ``cp_grid`` of fields of ``size`` pixels of ``cp_pixel_um``,
  overlapping by ``overlap_pct``;
- SBS at "10X": pixels ``pixel_ratio`` times larger (1.99, not exactly 2), a
  ``sbs_grid`` of fields over about the same area; the plate was taken off the stage
  in between, so the SBS pass is rotated (up to 1 degree) and shifted (up to 25 um)
  relative to CP, and every SBS cycle is remounted again with an unrecorded shift
  (up to 20 um);
- every visit of a field misses its stage target by a normal error of
  ``stage_error_um`` per axis; the OME-XML records the commanded position (the
  field's centre) and ``PhysicalSizeX/Y``.

The cells live in the CP well frame (micrometres) and are drawn from blocks of the
well, each from its own random stream, so a site is rendered from the few blocks under
it: memory does not grow with the number of sites, and the bytes depend only on the
spec. Ground truth (``ground_truth/``): ``site_positions.parquet`` (every field's true
and recorded top-left corner per arm and cycle, in that acquisition's stage frame),
``sbs_frames.parquet`` (the rotation, scale and translation taking each SBS cycle's
stage frame to the CP frame), ``cells.parquet`` (every cell seen in a CP site, with its
well-wide ``well_cell_id``, barcode and gene), ``sbs_cells.parquet`` (the same for SBS
cycle 1 sites), ``shifts.parquet`` (per SBS site, content displacement of cycle k
relative to cycle 1) and the nuclei/cell masks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.segmentation import expand_labels

from starrynight.imageio import write_tiff
from starrynight.roles import NUCLEAR_NAMES
from starrynight.sample_render import (
    BASES,
    CROSSTALK,
    PSF_SIGMA,
    _cp_signal,
    _file_uuid,
    _Scene,
    illumination_field,
    stage_centre,
    write_ome,
)

BLOCK_CELLS = 8  # cells per block side
MAX_ROTATION_DEG = 1.0
MAX_SBS_SHIFT_UM = 25.0
MAX_REMOUNT_UM = 20.0


@dataclass(frozen=True)
class Frame:
    """Where one acquisition's pixel grid lies in the CP well frame (micrometres, y x).

    Pixel ``(i, j)``'s centre is at stage point ``corner + (i + 0.5, j + 0.5) * pixel``
    of the acquisition's stage frame, which maps to the well frame by
    ``rotate(stage + remount, rotation) + translation``.
    """

    corner: tuple[float, float]
    pixel: float
    rotation: float = 0.0
    translation: tuple[float, float] = (0.0, 0.0)
    remount: tuple[float, float] = (0.0, 0.0)

    def to_pixels(self, world: np.ndarray) -> np.ndarray:
        """Well-frame points ``(n, 2)`` -> fractional pixel indices ``(row, col)``."""
        stage = _rotate(np.asarray(world, float) - self.translation, -self.rotation)
        stage = stage - np.asarray(self.remount)
        return (stage - np.asarray(self.corner)) / self.pixel - 0.5

    def to_world(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel indices ``(n, 2)`` -> well-frame points."""
        stage = np.asarray(self.corner) + (np.asarray(pixels, float) + 0.5) * self.pixel
        return _rotate(stage + np.asarray(self.remount), self.rotation) + self.translation


def _rotate(yx: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    y, x = yx[..., 0], yx[..., 1]
    return np.stack([x * s + y * c, x * c - y * s], axis=-1)


@dataclass(frozen=True)
class Cells:
    """Cells of a region of the well (arrays, one entry per cell; positions in um)."""

    ids: np.ndarray
    centre: np.ndarray  # (n, 2) y, x
    radii: np.ndarray  # (n, 2) ry, rx
    angle: np.ndarray
    brightness: np.ndarray
    cyto: np.ndarray
    barcode: np.ndarray
    wave: np.ndarray  # (n, 3): ky, kx (rad/um), phase of the nuclear texture
    spot_owner: np.ndarray  # index into the cells
    spot_pos: np.ndarray  # (m, 2) um
    spot_amp: np.ndarray


def spacing_um(spec) -> float:
    """Distance between neighbouring cells' lattice points."""
    return 3.4 * spec.nucleus_radius * spec.cp_pixel_um


#: Spots a cell carries, drawn uniformly in ``[MIN_SPOTS, MAX_SPOTS]``.
MIN_SPOTS, MAX_SPOTS = 3, 6
#: Candidate positions drawn per spot; those in a neighbour's territory are refused.
SPOT_CANDIDATES = 4


def _block_rng(spec, plate: int, well: int, by: int, bx: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 53, plate, well, by + 100_000, bx + 100_000])


def _block_centres(
    rng: np.random.Generator, spec, by: int, bx: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first draws of a block's stream: which lattice points hold a cell, and where."""
    sp = spacing_um(spec)
    a = np.arange(BLOCK_CELLS)
    gy, gx = np.meshgrid(a, a, indexing="ij")
    keep = rng.random(gy.size) > 0.2
    jitter = rng.uniform(-0.15, 0.15, size=(gy.size, 2)) * sp
    centre = (
        np.column_stack(
            [(by * BLOCK_CELLS + gy.ravel() + 0.5) * sp, (bx * BLOCK_CELLS + gx.ravel() + 0.5) * sp]
        )
        + jitter
    )
    return keep, centre


def block_cells(spec, plate: int, well: int, by: int, bx: int, n_barcodes: int) -> Cells:
    """The cells of one block of the well, from the block's own random stream.

    Each cell carries :data:`MIN_SPOTS` to :data:`MAX_SPOTS` amplicons in a ring of its
    cytoplasm, and only where no other cell's centre is nearer (the territory its
    expanded-nucleus mask covers): rolling-circle products stay inside the cell that
    made them, so a spot is never drawn over a neighbour, whichever block that
    neighbour comes from.
    """
    rng = _block_rng(spec, plate, well, by, bx)
    r_um = spec.nucleus_radius * spec.cp_pixel_um
    keep, centre = _block_centres(rng, spec, by, bx)
    n = keep.size
    ry = r_um * rng.uniform(0.8, 1.1, n)
    rx = ry * rng.uniform(0.7, 1.0, n)
    angle = rng.uniform(0, np.pi, n)
    brightness = rng.lognormal(0, 0.25, n)
    cyto = rng.lognormal(0, 0.3, n)
    barcode = rng.integers(0, n_barcodes, n)
    theta = rng.uniform(0, 2 * np.pi, n)
    k = 2 * np.pi / (r_um * rng.uniform(0.5, 0.9, n))
    wave = np.column_stack([k * np.sin(theta), k * np.cos(theta), rng.uniform(0, 2 * np.pi, n)])
    counts = rng.integers(MIN_SPOTS, MAX_SPOTS + 1, n)
    m = MAX_SPOTS * SPOT_CANDIDATES
    phi = rng.uniform(0, 2 * np.pi, (n, m))
    rad = r_um * rng.uniform(1.3, 2.2, (n, m))
    amp = rng.lognormal(0, 0.3, (n, m))
    candidates = centre[:, None, :] + np.stack([rad * np.sin(phi), rad * np.cos(phi)], axis=-1)
    # Every cell that could be nearer: this block's and its eight neighbours'.
    others = [centre[keep]]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                k_n, c_n = _block_centres(_block_rng(spec, plate, well, by + dy, bx + dx),
                                          spec, by + dy, bx + dx)  # fmt: skip
                others.append(c_n[k_n])
    dist = np.hypot(*(candidates[:, :, None, :] - np.concatenate(others)[None, None]).T).T
    own_col = np.cumsum(keep) - 1  # this block's kept cells come first in ``others``
    rows = np.flatnonzero(keep)
    dist[rows, :, own_col[rows]] = np.inf
    # Nearest-centre territory with a margin (0.3 nucleus radii): the mask a cell gets
    # is grown from its elliptic nucleus, whose edge is not equidistant from its
    # neighbours' centres.
    allowed = rad < dist.min(axis=2) - 0.3 * r_um
    take = allowed & (np.cumsum(allowed, axis=1) <= counts[:, None])
    owner = np.nonzero(take)[0]
    spot_pos = candidates[take]
    spot_amp = amp[take]
    ids = (((by + 100_000) * 1_000_003 + (bx + 100_000)) * (BLOCK_CELLS**2) + np.arange(n)).astype(
        np.int64
    )
    keep_spot = keep[owner]
    new_index = np.cumsum(keep) - 1
    return Cells(
        ids[keep], centre[keep], np.column_stack([ry, rx])[keep], angle[keep],
        brightness[keep], cyto[keep], barcode[keep], wave[keep],
        new_index[owner[keep_spot]], spot_pos[keep_spot], spot_amp[keep_spot],
    )  # fmt: skip


def cells_near(spec, plate: int, well: int, lo: np.ndarray, hi: np.ndarray, n_barcodes: int):
    """Every cell of the blocks meeting the well-frame box ``[lo, hi]`` (um, y x)."""
    size = spacing_um(spec) * BLOCK_CELLS
    b0 = np.floor(lo / size).astype(int)
    b1 = np.floor(hi / size).astype(int)
    parts = [
        block_cells(spec, plate, well, by, bx, n_barcodes)
        for by in range(b0[0], b1[0] + 1)
        for bx in range(b0[1], b1[1] + 1)
    ]
    offsets = np.cumsum([0] + [len(p.ids) for p in parts])
    fields = {}
    for name in Cells.__dataclass_fields__:
        arrays = [getattr(p, name) for p in parts]
        if name == "spot_owner":
            arrays = [a + off for a, off in zip(arrays, offsets[:-1], strict=True)]
        fields[name] = np.concatenate(arrays)
    return Cells(**fields)


def plant_phenotypes(
    spec, cells: Cells, barcodes: list[tuple[str, str]], phenotypes: list[tuple[str, str, float]]
) -> Cells:
    """``cells`` with the spec's planted phenotypes applied (a changed copy).

    The well-frame counterpart of :func:`starrynight.sample.plant_phenotypes`, applied to
    the cells before any field is rendered, so every CP field and SBS cycle that sees a
    cell sees the same changed cell: ``nucleus_grow`` widens the nucleus by ``amount``
    CP pixels (its cell, the nucleus expanded, grows with it), ``nucleus_dim`` and
    ``cytoplasm_dim`` scale its stain brightness. Draws no random numbers.
    """
    genes = np.array([g for _, g in barcodes], dtype=object)[cells.barcode]
    radii, brightness, cyto = cells.radii.copy(), cells.brightness.copy(), cells.cyto.copy()
    for gene, effect, amount in phenotypes:
        hit = genes == gene
        if effect == "nucleus_dim":
            brightness[hit] *= amount
        elif effect == "cytoplasm_dim":
            cyto[hit] *= amount
        else:
            radii[hit] += amount * spec.cp_pixel_um
    return dataclasses.replace(cells, radii=radii, brightness=brightness, cyto=cyto)


@dataclass
class Render:
    """A field rendered on a window ``margin`` pixels wider than the image on each side."""

    nuclei_signal: np.ndarray  # float32, soft-edged nuclei with texture
    labels: np.ndarray  # int32 nuclei labels (1..n local), 0 background
    cells: np.ndarray  # int32 cell labels
    index: np.ndarray  # local label -> index into the Cells arrays (entry 0 unused)
    spot_rc: np.ndarray  # (m, 2) fractional pixel positions of the spots in the window
    spot_cell: np.ndarray  # index into the Cells arrays
    spot_amp: np.ndarray


def render_field(
    spec, frame: Frame, cells: Cells, size: int, margin: int, r_px: float, with_cells: bool = True
) -> Render:
    """Nuclei, labels and spots of one field of ``size`` pixels (window ``size + 2 margin``).

    Nuclei are ellipses with a soft (half-pixel) edge evaluated at pixel centres, with a
    texture fixed in the well frame, so overlapping fields see the same content.
    """
    n = size + 2 * margin
    signal = np.zeros((n, n), np.float32)
    labels = np.zeros((n, n), np.int32)
    centres = frame.to_pixels(cells.centre) + margin
    reach = 1.3 * cells.radii.max(axis=1) / frame.pixel + 2
    inside = np.all((centres > -reach[:, None]) & (centres < n + reach[:, None]), axis=1)
    index = [0]
    # Pixel -> well frame is affine: world = origin + jac @ (row, col) of the window.
    origin = frame.to_world(np.array([[-margin, -margin]], float))[0]
    jac = np.stack(
        [frame.to_world(np.array([[1.0 - margin, -margin]]))[0] - origin,
         frame.to_world(np.array([[-margin, 1.0 - margin]]))[0] - origin], axis=1
    )  # fmt: skip
    for c in np.flatnonzero(inside):
        cy, cx = centres[c]
        rr = math.ceil(reach[c])
        y0, y1 = max(0, int(cy) - rr), min(n, int(cy) + rr + 2)
        x0, x1 = max(0, int(cx) - rr), min(n, int(cx) + rr + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float64)[:, None]
        xx = np.arange(x0, x1, dtype=np.float64)[None, :]
        dy, dx = yy - cy, xx - cx
        phi = cells.angle[c] - frame.rotation
        u = dy * math.cos(phi) + dx * math.sin(phi)
        v = -dy * math.sin(phi) + dx * math.cos(phi)
        ry, rx = cells.radii[c] / frame.pixel
        d = np.sqrt((u / ry) ** 2 + (v / rx) ** 2)
        edge = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * min(ry, rx) / 0.5, -50, 50)))
        k = cells.wave[c, :2]
        # The texture's phase k . (world - centre) is linear in the pixel indices.
        ph = float(k @ (origin - cells.centre[c])) + cells.wave[c, 2]
        k_row, k_col = k @ jac
        texture = 1 + 0.15 * np.cos(k_row * yy + k_col * xx + ph)
        signal[y0:y1, x0:x1] += (cells.brightness[c] * edge * texture).astype(np.float32)
        mask = (d < 1.0) & (labels[y0:y1, x0:x1] == 0)
        if mask.any():
            labels[y0:y1, x0:x1][mask] = len(index)
            index.append(c)
    cell_labels = expand_labels(labels, distance=round(1.6 * r_px)) if with_cells else labels
    spot_rc = frame.to_pixels(cells.spot_pos) + margin
    ok = np.all((spot_rc >= 0) & (spot_rc < n - 1), axis=1)
    return Render(
        signal, labels, cell_labels, np.array(index, np.int64), spot_rc[ok],
        cells.spot_owner[ok], cells.spot_amp[ok],
    )  # fmt: skip


def splat(shape: tuple[int, int], rc: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bilinear deposit of point weights at fractional pixel positions."""
    out = np.zeros(shape, np.float32)
    if not len(rc):
        return out
    r0 = np.floor(rc[:, 0]).astype(int)
    c0 = np.floor(rc[:, 1]).astype(int)
    fr, fc = rc[:, 0] - r0, rc[:, 1] - c0
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)),
                      (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):  # fmt: skip
        np.add.at(out, (r0 + dr, c0 + dc), (weights * w).astype(np.float32))
    return out


def grid_corners(rows: int, cols: int, field_um: float, overlap_pct: float) -> np.ndarray:
    """Nominal top-left corners (um, y x), row by row left to right, centred on 0."""
    step = field_um * (1 - overlap_pct / 100)
    extent = np.array([(rows - 1) * step + field_um, (cols - 1) * step + field_um])
    pts = np.array([(r * step, c * step) for r in range(rows) for c in range(cols)], float)
    return pts - extent / 2


@dataclass(frozen=True)
class WellPlan:
    """The acquisition plan of one well: frames per arm and cycle, recorded corners."""

    plate_index: int
    well_index: int
    cp_frames: tuple[Frame, ...]
    cp_recorded: np.ndarray
    sbs_frames: tuple[tuple[Frame, ...], ...]  # per cycle, per site
    sbs_recorded: np.ndarray
    rotation: float
    translation: tuple[float, float]
    remounts: tuple[tuple[float, float], ...]


def well_plan(spec, plate_index: int, well_index: int) -> WellPlan:
    """Where every field of a well was taken (deterministic in the spec)."""
    rng = np.random.default_rng([spec.seed, 61, plate_index, well_index])
    cp_px = spec.cp_pixel_um
    sbs_px = cp_px * spec.pixel_ratio
    cp_nominal = grid_corners(*spec.cp_grid, spec.size * cp_px, spec.overlap_pct)
    sbs_nominal = grid_corners(*spec.sbs_grid, spec.size * sbs_px, spec.overlap_pct)
    err = spec.stage_error_um
    cp_true = cp_nominal + rng.normal(0, err, cp_nominal.shape)
    cp_frames = tuple(Frame((float(p[0]), float(p[1])), cp_px) for p in cp_true)
    plate_rng = np.random.default_rng([spec.seed, 67, plate_index])
    rotation = math.radians(plate_rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    translation = tuple(float(t) for t in rng.uniform(-MAX_SBS_SHIFT_UM, MAX_SBS_SHIFT_UM, 2))
    remounts = [(0.0, 0.0)]
    for _ in range(1, spec.cycles):
        remounts.append(
            tuple(float(t) for t in plate_rng.uniform(-MAX_REMOUNT_UM, MAX_REMOUNT_UM, 2))
        )
    sbs_frames = []
    for k in range(spec.cycles):
        true = sbs_nominal + rng.normal(0, err, sbs_nominal.shape)
        sbs_frames.append(
            tuple(
                Frame((float(p[0]), float(p[1])), sbs_px, rotation, translation, remounts[k])
                for p in true
            )
        )
    return WellPlan(
        plate_index, well_index, cp_frames, cp_nominal, tuple(sbs_frames), sbs_nominal,
        rotation, translation, tuple(remounts),
    )  # fmt: skip


@dataclass(frozen=True)
class FieldJob:
    """One site of one well: its CP field or its SBS fields (all cycles)."""

    arm: str
    plate_index: int
    well_index: int
    site: int
    paths: tuple[str, ...]  # CP: one file; SBS: one per cycle
    truth: str


def field_jobs(spec, images: Path, truth: Path, cp_folder, sbs_folders) -> Iterator[FieldJob]:
    """Every CP and SBS site of every plate and well, in a fixed order."""
    n_cp = spec.cp_grid[0] * spec.cp_grid[1]
    n_sbs = spec.sbs_grid[0] * spec.sbs_grid[1]
    for p, plate in enumerate(spec.plates):
        for w, well in enumerate(spec.wells):
            for site in range(n_cp):
                seq = w * n_cp + site
                name = f"Well{well}_Point{well}_{site:04d}_Channel{','.join(spec.cp_channels)}"
                path = cp_folder(p, plate) / f"{name}_Seq{seq:04d}.ome.tiff"
                yield FieldJob("cp", p, w, site, (str(path),), str(truth))
            if not spec.cycles:
                continue
            for site in range(n_sbs):
                seq = w * n_sbs + site
                name = f"Well{well}_Point{well}_{site:04d}_Channel{','.join(spec.sbs_channels)}"
                paths = tuple(
                    str(folder / f"{name}_Seq{seq:04d}.ome.tiff")
                    for folder in sbs_folders(p, plate)
                )
                yield FieldJob("sbs", p, w, site, paths, str(truth))


def _expose(signal: np.ndarray, illum: np.ndarray, margin: int, spec, photons, rng) -> np.ndarray:
    """Blur by the PSF, crop the margin, illuminate, add shot and read noise, digitise."""
    blurred = ndimage.gaussian_filter(signal, PSF_SIGMA, mode="nearest", truncate=4.0)
    n = spec.size
    expected = blurred[margin : margin + n, margin : margin + n] * illum * photons
    counts = expected + spec.camera_offset
    if spec.noise > 0:
        sd = np.sqrt(np.clip(expected, 0, None) + (3.0 * spec.noise) ** 2)
        counts += sd * rng.standard_normal(size=counts.shape, dtype=np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def generate_field(
    job: FieldJob,
    spec,
    barcodes: list[tuple[str, str]],
    phenotypes: list[tuple[str, str, float]] | None = None,
) -> dict:
    """Render and write one site (CP: one file; SBS: every cycle) and its ground truth.

    ``phenotypes`` are the spec's, parsed (``starrynight.sample.parse_phenotypes``).
    """

    plan = well_plan(spec, job.plate_index, job.well_index)
    plate, well = spec.plates[job.plate_index], spec.wells[job.well_index]
    arm_index = 0 if job.arm == "cp" else 1
    rng = np.random.default_rng(
        [spec.seed, 71, job.plate_index, job.well_index, arm_index, job.site]
    )
    photons = 3000.0 / spec.noise if spec.noise > 0 else 3000.0
    n = spec.size
    margin = math.ceil(4 * PSF_SIGMA) + 2
    frames = (
        [plan.cp_frames[job.site]] if job.arm == "cp" else [c[job.site] for c in plan.sbs_frames]
    )
    recorded = (plan.cp_recorded if job.arm == "cp" else plan.sbs_recorded)[job.site]
    centre_offset = stage_centre(job.well_index)
    r_px = spec.nucleus_radius * spec.cp_pixel_um / frames[0].pixel
    lo, hi = _world_box(frames, n, margin)
    cells = cells_near(spec, job.plate_index, job.well_index, lo, hi, len(barcodes))
    if phenotypes:
        cells = plant_phenotypes(spec, cells, barcodes, phenotypes)
    field_um = n * frames[0].pixel
    out: dict = {"positions": [], "cells": [], "sbs_cells": [], "shifts": [], "n_files": 0}
    first_rc = None
    channels = spec.cp_channels if job.arm == "cp" else spec.sbs_channels
    # Cell masks (expanded nuclei) feed the cytoplasm and spot channels and the truth
    # masks; a nuclei-only acquisition does without them.
    with_cells = not all(NUCLEAR_NAMES.search(c) for c in channels)
    for k, (frame, path) in enumerate(zip(frames, job.paths, strict=True), start=1):
        rendered = render_field(spec, frame, cells, n, margin, r_px, with_cells)
        labels_local = rendered.index
        scene = _Scene(
            rendered.labels, rendered.cells,
            np.concatenate([[0.0], cells.brightness[labels_local[1:]]]),
            np.concatenate([[0.0], cells.cyto[labels_local[1:]]]),
            np.concatenate([[-1], cells.barcode[labels_local[1:]]]),
            (np.zeros(0, int),) * 4,
        )  # fmt: skip
        planes = []
        for i, ch in enumerate(channels):
            illum = illumination_field(spec, job.arm, i)
            if NUCLEAR_NAMES.search(ch):
                signal = 0.02 + rendered.nuclei_signal
            elif job.arm == "cp":
                signal = _cp_signal(scene, ch, i, rng)
            else:
                signal = _sbs_bases(spec, ch, rendered, cells, barcodes, k)
            planes.append(
                _expose(np.asarray(signal, np.float32), illum, margin, spec, photons, rng)
            )
        position = (
            float(centre_offset[0] + recorded[0] + field_um / 2),
            float(centre_offset[1] + recorded[1] + field_um / 2),
        )
        write_ome(path, np.stack(planes), channels, _file_uuid(spec, path), frame.pixel, position)
        out["n_files"] += 1
        out["positions"].append(
            {"plate": plate, "well": well, "arm": job.arm, "cycle": 0 if job.arm == "cp" else k,
             "site": job.site,
             "true_y_um": float(centre_offset[0] + frame.corner[0]),
             "true_x_um": float(centre_offset[1] + frame.corner[1]),
             "recorded_y_um": float(centre_offset[0] + recorded[0]),
             "recorded_x_um": float(centre_offset[1] + recorded[1]),
             "pixel_size_um": frame.pixel, "size_px": n}
        )  # fmt: skip
        if job.arm == "sbs":
            # Content displacement of cycle k relative to cycle 1 at one world point.
            probe = plan.sbs_frames[0][job.site].to_world(np.array([[n / 2, n / 2]]))
            rc = frame.to_pixels(probe)[0]
            first_rc = rc if k == 1 else first_rc
            d = rc - first_rc
            out["shifts"].append(
                {"plate": plate, "well": well, "site": job.site, "cycle": k,
                 "dy": float(d[0]), "dx": float(d[1])}
            )  # fmt: skip
        if k == 1:
            key = "cells" if job.arm == "cp" else "sbs_cells"
            out[key] = _truth_cells(spec, job, rendered, cells, barcodes, margin, frame)
    return out


def _world_box(frames, n: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    pts = []
    for f in frames:
        corners = np.array([[-margin, -margin], [-margin, n + margin], [n + margin, -margin],
                            [n + margin, n + margin]], float)  # fmt: skip
        pts.append(f.to_world(corners))
    allp = np.concatenate(pts)
    pad = 30.0
    return allp.min(axis=0) - pad, allp.max(axis=0) + pad


def _sbs_bases(spec, channel: str, rendered: Render, cells: Cells, barcodes, cycle: int):

    background = 0.03 + 0.05 * (rendered.cells > 0)
    if channel not in BASES:
        return background.astype(np.float32)
    base_index = np.array([BASES.index(sg[cycle - 1]) for sg, _ in barcodes])
    leak = np.array([1.0 if b == channel else CROSSTALK.get((b, channel), 0.0) for b in BASES])
    weight = leak[base_index[cells.barcode[rendered.spot_cell]]]
    peak = 2 * np.pi * PSF_SIGMA**2 * 1.6 * 0.97 ** (cycle - 1)
    impulses = splat(rendered.labels.shape, rendered.spot_rc, peak * rendered.spot_amp * weight)
    return (background + impulses).astype(np.float32)


def _truth_cells(spec, job: FieldJob, rendered: Render, cells: Cells, barcodes, margin, frame):
    n = spec.size
    nuclei = rendered.labels[margin : margin + n, margin : margin + n]
    cell_mask = rendered.cells[margin : margin + n, margin : margin + n]
    plate, well = spec.plates[job.plate_index], spec.wells[job.well_index]
    prefix = "" if job.arm == "cp" else "SBS_"
    mask_dir = Path(job.truth) / "masks" / plate / well
    dtype = np.uint16 if rendered.labels.max() < 65535 else np.uint32
    write_tiff(str(mask_dir / f"{prefix}Site_{job.site}_nuclei.tiff"), nuclei.astype(dtype))
    if rendered.cells is not rendered.labels:
        write_tiff(str(mask_dir / f"{prefix}Site_{job.site}_cells.tiff"), cell_mask.astype(dtype))
    labels = np.unique(nuclei)
    labels = labels[labels > 0]
    rows = []
    if not labels.size:
        return rows
    centroids = ndimage.center_of_mass(np.ones_like(nuclei), nuclei, labels)
    for lab, (cy, cx) in zip(labels, centroids, strict=True):
        c = rendered.index[lab]
        sgrna, gene = barcodes[cells.barcode[c]]
        rows.append(
            {"plate": plate, "well": well, "site": job.site, "cell_id": int(lab),
             "y": float(cy), "x": float(cx), "well_cell_id": int(cells.ids[c]),
             "well_y_um": float(cells.centre[c, 0]), "well_x_um": float(cells.centre[c, 1]),
             "sgRNA": sgrna, "barcode": sgrna[: spec.cycles] if spec.cycles else "",
             "gene_symbol": gene}
        )  # fmt: skip
    return rows


def frames_table(spec) -> list[dict]:
    """Per well and SBS cycle: the similarity taking that cycle's stage frame to CP's.

    ``cp = R(rotation) (sbs + remount) + translation`` in the well frame (um, y x,
    centred on the well's stage centre); ``scale`` is the SBS/CP pixel ratio.
    """
    rows = []
    for p, plate in enumerate(spec.plates):
        for w, well in enumerate(spec.wells):
            plan = well_plan(spec, p, w)
            for k in range(1, spec.cycles + 1):
                rows.append(
                    {"plate": plate, "well": well, "cycle": k,
                     "rotation_deg": math.degrees(plan.rotation), "scale": spec.pixel_ratio,
                     "translation_y_um": plan.translation[0],
                     "translation_x_um": plan.translation[1],
                     "remount_y_um": plan.remounts[k - 1][0],
                     "remount_x_um": plan.remounts[k - 1][1]}
                )  # fmt: skip
    return rows
