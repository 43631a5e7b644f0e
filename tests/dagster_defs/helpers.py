"""Helpers for the Dagster tests: tiny sample datasets and project settings."""

from __future__ import annotations

import os
from pathlib import Path

from starrynight.sample import SampleSpec, generate


def make_sample(
    out: Path,
    plates: tuple[str, ...],
    wells: tuple[str, ...] = ("A1", "A2"),
    size: int = 128,
    sites: int = 2,
    cycles: int = 3,
) -> Path:
    """Generate a small sample dataset and return its dataset root."""
    spec = SampleSpec(
        plates=plates, wells=wells, sites=sites, cycles=cycles, size=size, workers=1, seed=1
    )
    return Path(generate(spec, out).dataset_root)


def age(root: Path, seconds: float = 3600) -> None:
    """Make every file below ``root`` look written ``seconds`` ago."""
    import time

    t = time.time() - seconds
    for p in root.rglob("*"):
        os.utime(p, (t, t))


def settings(dataset: Path | str, ws: Path | str, **kw) -> dict:
    s = {
        "dataset_uri": str(dataset),
        "workspace_uri": str(ws),
        "backend": "local",
        "backend_options": {"max_workers": 2, "poll_seconds": 0.2},
        "stable_seconds": 60.0,
    }
    s.update(kw)
    return s
