"""Nuclei F1 at IoU 0.5 on real annotated nuclei, clean and at another scale.

Usage: python bench/bench_segment.py

``tests/data/stardist`` (img2d/mask2d from the StarDist wheel, 125 nuclei) as it is, and
the same image upscaled 2x, vignetted (corners at 30 %) and noisy (Poisson at ~20
photons per count plus read noise), as ``tests/starrynight/test_segment_algorithms.py``
makes it. Prints the estimated diameter and F1 with the defaults (diameter estimated,
local threshold, per-nucleus half-maximum outlines) against the same without the outline
refinement and against the fixed 20 px scale with one global threshold (the defaults
before, same run), and the time per image.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from starrynight.algorithms import segmentation as seg  # noqa: E402
from tests.starrynight.test_segment_algorithms import DATA, _degraded  # noqa: E402


def main() -> None:
    image = tifffile.imread(DATA / "img2d.tif")
    truth = tifffile.imread(DATA / "mask2d.tif")
    worse, worse_truth = _degraded(image, truth)
    fixed = seg.NucleiParams(diameter=20.0, local_threshold=False, edge_fraction=None)
    shared_edge = seg.NucleiParams(edge_fraction=None)
    print(f"{'image':34s} {'diameter':>8s} {'F1 fixed 20px':>13s} {'F1 one edge':>11s}"
          f" {'F1 default':>10s} {'s':>5s}")  # fmt: skip
    for name, img, tr in (
        ("clean 512 px", image, truth),
        ("2x, vignetted, noisy 1024 px", worse, worse_truth),
    ):
        f_fixed = seg.match_labels(seg.segment_nuclei(img, fixed), tr).f1
        f_shared = seg.match_labels(seg.segment_nuclei(img, shared_edge), tr).f1
        t = time.perf_counter()
        labels = seg.segment_nuclei(img)
        dt = time.perf_counter() - t
        d = seg.estimate_diameter([img])
        print(f"{name:34s} {d:8.1f} {f_fixed:13.3f} {f_shared:11.3f}"
              f" {seg.match_labels(labels, tr).f1:10.3f}"
              f" {dt:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
