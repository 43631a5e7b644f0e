"""Sample generator speed and memory.

Target (issue 2): 1 plate x 2 wells x 16 sites x (CP + 4 SBS cycles) at 1024^2 well
under a minute, with memory that does not grow with the number of sites. The baseline,
measured in the same run, is writing the same number of same-sized uint16 OME-TIFFs
filled with random data (the I/O floor of the generator).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_geometry import PEAK_RSS_CODE

from starrynight.imageio import write_tiff

SIZE = 1024


def _generate(out: Path, sites: int) -> tuple[float, float]:
    """Generate in a child process; return (seconds, peak RSS of any process in MB)."""
    code = PEAK_RSS_CODE + (
        "import resource, sys\n"
        "from starrynight.sample import SampleSpec, generate\n"
        f"r = generate(SampleSpec(size={SIZE}, sites={sites}), sys.argv[1])\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(r.n_files, max(peak_rss_mb(), kids))\n"
    )
    start = time.perf_counter()
    out_text = subprocess.run(
        [sys.executable, "-c", code, str(out)], check=True, capture_output=True, text=True
    ).stdout
    seconds = time.perf_counter() - start
    return seconds, float(out_text.split()[1])


def _baseline(out: Path, n_files: int) -> float:
    rng = np.random.default_rng(0)
    planes = {3: rng.integers(0, 4000, (3, SIZE, SIZE), dtype=np.uint16)}
    planes[5] = rng.integers(0, 4000, (5, SIZE, SIZE), dtype=np.uint16)
    start = time.perf_counter()
    for i in range(n_files):
        data = planes[3] if i % 5 == 0 else planes[5]
        write_tiff(str(out / f"f{i}.ome.tiff"), data, ome=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, small_mb = _generate(root / "small", sites=4)
        big_s, big_mb = _generate(root / "big", sites=16)
        n_files = 2 * 16 * 5
        floor = _baseline(root / "floor", n_files)
    print(f"generate 1 plate x 2 wells x 16 sites x (CP + 4 cycles) at {SIZE}^2: {big_s:.1f} s")
    print(f"baseline (write {n_files} random OME-TIFFs of the same size): {floor:.1f} s")
    print(f"ratio: {big_s / floor:.1f}x the I/O floor; target < 60 s: "
          f"{'met' if big_s < 60 else 'NOT met'}")  # fmt: skip
    print(f"peak RSS per process: {small_mb:.0f} MB at 4 sites/well, {big_mb:.0f} MB at 16")
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this benchmark process: {usage:.0f} MB)")


if __name__ == "__main__":
    main()
