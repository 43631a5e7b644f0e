"""Run the Broad's own PCPIP pipelines through ``cp loaddata`` + ``cp run`` (by hand).

Not a test: the Broad's files are not in this repository. Point it at a checkout of
pooled-cell-painting-image-processing's ``pipelines/12cycles`` (or a folder of pipelines
with the same file names) and CellProfiler 4.2.8::

    PYTHONPATH=. .venv/bin/python tests/data/cellprofiler/run_broad_pipelines.py \\
        PIPELINES_DIR OUT_DIR .cp-venv/bin/cellprofiler [PLUGINS_DIR]

It writes a small dye-named dataset as the cpg0032 screen names its channels (CP
``DAPI,GFP,A594,Cy5,750``; SBS ``DAPI,Cy3,A594,Cy5,Cy7``, 12 cycles, 2 sites of 64x64),
picks ``exp init --preset cp-dyes --preset sbs-dyes`` (so the CellProfiler names are
PCPIP's ``DNA, ER, Phalloidin, Mito, WGA`` and ``A, C, G, T``), materialises flat
illumination functions, corrected and aligned images, writes every step's LoadData
CSVs and runs each step's pipeline unchanged, printing ``cp run``'s summary per step.
Steps 7 and 9 need the CellProfiler-plugins modules (PLUGINS_DIR); without it they stop
before running with the missing-module line.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from starrynight import experiment, index, inventory, workspace
from starrynight.cellprofiler import loaddata as ld
from starrynight.imageio import write_tiff
from starrynight.index import normalise_channel

STEPS = {
    "illum_calc_cp": "1_CP_Illum", "illum_apply_cp": "2_CP_Apply_Illum",
    "segcheck_cp": "3_CP_SegmentationCheck", "illum_calc_sbs": "5_BC_Illum",
    "illum_apply_sbs": "6_BC_Apply_Illum", "preprocess_sbs": "7_BC_Preprocess",
    "analysis": "9_Analysis",
}  # fmt: skip
CP = ("DAPI", "GFP", "A594", "Cy5", "750")
SBS = ("DAPI", "Cy3", "A594", "Cy5", "Cy7")
N, CYCLES, SITES = 64, range(1, 13), (0, 1)


def make(out: Path) -> str:
    rng = np.random.default_rng(0)
    root = out / "ds" / "sample"
    images = root / "source_1" / "Batch1" / "images" / "Plate1"

    def noise(*shape: int) -> np.ndarray:
        return rng.integers(1000, 3000, shape, dtype=np.uint16)

    for site in SITES:
        stem = f"WellA1_PointA1_{site:04d}"
        name = f"{stem}_Channel{','.join(CP)}_Seq{site:04d}.ome.tiff"
        write_tiff(str(images / "20X_CP_Plate1" / name), noise(5, N, N))
        for k in CYCLES:
            name = f"{stem}_Channel{','.join(SBS)}_Seq{site:04d}.ome.tiff"
            write_tiff(str(images / f"10X_c{k}_SBS-{k}" / name), noise(5, N, N))
    ws = str(out / "ws")
    inventory.generate(str(root), ws, progress=False)
    index.generate(ws, ws)
    (out / "Barcodes.csv").write_text("sgRNA,gene_symbol\nACGTACGTACGT,G1\n")
    path = experiment.init(ws, ("cp-dyes", "sbs-dyes"))
    data = json.loads(Path(path).read_text())
    data["barcodes"] = str(out / "Barcodes.csv")
    Path(path).write_text(json.dumps(data))
    experiment.new(ws, path)
    flat = np.ones((N, N), np.float32)
    for c in map(normalise_channel, CP):
        Path(workspace.illum_dir(ws, "Plate1")).mkdir(parents=True, exist_ok=True)
        np.save(workspace.illum_path(ws, "Plate1", c), flat)
        for site in SITES:
            write_tiff(workspace.corrected_path(ws, "Plate1", "A1", site, c), noise(N, N))
    for c in map(normalise_channel, SBS):
        for k in CYCLES:
            np.save(workspace.illum_path(ws, "Plate1", c, k), flat)
            for site in SITES:
                write_tiff(workspace.aligned_path(ws, "Plate1", "A1", site, k, c), noise(N, N))
    for step in STEPS:
        print(ld.write_loaddata(ws, step).line(), flush=True)
    return ws


def main(pipelines: str, out: str, cellprofiler: str, plugins: str | None = None) -> None:
    ws = make(Path(out))
    for step, name in STEPS.items():
        pipe = str(Path(pipelines) / f"{name}.cppipe")
        argv = [sys.executable, "-m", "starrynight.cli", "cp", "run", "-w", ws, "--step", step,
                "-p", pipe, "--cellprofiler", cellprofiler]  # fmt: skip
        if plugins:
            argv += ["--plugins-directory", plugins]
        res = subprocess.run(argv, capture_output=True, text=True)
        print(f"== {step} ({name}): exit {res.returncode}", flush=True)
        print((res.stdout + res.stderr).strip(), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
