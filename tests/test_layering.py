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


# --- No cycles inside a package ------------------------------------------------------------
#
# Every import counts, also those inside functions or under TYPE_CHECKING: an import moved
# into a function to dodge a cycle still makes one. Importing ``a.b.c`` from outside the
# package ``a.b`` also runs ``a/b/__init__.py``, so it counts as importing ``a.b`` too.

# No cycle is allowed (experiment <-> index, the last one, went with issue 14).
KNOWN_CYCLES: dict[str, list[set[str]]] = {}


def module_name(root: Path, path: Path) -> str:
    """Dotted name of the module at ``path`` (a package is named by its folder)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(root: Path, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the module at ``path`` imports."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                # The packages a target sits in run first, unless the importer is inside them.
                if prefix in modules and (prefix == target or not name.startswith(prefix + ".")):
                    found.add(prefix)
    found.discard(name)
    return found


def import_cycles(root: Path, package: str) -> list[set[str]]:
    """Groups of modules of ``package`` that import each other (strongly connected)."""
    paths = {module_name(root, p): p for p in sorted((root / package).rglob("*.py"))}
    edges = {m: module_imports(root, p, set(paths)) for m, p in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(group)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


@pytest.mark.parametrize("package", ORDER)
def test_no_import_cycle_inside_a_package(package):
    cycles = import_cycles(ROOT, package)
    unexpected = [sorted(c) for c in cycles if c not in KNOWN_CYCLES.get(package, [])]
    assert unexpected == []


def test_the_cycle_finder_catches_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")  # hidden in a function
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import x\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nx = 1\n")
    (pkg / "d.py").write_text("from pkg.sub import c\n")  # runs sub/__init__ too
    (pkg / "e.py").write_text("from pkg import d\n")
    assert import_cycles(tmp_path, "pkg") == [{"pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}]
    (pkg / "sub" / "c.py").write_text("import pkg.d\nx = 1\n")  # d -> sub -> c -> d
    assert import_cycles(tmp_path, "pkg") == [{"pkg.d", "pkg.sub", "pkg.sub.c"}]


# --- Conductor: pages and routers are siblings --------------------------------------------


def _conductor_imports(folder: str) -> dict[str, set[str]]:
    paths = {module_name(ROOT, p): p for p in sorted((ROOT / "conductor").rglob("*.py"))}
    return {
        m: module_imports(ROOT, p, set(paths))
        for m, p in paths.items()
        if m == f"conductor.{folder}" or m.startswith(f"conductor.{folder}.")
    }


@pytest.mark.parametrize(("folder", "other"), [("web", "api"), ("api", "web")])
def test_pages_and_routers_do_not_import_each_other(folder, other):
    """Canvas pages (conductor/web) and API routers (conductor/api) share services and
    ``conductor.deps``; neither imports the other nor the app that assembles them."""
    found = [
        f"{module} imports {target}"
        for module, targets in _conductor_imports(folder).items()
        for target in sorted(targets)
        if target in ("conductor.app", f"conductor.{other}")
        or target.startswith(f"conductor.{other}.")
    ]
    assert found == []
