"""Alignment speed and accuracy against skimage's phase_cross_correlation, same images.

Usage: python bench/bench_align.py [--sites 4] [--size 512]

Generates the sample dataset (ground-truth shifts up to +-30 px), then registers every
SBS cycle's DAPI to cycle 1's per site with ours (window, real FFTs, reference spectrum
reused, upsample 20) and with ``skimage.registration.phase_cross_correlation(...,
upsample_factor=10)``. Prints ms per site, the speed ratio and both errors. BLAS is
kept to one thread for both (sites run in parallel in the real step).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tifffile
from skimage.registration import phase_cross_correlation
from threadpoolctl import threadpool_limits

from starrynight.algorithms import align as alg
from starrynight.sample import SampleSpec, generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=4, help="Sites per well (2 wells).")
    parser.add_argument("--size", type=int, default=512, help="Image size.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = SampleSpec(sites=args.sites, size=args.size, cycles=4)
        result = generate(spec, tmp)
        truth = pq.read_table(f"{result.ground_truth}/shifts.parquet").to_pylist()
        images = f"{result.dataset_root}/{spec.source}/{spec.batch}/images/Plate1"
        sites = {}
        for well in spec.wells:
            for site in range(spec.sites):
                stack = []
                for k in range(1, spec.cycles + 1):
                    pattern = f"10X_c{k}_SBS-{k}/Well{well}_Point{well}_{site:04d}_*"
                    path = next(Path(images).glob(pattern))
                    stack.append(tifffile.imread(path)[-1])  # DAPI is the last frame
                sites[well, site] = stack
        expected = {(r["well"], r["site"], r["cycle"]): (-r["dy"], -r["dx"]) for r in truth}

    window = alg.tukey_window((args.size, args.size), 0.25)

    def ours(stack):
        ref = alg.reference_spectrum(stack[0], window)
        return [
            alg.register_translation(ref, alg.reference_spectrum(m, window), 20)[0]
            for m in stack[1:]
        ]

    def skimage(stack):
        return [phase_cross_correlation(stack[0], m, upsample_factor=10)[0] for m in stack[1:]]

    with threadpool_limits(1, user_api="blas"):
        figures = {}
        for name, fn in (("ours", ours), ("skimage", skimage)):
            fn(sites[next(iter(sites))])  # warm-up
            start = time.perf_counter()
            found = {key: fn(stack) for key, stack in sites.items()}
            seconds = (time.perf_counter() - start) / len(sites)
            errors = np.array(
                [
                    np.hypot(*(np.asarray(s) - expected[w, site, k]))
                    for (w, site), shifts in found.items()
                    for k, s in enumerate(shifts, start=2)
                ]
            )
            figures[name] = seconds
            print(
                f"{name:8s}: {seconds * 1e3:7.1f} ms/site ({spec.cycles - 1} cycles, "
                f"{args.size}px), RMS error {np.sqrt(np.mean(errors**2)):.3f} px, "
                f"max {errors.max():.3f} px over {errors.size} shifts"
            )
    print(f"speed ratio skimage/ours: {figures['skimage'] / figures['ours']:.2f}x")


if __name__ == "__main__":
    main()
