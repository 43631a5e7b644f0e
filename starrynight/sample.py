"""A synthetic optical pooled screen with a known answer.

``generate`` writes a small OPS dataset in the Cell Painting Gallery layout — a Cell
Painting arm and one acquisition per SBS cycle — together with the ground truth that
made it: illumination fields, per-cycle shifts, nuclei and cell masks, and which
barcode (and so which gene) every cell carries. Tests, benchmarks and the demo score
the pipeline against that ground truth.

The image model follows a widefield microscope: a scene of cells is blurred by the
point-spread function, multiplied by a smooth vignetting field, photon (Poisson) noise
and Gaussian read noise are added on top of a camera offset, and the result is clipped
to uint16. Every SBS cycle shows the same cells, displaced by a known sub-pixel shift.

Each site is generated from its own random stream (seeded by the spec's seed and the
site's position), so the output is identical for a seed regardless of the number of
worker processes, and memory does not grow with the number of sites.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import ndimage
from skimage.draw import ellipse
from skimage.segmentation import expand_labels

from starrynight import storage
from starrynight.errors import UserError
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
    write_ome,
)

# Dyes of A/C and of G/T overlap spectrally in the usual four-colour SBS chemistry.
GENES = (
    "NTC", "TP53", "MYC", "KRAS", "EGFR", "PTEN", "RB1", "BRCA1", "ATM", "CDK4",
    "MTOR", "AKT1", "PIK3CA", "NF1", "SMAD4", "APC", "CTNNB1", "VHL", "STK11", "KEAP1",
)  # fmt: skip
#: Gene symbol of the non-targeting control guides in Barcodes.csv (``GENES[0]``).
CONTROL_GENE = "NTC"
#: Phenotypes :func:`plant_phenotypes` knows: effect -> what AMOUNT means.
PHENOTYPE_EFFECTS = {
    "nucleus_grow": "pixels the nucleus grows by, inside its own cell",
    "nucleus_dim": "factor on the nuclear stain (e.g. 0.6)",
    "cytoplasm_dim": "factor on the non-nuclear stains (e.g. 0.6)",
}
CP_START = datetime(2024, 1, 15, 9, 30, 0)
MAX_SHIFT = 30.0
MAX_CP_SBS_OFFSET = 12.0


@dataclass(frozen=True)
class SampleSpec:
    """What to generate.

    Attributes
    ----------
    dataset, source, batch : str
        Names of the first three levels of the Gallery layout.
    plates, wells : tuple of str
        Plate names and well names (``A1``, ``B03``, ``1``...).
    sites : int
        Sites (fields of view) per well.
    cycles : int
        SBS cycles; 0 generates a Cell Painting-only dataset.
    size : int
        Image height and width in pixels.
    cp_channels, sbs_channels : tuple of str
        Channel names in frame order. SBS channels must include A, C, G and T.
    noise : float
        Noise level: 1 is the default; 2 halves the photon budget and doubles the read
        noise.
    seed : int
        Random seed; the output is fully determined by the spec.
    camera_offset : int
        Dark level (counts) that the camera adds everywhere, not illuminated.
    n_barcodes : int
        Number of distinct sgRNAs in Barcodes.csv.
    nucleus_radius : float
        Mean nucleus radius in pixels.
    phenotypes : tuple of str
        Known phenotypes planted in the cells of some genes, each ``GENE:EFFECT:AMOUNT``
        (see :data:`PHENOTYPE_EFFECTS`), e.g. ``TP53:nucleus_grow:3``. Empty (the
        default) leaves the output byte-identical to a sample without phenotypes.
    workers : int
        Processes generating sites in parallel (does not change the output).
    geometry : {"shared", "real"}
        ``shared``: CP and every SBS cycle image the same ``sites`` fields at one scale
        (separate scenes, on a grid without overlap). ``real``: CP and SBS are taken at
        two magnifications on their own overlapping grids of one continuous well, with
        a rotated, shifted SBS pass and stage errors (:mod:`starrynight.sample_geometry`).
    cp_grid, sbs_grid : tuple of int
        Rows and columns of sites per arm (``real`` geometry; ``sites`` is ignored).
    overlap_pct : float
        Overlap of neighbouring fields in percent (``real`` geometry).
    cp_pixel_um : float
        CP pixel size in micrometres (both arms in ``shared`` geometry).
    pixel_ratio : float
        SBS pixel size over CP pixel size (``real`` geometry).
    stage_error_um : float
        Standard deviation per axis of where the stage puts a field relative to the
        position it records (``real`` geometry).
    """

    dataset: str = "sample"
    source: str = "source_1"
    batch: str = "Batch1"
    plates: tuple[str, ...] = ("Plate1",)
    wells: tuple[str, ...] = ("A1", "A2")
    sites: int = 4
    cycles: int = 4
    size: int = 512
    cp_channels: tuple[str, ...] = ("PhalloAF750", "ZO1-AF488", "DAPI")
    sbs_channels: tuple[str, ...] = ("C", "A", "T", "G", "DAPI")
    noise: float = 1.0
    seed: int = 0
    camera_offset: int = 100
    n_barcodes: int = 24
    nucleus_radius: float = 9.0
    phenotypes: tuple[str, ...] = ()
    workers: int = 2
    geometry: str = "shared"
    cp_grid: tuple[int, int] = (4, 4)
    sbs_grid: tuple[int, int] = (2, 2)
    overlap_pct: float = 10.0
    cp_pixel_um: float = 0.65
    pixel_ratio: float = 1.99
    stage_error_um: float = 1.0

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first option that cannot work."""
        checks = [
            (self.sites >= 1, f"sites must be at least 1, got {self.sites}"),
            (0 <= self.cycles <= 20, f"cycles must be 0..20, got {self.cycles}"),
            (64 <= self.size <= 8192, f"size must be 64..8192 pixels, got {self.size}"),
            (len(self.plates) >= 1, "plates: give at least one plate name"),
            (len(self.wells) >= 1, "wells: give at least one well name"),
            (self.noise >= 0, f"noise must be >= 0, got {self.noise}"),
            (0 <= self.camera_offset < 60000, "camera_offset must be 0..60000"),
            (self.n_barcodes >= 1, f"n_barcodes must be >= 1, got {self.n_barcodes}"),
            (
                2.0 <= self.nucleus_radius <= self.size / 8,
                f"nucleus_radius {self.nucleus_radius} must be 2..size/8 "
                f"({self.size / 8:g} for size {self.size})",
            ),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (
                self.geometry in ("shared", "real"),
                f"geometry must be shared or real, got {self.geometry!r}",
            ),
            (
                len(self.cp_grid) == 2 and min(self.cp_grid) >= 1,
                f"cp_grid must be two counts >= 1 (rows, columns), got {self.cp_grid}",
            ),
            (
                len(self.sbs_grid) == 2 and min(self.sbs_grid) >= 1,
                f"sbs_grid must be two counts >= 1 (rows, columns), got {self.sbs_grid}",
            ),
            (
                3 <= self.overlap_pct <= 50,
                f"overlap_pct must be 3..50, got {self.overlap_pct}",
            ),
            (self.cp_pixel_um > 0, f"cp_pixel_um must be > 0, got {self.cp_pixel_um}"),
            (1 <= self.pixel_ratio <= 8, f"pixel_ratio must be 1..8, got {self.pixel_ratio}"),
            (
                0 <= self.stage_error_um <= 20,
                f"stage_error_um must be 0..20, got {self.stage_error_um}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        parse_phenotypes(self.phenotypes)
        _check_names("plate", self.plates, r"[A-Za-z0-9][A-Za-z0-9_.-]*")
        _check_names("well", self.wells, r"[A-Za-z]{0,2}[0-9]{1,3}")
        for name, value in (("dataset", self.dataset), ("source", self.source)):
            _check_names(name, (value,), r"[A-Za-z0-9][A-Za-z0-9_.-]*")
        _check_names("batch", (self.batch,), r"[A-Za-z0-9][A-Za-z0-9_.-]*")
        for arm, channels in (("cp", self.cp_channels), ("sbs", self.sbs_channels)):
            if not 1 <= len(channels) <= 8:
                raise UserError(f"{arm} channels: expected 1 to 8 names, got {len(channels)}")
            if len(set(channels)) != len(channels):
                raise UserError(f"{arm} channels: names must be distinct, got {list(channels)}")
            for ch in channels:
                if not ch or "," in ch or "_" in ch or "/" in ch:
                    raise UserError(
                        f"{arm} channel {ch!r}: names may not be empty or contain ',', '_' or '/'"
                    )
        if self.cycles:
            missing = [b for b in BASES if b not in self.sbs_channels]
            if missing:
                raise UserError(
                    f"sbs channels {list(self.sbs_channels)}: missing base channel(s) "
                    f"{missing}; expected A, C, G and T plus a nuclear stain"
                )
            if not any(NUCLEAR_NAMES.search(c) for c in self.sbs_channels):
                raise UserError(
                    f"sbs channels {list(self.sbs_channels)}: expected a nuclear stain "
                    "(a name containing DAPI, Hoechst or DNA) for cycle alignment"
                )
            if 4**self.cycles < self.n_barcodes:
                raise UserError(
                    f"n_barcodes {self.n_barcodes} cannot be told apart with "
                    f"{self.cycles} cycles (at most {4**self.cycles})"
                )


@dataclass(frozen=True)
class SampleResult:
    """Where the sample went and what it holds."""

    out: str
    dataset_root: str
    ground_truth: str
    n_files: int
    n_cells: int
    seconds: float
    plates: tuple[str, ...] = field(default_factory=tuple)


def _check_names(what: str, names: Sequence[str], pattern: str) -> None:
    for name in names:
        if not re.fullmatch(pattern, name):
            raise UserError(f"{what} {name!r}: expected a name matching {pattern}")


def generate(spec: SampleSpec, out: str | Path, overwrite: bool = False) -> SampleResult:
    """Write the sample dataset and its ground truth under ``out``.

    Parameters
    ----------
    spec : SampleSpec
        What to generate.
    out : str or Path
        Output folder (local). ``out/<dataset>`` is the dataset root; ground truth goes
        to ``out/ground_truth``.
    overwrite : bool
        Replace an existing non-empty ``out``; otherwise that is an error.

    Returns
    -------
    SampleResult
    """
    spec.validate()
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: folder is not empty (use --overwrite to replace it)")
        storage.remove_tree(str(out))
    start = time.perf_counter()
    dataset_root = out / spec.dataset
    truth = out / "ground_truth"
    barcodes = make_barcodes(spec)
    _write_barcodes_csv(dataset_root / spec.source / "workspace" / "metadata", barcodes)
    fields = {
        "cp": {ch: illumination_field(spec, "cp", i) for i, ch in enumerate(spec.cp_channels)},
        "sbs": {ch: illumination_field(spec, "sbs", i) for i, ch in enumerate(spec.sbs_channels)},
    }
    for arm, per_channel in fields.items():
        if arm == "sbs" and not spec.cycles:
            continue
        for ch, f in per_channel.items():
            target = str(truth / "illum" / f"{arm}_{ch}.npy")
            with storage.atomic_local_path(target, suffix=".npy") as tmp:
                np.save(tmp, f)

    if spec.geometry == "real":
        n_files, n_cells = _generate_real(spec, dataset_root, truth, barcodes)
        _write_manifest(spec, truth, dataset_root)
        return SampleResult(
            out=str(out),
            dataset_root=str(dataset_root),
            ground_truth=str(truth),
            n_files=n_files,
            n_cells=n_cells,
            seconds=time.perf_counter() - start,
            plates=spec.plates,
        )
    shifts, offsets, cells, n_files = [], [], [], 0
    jobs = list(_site_jobs(spec, dataset_root, truth))
    workers = min(spec.workers, len(jobs))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_generate_site, jobs, [barcodes] * len(jobs), chunksize=1)
            for res in results:
                _collect(res, shifts, offsets, cells)
                n_files += res["n_files"]
    else:
        for job in jobs:
            res = _generate_site(job, barcodes)
            _collect(res, shifts, offsets, cells)
            n_files += res["n_files"]

    _write_table(truth / "shifts.parquet", shifts)
    _write_table(truth / "cp_sbs_offsets.parquet", offsets)
    _write_table(truth / "cells.parquet", cells)
    _write_manifest(spec, truth, dataset_root)
    return SampleResult(
        out=str(out),
        dataset_root=str(dataset_root),
        ground_truth=str(truth),
        n_files=n_files,
        n_cells=len(cells),
        seconds=time.perf_counter() - start,
        plates=spec.plates,
    )


def _write_manifest(spec: SampleSpec, truth: Path, dataset_root: Path) -> None:
    manifest = {
        "generator": "starrynight.sample",
        "spec": asdict(spec),
        "dataset_root": str(dataset_root),
        "barcodes_csv": str(dataset_root / spec.source / "workspace/metadata/Barcodes.csv"),
        "shift_convention": (
            "dy,dx = displacement of SBS cycle k content relative to cycle 1 "
            "(content at (y,x) in cycle 1 is at (y+dy, x+dx) in cycle k)"
        ),
        "illumination": "raw = camera_offset + Poisson(field * signal) + read noise",
        "crosstalk": {f"{a}->{b}": v for (a, b), v in CROSSTALK.items()},
        "control_label": CONTROL_GENE,
        "phenotypes": [
            {"gene": g, "effect": e, "amount": a} for g, e, a in parse_phenotypes(spec.phenotypes)
        ],
    }
    if spec.geometry == "real":
        manifest["geometry"] = (
            "real: positions are top-left field corners in each acquisition's stage frame "
            "(um, y down, x right); OME PositionX/Y record the commanded field centre"
        )
    storage.write_bytes(
        str(truth / "manifest.json"), json.dumps(manifest, indent=2, default=list).encode()
    )


def _plate_folders(spec: SampleSpec, dataset_root: Path):
    images = dataset_root / spec.source / spec.batch / "images"

    def cp_folder(p: int, plate: str) -> Path:
        stamp = (CP_START + timedelta(days=p, minutes=17 * p)).strftime("%Y%m%d_%H%M%S")
        return images / plate / f"20X_CP_{plate}_{stamp}"

    def sbs_folders(p: int, plate: str) -> list[Path]:
        return [images / plate / f"10X_c{k}_SBS-{k}" for k in range(1, spec.cycles + 1)]

    return cp_folder, sbs_folders


def _generate_real(
    spec: SampleSpec, dataset_root: Path, truth: Path, barcodes: list[tuple[str, str]]
) -> tuple[int, int]:
    """The real-geometry sample (see :mod:`starrynight.sample_geometry`)."""
    from starrynight import sample_geometry as sg

    cp_folder, sbs_folders = _plate_folders(spec, dataset_root)
    jobs = list(sg.field_jobs(spec, dataset_root, truth, cp_folder, sbs_folders))
    merged: dict[str, list] = {"positions": [], "cells": [], "sbs_cells": [], "shifts": []}
    n_files = 0
    workers = min(spec.workers, len(jobs))
    run = functools.partial(
        sg.generate_field, spec=spec, barcodes=barcodes,
        phenotypes=parse_phenotypes(spec.phenotypes),
    )  # fmt: skip
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(run, jobs, chunksize=1)
            for res in results:
                n_files += res.pop("n_files")
                for key, rows in res.items():
                    merged[key].extend(rows)
    else:
        for job in jobs:
            res = run(job)
            n_files += res.pop("n_files")
            for key, rows in res.items():
                merged[key].extend(rows)
    for key, rows in merged.items():
        name = "site_positions" if key == "positions" else key
        _write_table(truth / f"{name}.parquet", rows)
    _write_table(truth / "sbs_frames.parquet", sg.frames_table(spec))
    return n_files, len(merged["cells"])


def make_barcodes(spec: SampleSpec) -> list[tuple[str, str]]:
    """Draw ``n_barcodes`` 20-nt sgRNAs whose ``cycles``-long prefixes differ.

    Prefixes are kept at Hamming distance >= 2 from each other where the code space
    allows it, so a single mis-read base is detectable.

    Returns
    -------
    list of (sgRNA, gene_symbol)
    """
    rng = np.random.default_rng([spec.seed, 7919])
    # Without SBS cycles nothing is read, so only the whole sgRNAs must differ.
    k = spec.cycles if spec.cycles else 20
    min_distance = 2 if 4 ** (k - 1) >= spec.n_barcodes else 1
    prefixes: list[str] = []
    attempts = 0
    while len(prefixes) < spec.n_barcodes:
        attempts += 1
        if attempts > 200_000:  # dense code spaces: settle for distinct prefixes
            min_distance = 1
        candidate = "".join(rng.choice(list(BASES), size=min(k, 20)))
        if all(_hamming(candidate, p) >= min_distance for p in prefixes):
            prefixes.append(candidate)
    rows = []
    for i, prefix in enumerate(prefixes):
        tail = "".join(rng.choice(list(BASES), size=max(0, 20 - len(prefix))))
        rows.append((prefix + tail, GENES[i % len(GENES)]))
    return rows


def _hamming(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def _write_barcodes_csv(folder: Path, barcodes: list[tuple[str, str]]) -> None:
    text = "sgRNA,gene_symbol\n" + "".join(f"{s},{g}\n" for s, g in barcodes)
    storage.write_bytes(str(folder / "Barcodes.csv"), text.encode())


@dataclass(frozen=True)
class _SiteJob:
    spec: SampleSpec
    plate_index: int
    well_index: int
    site: int
    cp_path: str
    sbs_paths: tuple[str, ...]
    truth: str


def _site_jobs(spec: SampleSpec, dataset_root: Path, truth: Path) -> Iterator[_SiteJob]:
    images = dataset_root / spec.source / spec.batch / "images"
    for p, plate in enumerate(spec.plates):
        stamp = (CP_START + timedelta(days=p, minutes=17 * p)).strftime("%Y%m%d_%H%M%S")
        cp_folder = images / plate / f"20X_CP_{plate}_{stamp}"
        sbs_folders = [images / plate / f"10X_c{k}_SBS-{k}" for k in range(1, spec.cycles + 1)]
        for w, well in enumerate(spec.wells):
            for site in range(spec.sites):
                seq = w * spec.sites + site
                stem = f"Well{well}_Point{well}_{site:04d}"
                cp = cp_folder / f"{stem}_Channel{','.join(spec.cp_channels)}_Seq{seq:04d}.ome.tiff"
                sbs = tuple(
                    str(
                        folder
                        / f"{stem}_Channel{','.join(spec.sbs_channels)}_Seq{seq:04d}.ome.tiff"
                    )
                    for folder in sbs_folders
                )
                yield _SiteJob(spec, p, w, site, str(cp), sbs, str(truth))


def _collect(res: dict, shifts: list, offsets: list, cells: list) -> None:
    shifts.extend(res["shifts"])
    offsets.extend(res["offsets"])
    cells.extend(res["cells"])


def _write_table(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    with storage.atomic_local_path(str(path), suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


# --------------------------------------------------------------------------- scene


def parse_phenotypes(items: Sequence[str]) -> list[tuple[str, str, float]]:
    """Parse ``GENE:EFFECT:AMOUNT`` items into ``(gene, effect, amount)``.

    Raises
    ------
    UserError
        Naming the item that is malformed, has an unknown effect, an amount out of
        range, targets the control gene or repeats a gene.
    """
    out: list[tuple[str, str, float]] = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 3 or not parts[0]:
            raise UserError(f"phenotype {item!r}: expected GENE:EFFECT:AMOUNT")
        gene, effect, amount_text = parts
        if effect not in PHENOTYPE_EFFECTS:
            raise UserError(
                f"phenotype {item!r}: unknown effect {effect!r}; expected one of "
                f"{', '.join(PHENOTYPE_EFFECTS)}"
            )
        try:
            amount = float(amount_text)
        except ValueError:
            raise UserError(f"phenotype {item!r}: amount {amount_text!r} is not a number") from None
        ok = 1 <= amount <= 20 if effect == "nucleus_grow" else 0 < amount <= 10
        if not ok:
            raise UserError(
                f"phenotype {item!r}: amount out of range "
                f"({'1..20 pixels' if effect == 'nucleus_grow' else 'a factor in (0, 10]'})"
            )
        if gene == CONTROL_GENE:
            raise UserError(f"phenotype {item!r}: {CONTROL_GENE} is the non-targeting control")
        if gene in {g for g, _, _ in out}:
            raise UserError(f"phenotype {item!r}: gene {gene} is given twice")
        out.append((gene, effect, amount))
    return out


def default_phenotypes(n: int = 5) -> tuple[str, ...]:
    """``n`` planted phenotypes on the first non-control genes of :data:`GENES`.

    Alternates a larger nucleus (3 px) and a dimmer nuclear stain (x0.6): phenotypes
    that do not depend on how well the cell outlines are found (``cytoplasm_dim`` does).
    """
    effects = ("nucleus_grow:3", "nucleus_dim:0.6")
    genes = [g for g in GENES if g != CONTROL_GENE][:n]
    return tuple(f"{g}:{effects[i % len(effects)]}" for i, g in enumerate(genes))


def plant_phenotypes(
    scene: _Scene, barcodes: list[tuple[str, str]], phenotypes: list[tuple[str, str, float]]
) -> None:
    """Change the scene's cells of the planted genes in place (draws no random numbers).

    ``nucleus_grow`` dilates each such nucleus by ``amount`` pixels inside its own cell
    (the cell outline stays: only the nucleus/cytoplasm split moves); the ``*_dim``
    effects scale the cell's stain brightness.
    """
    genes = np.array([g for _, g in barcodes] + [""], dtype=object)
    gene_of = genes[scene.barcode_of]  # barcode_of == -1 (background) -> ""
    for gene, effect, amount in phenotypes:
        hit = gene_of == gene
        hit[0] = False
        if effect == "nucleus_dim":
            scene.brightness[hit] *= amount
        elif effect == "cytoplasm_dim":
            scene.cyto[hit] *= amount
        else:
            grown = expand_labels(scene.nuclei, distance=amount)
            grow = hit[grown] & (grown == scene.cells) & (scene.nuclei == 0)
            scene.nuclei[grow] = grown[grow]


def _make_scene(spec: SampleSpec, rng: np.random.Generator, pad: int, n_barcodes: int) -> _Scene:
    n = spec.size + 2 * pad
    r = spec.nucleus_radius
    spacing = 3.4 * r
    nuclei = np.zeros((n, n), np.int32)
    label = 0
    grid = np.arange(spacing / 2, n - spacing / 2, spacing)
    for gy in grid:
        for gx in grid:
            if rng.random() > 0.8:
                continue
            cy = gy + rng.uniform(-0.3, 0.3) * spacing
            cx = gx + rng.uniform(-0.3, 0.3) * spacing
            ry = r * rng.uniform(0.8, 1.2)
            rx = ry * rng.uniform(0.7, 1.0)
            rr, cc = ellipse(cy, cx, ry, rx, shape=nuclei.shape, rotation=rng.uniform(0, np.pi))
            if rr.size == 0 or nuclei[rr, cc].any():
                continue
            label += 1
            nuclei[rr, cc] = label
    cells = expand_labels(nuclei, distance=round(1.6 * r))
    count = label + 1
    brightness = np.zeros(count)
    brightness[1:] = rng.lognormal(0, 0.25, size=label)
    cyto = np.zeros(count)
    cyto[1:] = rng.lognormal(0, 0.3, size=label)
    barcode_of = np.full(count, -1)
    barcode_of[1:] = rng.integers(0, n_barcodes, size=label)
    # Amplicons sit in the cytoplasm: 3-6 per cell at random cytoplasmic pixels.
    cyto_pixels = np.flatnonzero((cells.ravel() > 0) & (nuclei.ravel() == 0))
    owner = cells.ravel()[cyto_pixels]
    keys = rng.random(cyto_pixels.size)
    order = np.lexsort((keys, owner))
    owner, cyto_pixels = owner[order], cyto_pixels[order]
    first = np.searchsorted(owner, np.arange(count))
    rank = np.arange(owner.size) - first[owner]
    wanted = rng.integers(3, 7, size=count)
    keep = rank < wanted[owner]
    spot_y, spot_x = np.divmod(cyto_pixels[keep], n)
    spots = (spot_y, spot_x, rng.lognormal(0, 0.3, size=spot_y.size), owner[keep])
    return _Scene(nuclei, cells, brightness, cyto, barcode_of, spots)


def _sbs_signal(scene: _Scene, channel: str, base_of_cell: np.ndarray, cycle: int) -> np.ndarray:
    """Scene of one SBS channel: spots lit by each cell's base of this cycle.

    ``base_of_cell`` holds, per label, the index into :data:`BASES` of that cell's base
    in this cycle (-1 for background).
    """
    if NUCLEAR_NAMES.search(channel):
        s = 0.02 + scene.brightness[scene.nuclei] * (scene.nuclei > 0)
        return s.astype(np.float32)
    impulses = np.zeros(scene.nuclei.shape, np.float32)
    if channel in BASES:
        # Each base's dye leaks into its spectral neighbour's channel.
        leak = np.array([1.0 if b == channel else CROSSTALK.get((b, channel), 0.0) for b in BASES])
        ys, xs, amp, owner = scene.spots
        weight = leak[base_of_cell[owner]]
        # 2*pi*sigma^2 makes an impulse's peak after the PSF blur equal to its amplitude.
        peak = 2 * np.pi * PSF_SIGMA**2 * 1.6 * 0.97 ** (cycle - 1)
        np.add.at(impulses, (ys, xs), (peak * amp * weight).astype(np.float32))
    background = 0.03 + 0.05 * (scene.cells > 0)
    return (background + impulses).astype(np.float32)


def _shifted_psf(frac: float, sigma: float = PSF_SIGMA) -> np.ndarray:
    """1-D Gaussian PSF sampled at pixel centres displaced by ``frac`` (in [0, 1)).

    Correlating with it blurs *and* moves the content by ``+frac`` in one pass, which
    is exact for a pixel-sampled scene and a Gaussian PSF (no interpolation error).
    """
    radius = int(np.ceil(4 * sigma)) + 1
    j = np.arange(2 * radius + 1)
    w = np.exp(-(((radius - j) - frac) ** 2) / (2 * sigma**2))
    return w / w.sum()


def _acquire(
    signal: np.ndarray,
    illum: np.ndarray,
    shift: tuple[float, float],
    pad: int,
    spec: SampleSpec,
    photons: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blur and displace by ``shift``, crop, illuminate, add noise, digitise."""
    n = spec.size
    iy, ix = int(np.floor(shift[0])), int(np.floor(shift[1]))
    # Content moves by +shift: the crop window moves by -shift on the canvas.
    margin = int(np.ceil(4 * PSF_SIGMA)) + 2
    y0, x0 = pad - iy - margin, pad - ix - margin
    window = signal[y0 : y0 + n + 2 * margin, x0 : x0 + n + 2 * margin]
    blurred = ndimage.correlate1d(window, _shifted_psf(shift[0] - iy), axis=0, mode="nearest")
    blurred = ndimage.correlate1d(blurred, _shifted_psf(shift[1] - ix), axis=1, mode="nearest")
    expected = blurred[margin : margin + n, margin : margin + n] * illum * photons
    counts = expected + spec.camera_offset
    if spec.noise > 0:
        # Shot noise (Poisson; its normal approximation is exact to <1% at these
        # >= 40-photon levels) and Gaussian read noise, drawn as one normal variate.
        sd = np.sqrt(np.clip(expected, 0, None) + (3.0 * spec.noise) ** 2)
        counts += sd * rng.standard_normal(size=counts.shape, dtype=np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def _shared_grid_position(spec: SampleSpec, well_index: int, site: int) -> tuple[float, float]:
    """Stage position (field centre, um, y x) of a shared-geometry site.

    The sites of the shared geometry are separate scenes, so they are placed on a
    square grid with a 10 % gap between fields (no overlap), the same for every arm.
    """
    from starrynight.sample_render import stage_centre

    cols = int(np.ceil(np.sqrt(spec.sites)))
    rows = int(np.ceil(spec.sites / cols))
    step = spec.size * spec.cp_pixel_um * 1.1
    r, c = divmod(site, cols)
    centre = stage_centre(well_index)
    return (
        float(centre[0] + (r - (rows - 1) / 2) * step),
        float(centre[1] + (c - (cols - 1) / 2) * step),
    )


def _generate_site(job: _SiteJob, barcodes: list[tuple[str, str]]) -> dict:
    spec = job.spec
    rng = np.random.default_rng([spec.seed, job.plate_index, job.well_index, job.site])
    pad = int(np.ceil(MAX_SHIFT + MAX_CP_SBS_OFFSET + 4 * PSF_SIGMA)) + 4
    scene = _make_scene(spec, rng, pad, len(barcodes))
    if spec.phenotypes:
        plant_phenotypes(scene, barcodes, parse_phenotypes(spec.phenotypes))
    photons = 3000.0 / spec.noise if spec.noise > 0 else 3000.0
    plate, well = spec.plates[job.plate_index], spec.wells[job.well_index]
    n = spec.size

    cp_planes = []
    for i, ch in enumerate(spec.cp_channels):
        illum = illumination_field(spec, "cp", i)
        signal = _cp_signal(scene, ch, i, rng)
        cp_planes.append(_acquire(signal, illum, (0.0, 0.0), pad, spec, photons, rng))
    position = _shared_grid_position(spec, job.well_index, job.site)
    write_ome(
        job.cp_path, np.stack(cp_planes), spec.cp_channels, _file_uuid(spec, job.cp_path),
        spec.cp_pixel_um, position,
    )  # fmt: skip

    offset = rng.uniform(-MAX_CP_SBS_OFFSET, MAX_CP_SBS_OFFSET, size=2) if spec.cycles else (0, 0)
    shifts, offsets = [], []
    if spec.cycles:
        offsets.append(
            {"plate": plate, "well": well, "site": job.site, "dy": float(offset[0]),
             "dx": float(offset[1])}
        )  # fmt: skip
    sbs_illum = [illumination_field(spec, "sbs", i) for i in range(len(spec.sbs_channels))]
    for k, path in enumerate(job.sbs_paths, start=1):
        rel = np.zeros(2) if k == 1 else rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
        base_index = np.array([BASES.index(sg[k - 1]) for sg, _ in barcodes])
        base_of_cell = np.where(scene.barcode_of >= 0, base_index[scene.barcode_of], 0)
        total = (float(offset[0] + rel[0]), float(offset[1] + rel[1]))
        planes = [
            _acquire(_sbs_signal(scene, ch, base_of_cell, k), sbs_illum[i], total, pad, spec,
                     photons, rng)
            for i, ch in enumerate(spec.sbs_channels)
        ]  # fmt: skip
        write_ome(
            path, np.stack(planes), spec.sbs_channels, _file_uuid(spec, path),
            spec.cp_pixel_um, position,
        )  # fmt: skip
        shifts.append(
            {"plate": plate, "well": well, "site": job.site, "cycle": k, "dy": float(rel[0]),
             "dx": float(rel[1])}
        )  # fmt: skip

    nuclei = scene.nuclei[pad : pad + n, pad : pad + n]
    cells_mask = scene.cells[pad : pad + n, pad : pad + n]
    mask_dir = Path(job.truth) / "masks" / plate / well
    dtype = np.uint16 if scene.nuclei.max() < 65535 else np.uint32
    write_tiff(str(mask_dir / f"Site_{job.site}_nuclei.tiff"), nuclei.astype(dtype))
    write_tiff(str(mask_dir / f"Site_{job.site}_cells.tiff"), cells_mask.astype(dtype))

    cells = []
    labels = np.unique(nuclei)
    labels = labels[labels > 0]
    if labels.size:
        centroids = ndimage.center_of_mass(np.ones_like(nuclei), nuclei, labels)
        for lab, (cy, cx) in zip(labels, centroids, strict=True):
            sgrna, gene = barcodes[scene.barcode_of[lab]]
            cells.append(
                {"plate": plate, "well": well, "site": job.site, "cell_id": int(lab),
                 "y": float(cy), "x": float(cx), "sgRNA": sgrna,
                 "barcode": sgrna[: spec.cycles] if spec.cycles else "", "gene_symbol": gene}
            )  # fmt: skip
    return {
        "shifts": shifts,
        "offsets": offsets,
        "cells": cells,
        "n_files": 1 + len(job.sbs_paths),
    }
