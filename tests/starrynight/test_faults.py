"""Faults of the environment and damaged input: one ``error:`` line, exit 2, no traceback.

Each case runs the real console script in a subprocess. Tests run as root here, and root
writes through any permission bits; the read-only cases therefore run the CLI without
the capabilities that let root do so (``setpriv --bounding-set=-dac_override,...``):
the process stays uid 0 but the kernel checks permissions as for anyone else.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from starrynight.cli.main import main
from starrynight.sample import SampleSpec, generate

REPO = Path(__file__).resolve().parents[2]
#: Capabilities that let root ignore permission bits.
OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def _unprivileged() -> list[str]:
    """Prefix making a command subject to permission bits, as a normal user is."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("tests run as root need setpriv (util-linux) to test read-only folders")
    return [setpriv, f"--bounding-set={OVERRIDES}"]


def cli(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "starrynight.cli", *args]
    if unprivileged:
        argv = _unprivileged() + argv
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STARRYNIGHT_TRACEBACK", None)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line the user sees; fails unless it is exactly one ``error:`` line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def read_only(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            p = Path(folder, name)
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        p = Path(folder)
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(root: Path) -> None:
    for folder, _, files in os.walk(root):
        Path(folder).chmod(0o755)
        for name in files:
            Path(folder, name).chmod(0o644)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """A sample (1 plate, 2 wells, 1 site) indexed, with experiment and CP illumination."""
    tmp = tmp_path_factory.mktemp("faults")
    spec = SampleSpec(
        plates=("Plate1",), wells=("A1", "A2"), sites=1, cycles=3, size=80, workers=1, seed=2
    )
    root = Path(generate(spec, tmp / "gen").dataset_root)
    ws = tmp / "ws"
    main(["inventory", "gen", "-d", str(root), "-o", str(ws)])
    main(["index", "gen", "-i", str(ws), "-o", str(ws)])
    main(["exp", "init", "-w", str(ws)])
    main(["exp", "new", "-w", str(ws), "-i", str(ws / "experiment" / "experiment.init.json")])
    main(["illum", "calc", "-w", str(ws), "--plate", "Plate1", "--arm", "cp"])
    return root, ws


def cp_image(root: Path, well: str) -> Path:
    return next(root.glob(f"*/*/images/Plate1/20X_CP_*/Well{well}_*"))


def test_inventory_into_a_read_only_folder(tmp_path: Path, project) -> None:
    root, _ = project
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    line = one_error_line(
        cli("inventory", "gen", "-d", str(root), "-o", str(out), unprivileged=True)
    )
    assert line == (
        f"error: {out}/inventory/inventory.parquet: cannot write it (permission denied in {out})"
    )
    assert list(out.iterdir()) == []


def test_inventory_into_a_path_that_is_a_file(tmp_path: Path, project) -> None:
    root, _ = project
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for out in (afile, afile / "ws"):
        line = one_error_line(cli("inventory", "gen", "-d", str(root), "-o", str(out)))
        assert line == (
            f"error: {out}/inventory/inventory.parquet: cannot write it "
            f"({afile} is a file, expected a folder)"
        )
    assert afile.read_text() == "x"


def test_illum_apply_into_a_read_only_workspace(tmp_path: Path, project) -> None:
    _, ws = project
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    read_only(copy)
    try:
        proc = cli("illum", "apply", "-w", str(copy), "--plate", "Plate1", "--well", "A1",
                   unprivileged=True)  # fmt: skip
        line = one_error_line(proc)
    finally:
        writable(copy)
    assert line.startswith(f"error: {copy}/images_corrected/painting/Plate1-A1/Plate_Plate1_")
    assert line.endswith(f": cannot write it (permission denied in {copy})")
    assert not (copy / "images_corrected").exists()


def test_illum_apply_into_a_read_only_well_folder_leaves_no_temporary_file(
    tmp_path: Path, project
) -> None:
    _, ws = project
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    well = copy / "images_corrected" / "painting" / "Plate1-A1"
    well.mkdir(parents=True)
    well.chmod(0o555)
    try:
        proc = cli("illum", "apply", "-w", str(copy), "--plate", "Plate1", "--well", "A1",
                   unprivileged=True)  # fmt: skip
        line = one_error_line(proc)
    finally:
        well.chmod(0o755)
    assert line.endswith(f": cannot write it (permission denied in {well})")
    assert list(well.iterdir()) == []


def workspace_on(data: Path, ws: Path, copy: Path) -> Path:
    """A copy of the project's workspace (experiment, illumination) over ``data``."""
    shutil.copytree(ws, copy)
    main(["inventory", "gen", "-d", str(data), "-o", str(copy)])
    main(["index", "gen", "-i", str(copy), "-o", str(copy)])
    return copy


def test_site_file_that_is_a_dangling_symlink(tmp_path: Path, project) -> None:
    root, ws = project
    data = tmp_path / "data"
    shutil.copytree(root, data)
    copy = workspace_on(data, ws, tmp_path / "ws")
    # the site file becomes a link to a file that is gone (a moved share, a broken sync)
    site = cp_image(data, "A1")
    gone = tmp_path / "gone" / site.name
    site.unlink()
    site.symlink_to(gone)
    line = one_error_line(
        cli("illum", "apply", "-w", str(copy), "--plate", "Plate1", "--well", "A1")
    )
    assert line == f"error: {site}: dangling symbolic link (to {gone}, which does not exist)"
    # listing it again: the link is not a file, and the user is told so
    inv = cli("inventory", "gen", "-d", str(data), "-o", str(tmp_path / "ws2"))
    assert inv.returncode == 0, inv.stderr
    [warning] = inv.stderr.strip().splitlines()
    assert warning.startswith("warning: 1 dangling symbolic link(s) not inventoried")
    assert warning.endswith(str(site.relative_to(data)))


def test_truncated_tiff_gives_only_our_line(tmp_path: Path, project) -> None:
    root, ws = project
    data = tmp_path / "data"
    shutil.copytree(root, data)
    copy = workspace_on(data, ws, tmp_path / "ws")
    site = cp_image(data, "A2")
    raw = site.read_bytes()
    site.write_bytes(raw[: len(raw) // 2])
    line = one_error_line(
        cli("illum", "apply", "-w", str(copy), "--plate", "Plate1", "--well", "A2")
    )
    assert line.startswith(f"error: {site}: expected 3 channel frames, found ")
    assert "(damaged: " in line and "tifffile" not in line and "<" not in line
