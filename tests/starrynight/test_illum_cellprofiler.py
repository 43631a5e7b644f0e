"""``illum calc --preset cellprofiler`` against CellProfiler 4.2.8's own module.

The pipeline ``tests/data/cellprofiler/illum_calc.cppipe`` was written by CellProfiler
4.2.8's own classes with the legacy Broad ``1_CP_Illum`` settings: LoadData (our
``illum_calc_cp`` CSV, grouped by plate, intensities rescaled), then per channel
Resize x0.25 (bilinear) -> CorrectIlluminationCalculate (Regular, "All: Across cycles",
median filter of size 10, robust-minimum rescale) -> Resize x4 (bilinear), and
SaveImages of each function as ``<plate>_Illum<Name>.npy`` in the output folder.
Both run on the same sample images; each channel's functions must correlate at
>= 0.999 (issue 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from starrynight import experiment, index, workspace
from starrynight.cli.main import cli
from starrynight.sample import SampleSpec
from tests.starrynight.cellprofiler_helpers import (
    PIPELINES,
    require_cellprofiler,
    requires_cellprofiler,
)
from tests.starrynight.test_illum_module import make_workspace

PIPE = str(PIPELINES / "illum_calc.cppipe")
#: CellProfiler image name (``Illum<Name>`` in the pipeline) -> channel as written.
CHANNELS = {"DNA": "DAPI", "Phalloidin": "PhalloAF750", "ZO1AF488": "ZO1-AF488"}

pytestmark = requires_cellprofiler


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Pearson correlation and absolute / relative differences of two functions.

    Parameters
    ----------
    ours, theirs : numpy.ndarray
        Illumination functions of the same shape (``theirs`` is the reference).

    Returns
    -------
    dict
        ``corr``, ``max_abs``, ``max_rel`` and ``median_rel`` (relative to ``theirs``).
    """
    a = np.asarray(ours, np.float64).ravel()
    b = np.asarray(theirs, np.float64).ravel()
    diff = np.abs(a - b)
    rel = diff / np.abs(b)
    return {
        "corr": float(np.corrcoef(a, b)[0, 1]),
        "max_abs": float(diff.max()),
        "max_rel": float(rel.max()),
        "median_rel": float(np.median(rel)),
    }


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_cellprofiler_preset_matches_cellprofiler(tmp_path: Path) -> None:
    cellprofiler = require_cellprofiler()
    # 4 sites of 256 px (a multiple of 4: CellProfiler's x0.25 then x4 Resize only gets
    # back to the image's shape then). The whole test takes ~15 s, mostly the JVM.
    spec = SampleSpec(wells=("A1",), sites=4, cycles=0, size=256, n_barcodes=4, workers=1)
    ws, _ = make_workspace(tmp_path, spec)
    experiment.new(ws, experiment.init(ws))  # LoadData names channels from the experiment
    _invoke(["illum", "calc", "-w", ws, "--plate", "Plate1", "--preset", "cellprofiler"])
    _invoke(["cp", "loaddata", "-w", ws, "--step", "illum_calc_cp"])
    _invoke(["cp", "run", "-w", ws, "--step", "illum_calc_cp", "-p", PIPE,
             "--cellprofiler", cellprofiler])  # fmt: skip
    out = Path(workspace.cellprofiler_output_dir(ws, "illum_calc_cp", "Plate1"))
    for name, channel in CHANNELS.items():
        ours = np.load(workspace.illum_path(ws, "Plate1", index.normalise_channel(channel)))
        theirs = np.load(out / f"Plate1_Illum{name}.npy")
        assert ours.shape == theirs.shape, (channel, ours.shape, theirs.shape)
        stats = compare(ours, theirs)
        message = f"{channel}: " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items())
        assert stats["corr"] >= 0.999, message
        # Correlation ignores scale and offset: most pixels must agree to float precision
        # too (a uint16 truncation falling the other way moves a few by ~1/robust min).
        assert stats["median_rel"] <= 1e-5, message
        assert float(theirs.min()) == pytest.approx(1.0) and float(ours.min()) >= 1.0, message
