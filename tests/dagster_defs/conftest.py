"""Fixtures of the Dagster tests: a persistent instance in tmp."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst
