"""Shared by the tests that run the real CellProfiler 4.2.8 (headless, in its own venv).

CellProfiler pins Python 3.9-era dependencies, so it lives outside the project's venv;
``STARRYNIGHT_CELLPROFILER`` (or ``.cp-venv/bin/cellprofiler`` in the repository, where
``make test`` installs it, or ``/opt/cp-venv/bin/cellprofiler``, or ``cellprofiler`` on
PATH) names it. Tests are skipped when it is missing, except under CI (env ``CI`` set),
where a missing CellProfiler is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "tests" / "data" / "cellprofiler"


def find_cellprofiler() -> str | None:
    """The CellProfiler executable to test with, or ``None`` when there is none.

    Returns
    -------
    str or None
        ``STARRYNIGHT_CELLPROFILER``, the repository's ``.cp-venv``, ``/opt/cp-venv`` or
        ``cellprofiler`` on PATH, the first that is an executable file.
    """
    candidates = (
        os.environ.get("STARRYNIGHT_CELLPROFILER"),
        str(REPO / ".cp-venv" / "bin" / "cellprofiler"),  # where `make test` installs it
        "/opt/cp-venv/bin/cellprofiler",
    )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("cellprofiler")


CELLPROFILER = find_cellprofiler()

#: Module-level ``pytestmark`` of the CellProfiler tests: `make test` installs
#: CellProfiler, so only a developer's machine without it skips; in CI its absence must
#: fail the run (see :func:`require_cellprofiler`), not pass it silently.
requires_cellprofiler = pytest.mark.skipif(
    CELLPROFILER is None and not os.environ.get("CI"),
    reason="CellProfiler 4.2.8 not installed (make cellprofiler, or "
    "scripts/install_cellprofiler.sh; or set STARRYNIGHT_CELLPROFILER)",
)


def require_cellprofiler() -> str:
    """The CellProfiler executable; fails the test (CI) when there is none.

    Returns
    -------
    str
        Path or name of the executable.
    """
    assert CELLPROFILER is not None, "CellProfiler is not installed: run `make cellprofiler`"
    return CELLPROFILER


#: CellProfiler's own interpreter (next to the executable): runs the fixture scripts.
CP_PYTHON = str(Path(CELLPROFILER).parent / "python") if CELLPROFILER else None
#: The test double of the CallBarcodes plugin (see ``plugins/callbarcodes.py``).
PLUGINS = PIPELINES / "plugins"


def pipeline_needs(*pipelines: Path) -> dict[str, dict]:
    """What each pipeline reads from LoadData, as CellProfiler itself loads it.

    Returns
    -------
    dict
        Pipeline path -> ``{"images", "metadata", "load_errors"}`` (see
        ``tests/data/cellprofiler/pipeline_needs.py``).
    """
    assert CP_PYTHON is not None, "CellProfiler is not installed: run `make cellprofiler`"
    out = subprocess.run(
        [CP_PYTHON, str(PIPELINES / "pipeline_needs.py"), str(PLUGINS), *map(str, pipelines)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])
