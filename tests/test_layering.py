"""Imports only point down: conductor -> dagster_defs -> starrynight -> pipecraft."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["pipecraft", "starrynight", "dagster_defs", "conductor"]
# Third-party frameworks that belong to a higher layer only.
FORBIDDEN_EXTRA = {"pipecraft": {"dagster", "fastapi"}, "starrynight": {"dagster", "fastapi"}}


def imported_top_level(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    higher = set(ORDER[ORDER.index(package) + 1 :]) | FORBIDDEN_EXTRA.get(package, set())
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported_top_level(path) & higher):
            found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", ORDER[:-1])
def test_no_import_points_up(package):
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "mod.py"
    bad.write_text("import os\nfrom conductor.app import create_app\nimport dagster as dg\n")
    assert imported_top_level(bad) == {"os", "conductor", "dagster"}
