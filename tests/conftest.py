"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from starrynight.sample import SampleResult, SampleSpec, generate

SMALL_SPEC = SampleSpec(size=256, wells=("A1", "B02"), sites=3, cycles=3, n_barcodes=12, seed=3)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleResult:
    """A small sample dataset (1 plate, 2 wells, 3 sites, 3 cycles, 256 px), made once.

    Read-only: tests that write must copy it or use a workspace of their own.
    """
    out = tmp_path_factory.mktemp("small_sample")
    return generate(SMALL_SPEC, out)


@pytest.fixture
def repo_root() -> Path:
    """The repository's top folder."""
    return Path(__file__).resolve().parents[1]
