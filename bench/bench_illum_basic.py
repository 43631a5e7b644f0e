"""BaSiC (basicpy) beside ``illum calc`` on the sample's known illumination fields.

Usage: python bench/bench_illum_basic.py --basic-python PATH [--sites 8]

basicpy pins ``scipy<1.13`` (so numpy 1.x) and pulls torch: it cannot share the
project's environment, so it runs in its own venv (``python -m venv V && V/bin/pip
install basicpy``), given as ``--basic-python V/bin/python``, on the raw images this
script saves as ``.npy``. For every Cell Painting channel of a 3-well sample plate
(camera offset 100) it prints the vignetting left after correction (CV of the smoothed
corrected true field / CV of the raw field, as ``bench_illum.py``) by the
``cellprofiler`` preset (the baseline, same run), the ``default`` preset and BaSiC
(flat field with its dark field), and each one's fit time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_illum import vignetting_left  # noqa: E402

from starrynight import index, inventory, workspace  # noqa: E402
from starrynight.imageio import read_image  # noqa: E402
from starrynight.modules.illum import calc_illum  # noqa: E402
from starrynight.sample import SampleSpec, generate  # noqa: E402

BASIC_SCRIPT = """
import sys, time, numpy as np
from basicpy import BaSiC
stack = np.load(sys.argv[1]).astype(np.float64)
t = time.perf_counter()
model = BaSiC(get_darkfield=True, smoothness_flatfield=1.0)
model.fit(stack)
np.save(sys.argv[2], np.stack([model.flatfield, model.darkfield]))
print(time.perf_counter() - t)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--basic-python", required=True, help="python of a venv with basicpy")
    parser.add_argument("--sites", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        spec = SampleSpec(wells=("A1", "A2", "A3"), sites=args.sites, cycles=0, n_barcodes=4)
        result = generate(spec, tmp / "sample")
        ws = str(tmp / "ws")
        inventory.generate(result.dataset_root, ws, progress=False)
        index.generate(ws, ws)
        ours, times = {}, {}
        for preset in ("cellprofiler", "default"):
            t = time.perf_counter()
            calc_illum(ws, "Plate1", arm="cp", preset=preset, force=True)
            times[preset] = time.perf_counter() - t
            for ch in spec.cp_channels:
                uri = workspace.illum_path(ws, "Plate1", index.normalise_channel(ch))
                ours[preset, ch] = np.load(uri)
        files = sorted(Path(result.dataset_root).rglob("*.ome.tiff"))
        stack = np.stack([read_image(str(f)) for f in files])  # (n, channels, H, W)
        script = tmp / "basic_fit.py"
        script.write_text(BASIC_SCRIPT)
        print(f"{len(files)} images of {spec.size} px; vignetting left (lower is better):")
        print(f"  {'channel':12s} {'cellprofiler':>12s} {'default':>8s} {'BaSiC':>8s}"
              "   default/cp  BaSiC/cp  BaSiC fit s")  # fmt: skip
        for i, ch in enumerate(spec.cp_channels):
            np.save(tmp / "stack.npy", stack[:, i])
            done = subprocess.run(
                [args.basic_python, str(script), str(tmp / "stack.npy"), str(tmp / "fit.npy")],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"BaSiC failed:\n{done.stderr[-2000:]}")
            flat = np.load(tmp / "fit.npy")[0]
            true = np.load(Path(result.ground_truth) / "illum" / f"cp_{ch}.npy")
            v = [
                vignetting_left(true, ours["cellprofiler", ch]),
                vignetting_left(true, ours["default", ch]),
                vignetting_left(true, flat),
            ]
            print(f"  {ch:12s} {v[0]:12.3f} {v[1]:8.3f} {v[2]:8.3f}   {v[1] / v[0]:10.2f} "
                  f"{v[2] / v[0]:9.2f} {float(done.stdout.split()[-1]):11.1f}")  # fmt: skip
        print(f"  ours, whole plate, all channels: cellprofiler {times['cellprofiler']:.1f} s, "
              f"default {times['default']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
