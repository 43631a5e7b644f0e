"""Benchmark of segmentation, barcode calling and per-cell features (issue 6).

Prints, per 1024x1024 site, the time of each step and its ratio against a baseline
measured in the same process:

- segmentation vs. a textbook Otsu + distance-transform watershed with per-region
  peak search (``peak_local_max(labels=...)``);
- barcode calling vs. the same pipeline matching reads to barcodes in a Python loop;
- features vs. ``skimage.measure.regionprops_table`` computing the same measurements;
- the per-well run on 2 worker processes vs. 1;

then barcode-calling accuracy against the generator's ground truth per noise level.

Run: ``.venv/bin/python bench/bench_cells.py``  (about two minutes on 2 cores)
"""

from __future__ import annotations

import glob
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tifffile
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation

from starrynight import workspace
from starrynight.algorithms import barcodes as bc
from starrynight.algorithms import features as feat
from starrynight.algorithms import segmentation as seg
from starrynight.imageio import write_tiff
from starrynight.modules.barcodes import BarcodeParams, call_well
from starrynight.modules.segment import SegmentParams, segment_well
from starrynight.sample import SampleSpec, generate

PLATE, WELL = "Plate1", "A1"


def make_inputs(out: Path, ws: Path, sites: int) -> dict:
    """Corrected CP and aligned SBS images from the generator's true fields and shifts."""
    truth = out / "ground_truth"
    spec = json.loads((truth / "manifest.json").read_text())["spec"]
    images = out / "sample" / "source_1" / "Batch1" / "images" / PLATE
    shifts = pq.read_table(truth / "shifts.parquet").to_pylist()
    off = spec["camera_offset"]
    for site in range(sites):
        stem = f"Well{WELL}_Point{WELL}_{site:04d}_*"
        cp = tifffile.imread(glob.glob(str(images / "20X_CP_*" / stem))[0])
        for i, ch in enumerate(spec["cp_channels"]):
            f = np.load(truth / "illum" / f"cp_{ch}.npy")
            c = np.clip((cp[i].astype(np.float32) - off) / f, 0, 65535).astype(np.uint16)
            write_tiff(workspace.corrected_path(str(ws), PLATE, WELL, site, ch.replace("-", "")), c)
        for k in range(1, spec["cycles"] + 1):
            raw = tifffile.imread(glob.glob(str(images / f"10X_c{k}_SBS-{k}" / stem))[0])
            sh = next(r for r in shifts if r["site"] == site and r["cycle"] == k)
            for i, ch in enumerate(spec["sbs_channels"]):
                f = np.load(truth / "illum" / f"sbs_{ch}.npy")
                moved = ndi.shift((raw[i].astype(np.float32) - off) / f, (-sh["dy"], -sh["dx"]),
                                  order=1)  # fmt: skip
                uri = workspace.aligned_path(str(ws), PLATE, WELL, site, k, ch)
                write_tiff(uri, np.clip(moved, 0, 65535).astype(np.uint16))
    return spec


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def baseline_nuclei(img: np.ndarray, diameter: float = 18) -> np.ndarray:
    sm = filters.gaussian(img.astype(np.float32), 1, preserve_range=True)
    fg = ndi.binary_fill_holes(sm > filters.threshold_otsu(sm))
    dist = ndi.distance_transform_edt(fg)
    regions = measure.label(fg)
    peaks = feature.peak_local_max(dist, min_distance=int(diameter / 4), labels=regions)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = segmentation.watershed(-dist, markers, mask=fg)
    return morphology.remove_small_objects(lab, max_size=20)


def python_match(reads: np.ndarray, library: bc.Library, max_distance: int) -> list[int]:
    texts = bc.decode(reads)
    out = []
    for r in texts:
        d = [sum(a != b for a, b in zip(r, b_, strict=True)) for b_ in library.barcodes]
        m = min(d)
        out.append(d.index(m) if m <= max_distance and d.count(m) == 1 else -1)
    return out


def accuracy(noise: float, tmp: Path) -> tuple[float, float, float, int]:
    out = tmp / f"noise{noise}"
    generate(SampleSpec(wells=(WELL,), sites=2, noise=noise, workers=2), out)
    ws = out / "ws"
    make_inputs(out, ws, 2)
    truth = out / "ground_truth"
    barcodes = str(out / "sample/source_1/workspace/metadata/Barcodes.csv")
    call_well(str(ws), PLATE, WELL, barcodes=barcodes,
              params=BarcodeParams(nuclei=seg.NucleiParams(diameter=18)))  # fmt: skip
    calls = pq.read_table(workspace.cell_barcodes_path(str(ws), PLATE, WELL)).to_pylist()
    offsets = {r["site"]: (r["dy"], r["dx"]) for r in
               pq.read_table(truth / "cp_sbs_offsets.parquet").to_pylist()}  # fmt: skip
    gt = {(r["site"], r["cell_id"]): r["barcode"]
          for r in pq.read_table(truth / "cells.parquet").to_pylist()}  # fmt: skip
    right = wrong = missed = 0
    for site in (0, 1):
        masks = tifffile.imread(truth / "masks" / PLATE / WELL / f"Site_{site}_nuclei.tiff")
        dy, dx = offsets[site]
        for c in (c for c in calls if c["site"] == site):
            if c["reason"] == "outside the area imaged in every cycle":
                continue
            y, x = round(c["nucleus_y"] - dy), round(c["nucleus_x"] - dx)
            if not (0 <= y < masks.shape[0] and 0 <= x < masks.shape[1]) or not masks[y, x]:
                continue
            true = gt[(site, int(masks[y, x]))]
            if c["barcode"] is None:
                missed += 1
            elif c["barcode"] == true:
                right += 1
            else:
                wrong += 1
    n = right + wrong + missed
    return right / n, wrong / n, missed / n, n


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        out = tmp / "big"
        t = time.perf_counter()
        generate(SampleSpec(wells=(WELL,), sites=4, size=1024, workers=2), out)
        ws = out / "ws"
        spec = make_inputs(out, ws, 4)
        print(f"sample: 4 sites of 1024x1024 generated in {time.perf_counter() - t:.1f} s")

        dna = tifffile.imread(workspace.corrected_path(str(ws), PLATE, WELL, 0, "DAPI"))
        actin = tifffile.imread(workspace.corrected_path(str(ws), PLATE, WELL, 0, "PhalloAF750"))
        params = seg.NucleiParams(diameter=18)
        ours = best_of(lambda: seg.segment_cells(actin, seg.segment_nuclei(dna, params),
                                                 max_distance=40))  # fmt: skip
        base = best_of(lambda: seg.segment_cells(actin, baseline_nuclei(dna), max_distance=40))
        nuclei = seg.segment_nuclei(dna, params)
        cells = seg.segment_cells(actin, nuclei)
        print(
            f"segmentation (nuclei + cells): {ours:.0f} ms/site  "
            f"baseline {base:.0f} ms  ratio {base / ours:.2f}x  ({nuclei.max()} cells)"
        )

        channels = {ch.replace("-", ""): tifffile.imread(
            workspace.corrected_path(str(ws), PLATE, WELL, 0, ch.replace("-", "")))
            for ch in spec["cp_channels"]}  # fmt: skip
        ours = best_of(lambda: feat.measure_cells(nuclei, cells, channels))
        n_feat = len(feat.measure_cells(nuclei, cells, channels)) - 1

        def regionprops_all() -> None:
            for lab in (nuclei, cells):
                for img in channels.values():
                    measure.regionprops_table(
                        lab, img,
                        properties=("label", "area", "perimeter", "eccentricity", "extent",
                                    "axis_major_length", "axis_minor_length", "orientation",
                                    "centroid", "intensity_mean", "intensity_min",
                                    "intensity_max", "intensity_std"),
                        extra_properties=(_q25, _q50, _q75),
                    )  # fmt: skip

        base = best_of(regionprops_all, repeat=1)
        print(
            f"features ({n_feat} per cell): {ours:.0f} ms/site  "
            f"regionprops baseline {base:.0f} ms  ratio {base / ours:.2f}x"
        )

        sbs_ch = spec["sbs_channels"]
        stack = np.stack([np.stack([tifffile.imread(workspace.aligned_path(
            str(ws), PLATE, WELL, 0, k, b)) for b in bc.BASES]) for k in range(1, 5)]
        ).astype(np.float32)  # fmt: skip
        sbs_dna = tifffile.imread(workspace.aligned_path(str(ws), PLATE, WELL, 0, 1, "DAPI"))
        assert "DAPI" in sbs_ch
        rows = (out / "sample/source_1/workspace/metadata/Barcodes.csv").read_text().split()[1:]
        library = bc.build_library([r.split(",")[0] for r in rows],
                                   [r.split(",")[1] for r in rows], 4)  # fmt: skip
        sbs_cells = seg.expand_nuclei(seg.segment_nuclei(sbs_dna, params), 13.5)

        def ours_call() -> None:
            bc.read_site(stack, sbs_cells, library)

        def base_call() -> None:
            filt = bc.spot_filter(stack)
            spots = bc.detect_spots(filt, mask=sbs_cells > 0)
            values, _ = bc.compensate_cycles(bc.spot_intensities(filt, spots))
            python_match(bc.call_bases(values)[0], library, 1)

        ours = best_of(ours_call)
        base = best_of(base_call, repeat=1)
        n_spots = len(bc.read_site(stack, sbs_cells, library).spots["y"])
        print(
            f"barcode calling (SBS nuclei, {n_spots} spots, 4 cycles): {ours:.0f} ms/site  "
            f"python-match baseline {base:.0f} ms  ratio {base / ours:.2f}x"
        )

        sp = SegmentParams(nuclei=params)
        t1 = time.perf_counter()
        segment_well(str(ws), PLATE, WELL, params=sp, workers=1, force=True)
        one = time.perf_counter() - t1
        t2 = time.perf_counter()
        segment_well(str(ws), PLATE, WELL, params=sp, workers=2, force=True)
        two = time.perf_counter() - t2
        print(
            f"segment well (4 sites 1024^2): 1 worker {one:.2f} s, 2 workers {two:.2f} s, "
            f"speed-up {one / two:.2f}x"
        )

        print("barcode accuracy vs ground truth (cells in the field of every cycle):")
        for noise in (1.0, 4.0, 16.0):
            right, wrong, missed, n = accuracy(noise, tmp)
            print(
                f"  noise {noise:g}: right {right:.1%}  wrong {wrong:.1%}  "
                f"unassigned {missed:.1%}  ({n} cells)"
            )


def _q25(mask: np.ndarray, img: np.ndarray) -> float:
    return float(np.quantile(img[mask], 0.25))


def _q50(mask: np.ndarray, img: np.ndarray) -> float:
    return float(np.quantile(img[mask], 0.5))


def _q75(mask: np.ndarray, img: np.ndarray) -> float:
    return float(np.quantile(img[mask], 0.75))


if __name__ == "__main__":
    main()
