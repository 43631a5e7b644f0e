"""Illumination: accuracy on the sample's true fields, calc and apply speed.

On a shared machine, ``TMPDIR=/dev/shm`` keeps disk write-back out of the apply figures.

Usage: python bench/bench_illum.py [--n 40] [--size 1480] [--memory-n 500] [--skip-accuracy]
       [--skip-calc] [--apply-n 16] [--reps 5]

1. Accuracy: the sample dataset (3 wells x 8 sites = 24 images per plate, 512 px,
   camera offset 100), both presets; per channel the correlation of the function with
   the true field and the vignetting left after correction (CV of the smoothed
   corrected field / CV of the raw field).
2. ``illum calc`` accumulation on N synthetic 5-channel files of size x size: ours
   (2 threads, each file read once) against the floor, a plain single-threaded numpy
   loop that reads each file once and adds its planes into float64 accumulators.
   Peak traced memory for N and for --memory-n (files repeated) shows it does not grow
   with N. Then the fixed per-plate cost of turning one channel's mean into its
   function (shrink, median, surface fit, rescale, enlarge), per preset.
3. ``illum apply`` per image: the real step on a well (read, correct 5 channels, write
   5 TIFFs, including its per-well set-up), with 1 and 2 workers, against a plain
   single-threaded read + write of the same images; alternating runs, min and median.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from starrynight import index, inventory, workspace
from starrynight.imageio import read_image, write_tiff
from starrynight.modules.illum import (
    GroupReader,
    ImageRow,
    accumulate,
    apply_illum,
    calc_illum,
    load_functions,
)
from starrynight.sample import SampleSpec, generate


def vignetting_left(true: np.ndarray, function: np.ndarray) -> float:
    sigma = max(true.shape) / 64
    corrected = ndimage.gaussian_filter(true / function, sigma)
    raw = ndimage.gaussian_filter(true, sigma)
    return float((corrected.std() / corrected.mean()) / (raw.std() / raw.mean()))


def accuracy(tmp: Path) -> None:
    spec = SampleSpec(wells=("A1", "A2", "A3"), sites=8, cycles=1, n_barcodes=4)
    result = generate(spec, tmp / "sample")
    ws = str(tmp / "ws")
    inventory.generate(result.dataset_root, ws)
    index.generate(ws, ws)
    functions = {}
    for preset in ("cellprofiler", "default"):
        calc_illum(ws, "Plate1", preset=preset, force=True)
        for arm, channels in (("cp", spec.cp_channels), ("sbs", spec.sbs_channels)):
            for ch in channels:
                cycle = 1 if arm == "sbs" else None
                path = workspace.illum_path(ws, "Plate1", index.normalise_channel(ch), cycle)
                functions[preset, arm, ch] = np.load(path)
    print("accuracy (24 images per plate, 512 px, camera offset 100):")
    print(f"  {'channel':14s} {'corr cp':>8s} {'corr def':>8s} {'vig cp':>7s} {'vig def':>7s}")
    for arm, channels in (("cp", spec.cp_channels), ("sbs", spec.sbs_channels)):
        for ch in channels:
            true = np.load(Path(result.ground_truth) / "illum" / f"{arm}_{ch}.npy")
            c = [np.corrcoef(functions[p, arm, ch].ravel(), true.ravel())[0, 1]
                 for p in ("cellprofiler", "default")]  # fmt: skip
            v = [vignetting_left(true, functions[p, arm, ch]) for p in ("cellprofiler", "default")]
            print(f"  {arm + ' ' + ch:14s} {c[0]:8.4f} {c[1]:8.4f} {v[0]:7.3f} {v[1]:7.3f}"
                  f"   default leaves {v[1] / v[0]:.2f}x the cellprofiler preset's")  # fmt: skip


def smoothing_cost(size: int, reps: int = 3) -> None:
    """The fixed per-plate cost: one mean image to one function, per channel and preset."""
    from starrynight.algorithms import illum as alg

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    mean = 100 + 2000 * np.exp(-2 * (yy**2 + xx**2)) * rng.uniform(0.5, 1.5, (size, size))
    print(f"per-plate smoothing, one {size}x{size} channel (paid once per plate and channel):")
    for preset in ("cellprofiler", "default"):
        settings = alg.preset_settings(preset, "cp")  # type: ignore[arg-type]
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            alg.illumination_function(mean, settings, 100.0 if preset == "default" else 0.0)
            ts.append(time.perf_counter() - t)
        print(f"  {preset:12s}: {min(ts) * 1e3:7.1f} ms (best of {reps})")


def make_files(folder: Path, n: int, size: int) -> list[ImageRow]:
    rng = np.random.default_rng(0)
    base = rng.integers(100, 4000, (5, size, size), dtype=np.uint16)
    rows = []
    for i in range(n):
        path = folder / f"img{i:04d}.tiff"
        tifffile.imwrite(path, np.roll(base, i, axis=2), photometric="minisblack")
        rows.append(ImageRow(str(path), path.name, "cp", 0, "A1", i, tuple("ABCDE")))
    return rows


def floor(rows: list[ImageRow]) -> np.ndarray:
    acc = None
    for row in rows:
        image = tifffile.imread(row.uri)
        if acc is None:
            acc = np.zeros(image.shape, np.float64)
        for c in range(image.shape[0]):
            acc[c] += image[c]
    return acc / len(rows)


def calc_speed(tmp: Path, n: int, size: int, memory_n: int) -> None:
    rows = make_files(tmp, n, size)
    floor(rows[:2])  # warm the page cache and imports
    for f in rows:
        Path(f.uri).read_bytes()
    t = time.perf_counter()
    ref = floor(rows)
    t_floor = time.perf_counter() - t
    reader = GroupReader(list("ABCDE"))
    t = time.perf_counter()
    acc, _ = accumulate(rows, reader.read, workers=2)
    t_ours = time.perf_counter() - t
    np.testing.assert_allclose(acc.mean(), ref, rtol=1e-12)
    mb = n * 5 * size * size * 2 / 1e6
    print(f"illum calc accumulation, {n} files of {size}x{size}x5 uint16 ({mb:.0f} MB):")
    print(f"  floor (1 thread, plain numpy): {t_floor:6.2f} s  ({t_floor / n * 1e3:.1f} ms/file)")
    print(f"  ours  (2 threads)            : {t_ours:6.2f} s  ({t_ours / n * 1e3:.1f} ms/file)")
    print(f"  ratio ours/floor: {t_ours / t_floor:.2f} (limit 1.25)")
    for count in (n, memory_n):
        repeated = [rows[i % n] for i in range(count)]
        tracemalloc.start()
        accumulate(repeated, GroupReader(list("ABCDE")).read, workers=2)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  peak traced memory, N={count}: {peak / 1e6:.0f} MB")


def make_plate(root: Path, n: int, size: int) -> str:
    """A one-well plate of ``n`` 5-channel sites in the Gallery layout, indexed, with
    its CP illumination functions; returns the workspace."""
    rng = np.random.default_rng(0)
    base = rng.integers(100, 4000, (5, size, size), dtype=np.uint16)
    folder = root / "data" / "source_1" / "Batch1" / "images" / "P1" / "20X_CP_P1"
    folder.mkdir(parents=True)
    for i in range(n):
        name = f"WellA1_PointA1_{i:04d}_ChannelDAPI,Actin,ZO1,Mito,ER_Seq{i:04d}.ome.tiff"
        tifffile.imwrite(folder / name, np.roll(base, i, axis=2), photometric="minisblack")
    ws = str(root / "ws")
    inventory.generate(str(root / "data"), ws)
    index.generate(ws, ws)
    calc_illum(ws, "P1", arm="cp")
    return ws


def apply_speed(tmp: Path, n: int, size: int, reps: int) -> None:
    """The real ``illum apply`` of a well against a plain read + write of its images.

    Plain: one thread reads each 5-channel file and writes its 5 planes as TIFFs (the
    same ``write_tiff``, atomic). Ours: :func:`apply_illum` on the well, per image,
    including its per-well set-up (index, 5 illumination functions), with 1 and with
    2 workers (the command's default). Runs alternate; min and median of ``reps``.
    """
    ws = make_plate(tmp, n, size)
    files = sorted((tmp / "data").rglob("*.ome.tiff"))
    out = tmp / "plain"

    def plain() -> None:
        for i, f in enumerate(files):
            image = read_image(str(f))
            for c in range(image.shape[0]):
                write_tiff(str(out / f"plain_{i}_{c}.tiff"), image[c])

    runs = {
        "plain read + write (1 thread)": plain,
        "illum apply, 1 worker": lambda: apply_illum(ws, "P1", "A1", force=True, workers=1),
        "illum apply, 2 workers": lambda: apply_illum(ws, "P1", "A1", force=True, workers=2),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    plain()  # warm the page cache, imports and output folders
    runs["illum apply, 1 worker"]()
    for _ in range(reps):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / n)
    setup = []
    for _ in range(reps):
        t = time.perf_counter()
        load_functions(ws, "P1", ["DAPI", "Actin", "ZO1", "Mito", "ER"])
        setup.append(time.perf_counter() - t)
    print(f"illum apply per image ({n} sites of {size}x{size}x5 uint16, {reps} alternating runs):")
    for name, ts in times.items():
        print(f"  {name:30s} min {min(ts) * 1e3:6.1f} ms   median {np.median(ts) * 1e3:6.1f} ms")
    base_min, base_med = (
        min(times["plain read + write (1 thread)"]),
        np.median(times["plain read + write (1 thread)"]),
    )
    for name in list(runs)[1:]:
        print(f"  ratio {name} / plain: {min(times[name]) / base_min:.2f} (min), "
              f"{np.median(times[name]) / base_med:.2f} (median); limit 2.0")  # fmt: skip
    print(f"  per-well set-up (load 5 functions): min {min(setup) * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40, help="Files for the speed runs.")
    parser.add_argument("--size", type=int, default=1480, help="Image side in pixels.")
    parser.add_argument("--memory-n", type=int, default=500, help="N for the memory run.")
    parser.add_argument("--skip-accuracy", action="store_true", help="Only the speed runs.")
    parser.add_argument("--skip-calc", action="store_true", help="Skip the calc speed run.")
    parser.add_argument("--apply-n", type=int, default=16, help="Sites of the apply well.")
    parser.add_argument("--reps", type=int, default=5, help="Alternating apply runs.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_accuracy:
            accuracy(Path(tmp) / "acc")
        if not args.skip_calc:
            (Path(tmp) / "calc").mkdir()
            calc_speed(Path(tmp) / "calc", args.n, args.size, args.memory_n)
            smoothing_cost(args.size)
        (Path(tmp) / "apply").mkdir()
        apply_speed(Path(tmp) / "apply", args.apply_n, args.size, args.reps)


if __name__ == "__main__":
    main()
