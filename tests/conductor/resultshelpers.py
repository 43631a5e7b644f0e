"""A workspace holding a screen's results: synthetic per-well cells (5 planted genes, from
``tests.starrynight.test_results``), their profiles and hits, and corrected images for
the montage crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from starrynight import workspace
from starrynight.imageio import write_tiff
from starrynight.modules.results import plate_profiles, screen_hits
from tests.starrynight.test_results import _cells, _write

PLATES, WELLS, SIZE = ("P1", "P2"), ("A1", "A2"), 200


def make_results_workspace(ws: Path) -> Path:
    """Write the results workspace under ``ws``; return it."""
    rng = np.random.default_rng(1)
    for plate in PLATES:
        for well in WELLS:
            frame = _cells(plate, well, rng)
            frame["Nuclei_AreaShape_Center_X"] = rng.uniform(0, SIZE, len(frame))
            frame["Nuclei_AreaShape_Center_Y"] = rng.uniform(0, SIZE, len(frame))
            _write(ws, frame)
            for ch, level in (("DAPI", 3000), ("Phalloidin", 1000)):
                img = rng.poisson(level, (SIZE, SIZE)).astype(np.uint16)
                write_tiff(workspace.corrected_path(str(ws), plate, well, 0, ch), img)
    for plate in PLATES:
        plate_profiles(str(ws), plate)
    screen_hits(str(ws), null_size=2000)
    return ws
