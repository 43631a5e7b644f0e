"""Per-cell features of one 1480x1480 site, by family, and our Haralick vs cp_measure's.

Prints (issue 18):

- the per-site cost of :func:`starrynight.algorithms.features.measure_cells` at
  1480^2 with 3 channels (nuclei, cells, cytoplasm), family by family, next to the
  baseline of reading the site's three channel images and two masks from TIFF;
- Haralick texture (3 scales x 4 directions) computed by ours and by ``cp_measure``
  (CellProfiler's per-object mahotas call) on the same objects, with the speed ratio.

Run: ``python bench/bench_features.py [--size 1480] [--crop 400]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.draw import ellipse
from skimage.segmentation import expand_labels, relabel_sequential

from starrynight.algorithms import features as feat
from starrynight.algorithms.haralick import haralick_features


def site(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A site like the sample's: ~9 px nuclei on a jittered grid, cells grown around them."""
    rng = np.random.default_rng(seed)
    nuclei = np.zeros((size, size), np.int32)
    label = 0
    for gy in np.arange(15, size - 15, 30.0):
        for gx in np.arange(15, size - 15, 30.0):
            if rng.random() > 0.8:
                continue
            r = 9 * rng.uniform(0.8, 1.2)
            rr, cc = ellipse(gy + rng.uniform(-5, 5), gx + rng.uniform(-5, 5), r,
                             r * rng.uniform(0.7, 1), shape=nuclei.shape,
                             rotation=rng.uniform(0, np.pi))  # fmt: skip
            label += 1
            nuclei[rr, cc] = label
    cells = expand_labels(nuclei, 14)
    channels = {}
    for name, source in (("DAPI", nuclei), ("Actin", cells), ("Mito", cells)):
        base = (source > 0) * rng.lognormal(0, 0.3, label + 1)[source]
        tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.5)
        img = np.clip((0.05 + 0.6 * base * (1 + 0.3 * tex)) * 40000, 0, 65535)
        channels[name] = img.astype(np.uint16)
    return nuclei, cells, channels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1480)
    ap.add_argument("--crop", type=int, default=400, help="Crop for the cp_measure texture run.")
    args = ap.parse_args()
    nuclei, cells, channels = site(args.size)
    n_cells = len(np.unique(cells)) - 1
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, img in [*channels.items(), ("nuclei", nuclei), ("cells", cells)]:
            p = Path(tmp) / f"{name}.tiff"
            tifffile.imwrite(p, img)
            paths.append(p)
        t = time.perf_counter()
        for p in paths:
            tifffile.imread(p)
        baseline = time.perf_counter() - t
    feat.feature_names(tuple(channels))  # imports and warm-up, not part of a site's cost
    print(f"site {args.size}x{args.size}, {n_cells} cells, channels {', '.join(channels)}")
    print(f"baseline: read 3 channels + 2 masks   {baseline:8.2f} s")
    total = total_cpu = 0.0
    for family in feat.FAMILIES:
        t, cpu = time.perf_counter(), time.process_time()
        out = feat.measure_cells(nuclei, cells, channels, families=(family,))
        sec, cpu = time.perf_counter() - t, time.process_time() - cpu
        total += sec
        total_cpu += cpu
        print(f"  {family:<15} {len(out) - 1:5d} features wall {sec:8.2f} s  cpu {cpu:8.2f} s  "
              f"({sec / baseline:7.1f}x baseline)")  # fmt: skip
    print(f"per site, all families          wall {total:8.2f} s  cpu {total_cpu:8.2f} s  "
          f"({total / baseline:.0f}x baseline); load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    from cp_measure.bulk import get_core_measurements

    c = args.crop
    lab = relabel_sequential(cells[:c, :c])[0]  # cp_measure numbers the objects 1..N
    scaled = channels["Actin"][:c, :c] / 65535.0
    texture = get_core_measurements()["texture"]
    worst, t_theirs, t_ours = 0.0, 0.0, 0.0
    for scale in feat.TEXTURE_SCALES:
        t = time.process_time()
        theirs = texture(lab, scaled, scale=scale)
        t_theirs += time.process_time() - t
        t = time.process_time()
        ours = haralick_features(lab, scaled, scale=scale)
        t_ours += time.process_time() - t
        for k, v in theirs.items():
            diff = np.abs(ours[k] - np.asarray(v)) / (1e-12 + np.abs(ours[k]))
            worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0)
    n = int(lab.max())
    print(f"Haralick, {n} objects of a {c}^2 crop, 3 scales, 1 channel:")
    print(f"  cp_measure (mahotas per object) cpu {t_theirs:8.2f} s")
    print(f"  ours (all objects at once)      cpu {t_ours:8.2f} s  ({t_theirs / t_ours:.0f}x "
          f"faster; largest relative difference {worst:.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
