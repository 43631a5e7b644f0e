"""``cp run`` end to end with the real CellProfiler 4.2.8 (headless, its own venv).

See :mod:`tests.starrynight.cellprofiler_helpers` for where CellProfiler is looked up
and when the test is skipped. The pipeline is
``tests/data/cellprofiler/measure_intensity.cppipe`` (LoadData -> MeasureImageIntensity
of OrigDNA and OrigPhalloidin -> ExportToSpreadsheet).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from starrynight import workspace
from starrynight.cellprofiler import loaddata as ld
from starrynight.cellprofiler import run as cprun
from starrynight.imageio import read_image
from tests.starrynight.cellprofiler_helpers import (
    PIPELINES,
    require_cellprofiler,
    requires_cellprofiler,
)
from tests.starrynight.test_cp_loaddata import make_workspace

PIPE = str(PIPELINES / "measure_intensity.cppipe")

pytestmark = requires_cellprofiler


def test_cellprofiler_measures_the_same_means_as_we_read(tmp_path: Path) -> None:
    cellprofiler = require_cellprofiler()
    _, ws = make_workspace(tmp_path)
    ld.write_loaddata(ws, "illum_calc_cp")
    report = cprun.run_pipeline(ws, "illum_calc_cp", PIPE, cellprofiler=cellprofiler)
    assert report.status.value == "succeeded", report.failures
    out = Path(workspace.cellprofiler_output_dir(ws, "illum_calc_cp", "Plate1"))
    rows = list(csv.DictReader((out / "MyExpt_Image.csv").open()))
    assert [r["Metadata_Site"] for r in rows] == ["0", "1"]
    for r in rows:
        ours = read_image(os.path.join(r["PathName_OrigDNA"], r["FileName_OrigDNA"]))
        # DAPI is frame 2, PhalloAF750 frame 0: a wrong Frame_ column gives another value.
        # CellProfiler scales uint16 to [0, 1] by 65535.
        for name, frame in (("OrigDNA", 2), ("OrigPhalloidin", 0)):
            measured = float(r[f"Intensity_MeanIntensity_{name}"])
            assert measured == pytest.approx(ours[frame].mean() / 65535, rel=1e-6)
