"""The site runner: expected sites, refusal on missing inputs, input fingerprints,
leftover temporary files, deterministic bad-input handling; and the per-well steps
after a real SIGKILL of their upstream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from starrynight import storage
from starrynight import workspace as wsp
from starrynight.errors import InputFileError, UserError
from starrynight.sample import SampleSpec, generate
from starrynight.siterunner import SiteTask, mark_well_done, run_sites, well_current


def _write(task: SiteTask) -> int:
    (src,) = task.inputs
    data = Path(src).read_bytes()
    for out in task.outputs:
        storage.write_bytes(out, data)
    if data == b"bad":
        raise InputFileError(src, "unreadable on purpose")
    return len(data)


def _tasks(tmp: Path, n: int) -> list[SiteTask]:
    tasks = []
    for s in range(n):
        src = tmp / "in" / f"{s}.txt"
        src.parent.mkdir(exist_ok=True)
        if not src.exists():
            src.write_bytes(b"x" * (s + 1))
        tasks.append(SiteTask(s, (str(src),), (str(tmp / "out" / f"{s}.txt"),)))
    return tasks


def test_current_sites_are_skipped_and_changed_inputs_recomputed(tmp_path: Path) -> None:
    manifest = str(tmp_path / "m.json")
    tasks = _tasks(tmp_path, 5)
    first = run_sites("copy", _write, tasks, manifest=manifest, load=lambda t: -1, workers=2)
    assert first.computed == [0, 1, 2, 3, 4] and first.current == []
    again = run_sites("copy", _write, tasks, manifest=manifest, load=lambda t: -1, workers=2)
    assert again.computed == [] and again.current == [0, 1, 2, 3, 4]
    # An input that changed (size or modification time) makes its site stale.
    Path(tasks[3].inputs[0]).write_bytes(b"changed!")
    third = run_sites("copy", _write, tasks, manifest=manifest, load=lambda t: -1, workers=2)
    assert third.computed == [3] and third.results[3] == len(b"changed!")
    forced = run_sites("copy", _write, tasks, manifest=manifest, workers=1, force=True)
    assert forced.computed == [0, 1, 2, 3, 4]


def test_missing_inputs_refuse_before_any_work(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path, 12)
    for s in (7, 8, 11):
        Path(tasks[s].inputs[0]).unlink()
    with pytest.raises(UserError, match=r"inputs missing for 3 of 12 site\(s\) \(7, 8, 11\)"):
        run_sites("copy", _write, tasks, manifest=str(tmp_path / "m.json"), missing_hint="x")
    assert not (tmp_path / "out").exists()


def test_the_well_mark_follows_sites_and_inputs(tmp_path: Path) -> None:
    manifest = str(tmp_path / "m.json")
    table = tmp_path / "table.parquet"
    table.write_bytes(b"t")
    tasks = _tasks(tmp_path, 4)
    run_sites("copy", _write, tasks, manifest=manifest, workers=1)
    assert not well_current(manifest, tasks, [str(table)])  # not marked yet
    mark_well_done(manifest, tasks)
    assert well_current(manifest, tasks, [str(table)])
    assert not well_current(manifest, tasks, [str(table)], force=True)
    # Sites the well did not have when it was marked: not current.
    assert not well_current(manifest, _tasks(tmp_path, 5), [str(table)])
    Path(tasks[0].inputs[0]).write_bytes(b"new content")
    assert not well_current(manifest, tasks, [str(table)])


def test_first_bad_site_in_site_order_decides_and_nothing_is_left(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path, 8)
    for s in (2, 5):
        Path(tasks[s].inputs[0]).write_bytes(b"bad")
    for _ in range(5):
        with pytest.raises(InputFileError, match=r"in/2\.txt"):
            run_sites("copy", _write, tasks, manifest=str(tmp_path / "m.json"), workers=2)
        assert not any((tmp_path / "out").glob("*.txt"))
    run = run_sites("copy", _write, tasks, manifest=str(tmp_path / "m.json"), skip_bad=True)
    assert [e.path for e in run.bad] == [tasks[2].inputs[0], tasks[5].inputs[0]]
    assert run.computed == [0, 1, 3, 4, 6, 7]


def test_dead_writers_temporary_files_are_removed(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    leftover = out / f".0.txt.{dead}-0123abcd.tmp.txt"
    live = out / f".1.txt.{os.getpid()}-4567cdef.tmp.txt"
    leftover.write_bytes(b"partial")
    live.write_bytes(b"being written")
    run_sites("copy", _write, tasks, manifest=str(tmp_path / "m.json"), workers=1)
    assert not leftover.exists() and live.exists()


def test_progress_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_sites("copy", _write, _tasks(tmp_path, 3), manifest=str(tmp_path / "m.json"),
              workers=1, progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "copy: 3/3 sites" in err and "sites/s" in err


# --------------------------------------------------------------------------- real steps

PLATE, WELL, SITES = "Plate1", "A1", 12


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "starrynight.cli", *args],
                         capture_output=True, text=True)  # fmt: skip
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-site well indexed, with its CP illumination functions (no well step run)."""
    out = tmp_path_factory.mktemp("killed")
    spec = SampleSpec(wells=(WELL,), sites=SITES, cycles=3, size=384, n_barcodes=8, workers=2)
    root = generate(spec, out).dataset_root
    ws = str(out / "ws")
    _cli("inventory", "gen", "-d", root, "-o", ws, "--no-progress")
    _cli("index", "gen", "-i", ws, "-o", ws)
    _cli("illum", "calc", "-w", ws, "--plate", PLATE, "--arm", "cp")
    return Path(ws)


def _corrected(ws: Path) -> list[Path]:
    return sorted(Path(wsp.corrected_dir(str(ws), PLATE, WELL)).glob("*.tiff"))


def _kill_apply_midway(ws: Path) -> int:
    """SIGKILL ``illum apply`` once it has written some but not all sites."""
    folder = Path(wsp.corrected_dir(str(ws), PLATE, WELL))
    argv = [sys.executable, "-m", "starrynight.cli", "illum", "apply", "-w", str(ws),
            "--plate", PLATE, "--well", WELL, "--workers", "1", "--force"]  # fmt: skip
    for _ in range(5):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not any(folder.glob("Plate_*.tiff")):
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n = len(_corrected(ws))
        if 0 < n < SITES * 3:
            return n
        shutil.rmtree(folder, ignore_errors=True)
    pytest.fail("illum apply always finished before the kill")


def test_segment_refuses_a_well_whose_correction_was_killed(prepared: Path) -> None:
    ws = prepared
    written = _kill_apply_midway(ws)
    res = _cli("segment", "-w", str(ws), "--plate", PLATE, "--well", WELL, check=False)
    assert res.returncode == 2, res.stderr
    assert "inputs missing for" in res.stderr and f"of {SITES} site(s)" in res.stderr
    assert "illum apply" in res.stderr and "Traceback" not in res.stderr
    assert not Path(wsp.segmentation_counts_path(str(ws), PLATE, WELL)).exists()
    # The upstream re-run completes what the kill left, then segment does every site.
    apply = _cli("illum", "apply", "-w", str(ws), "--plate", PLATE, "--well", WELL)
    assert "already complete" in apply.stdout
    assert len(_corrected(ws)) == SITES * 3 > written
    assert not list(Path(wsp.corrected_dir(str(ws), PLATE, WELL)).glob(".*tmp*"))
    seg = _cli("segment", "-w", str(ws), "--plate", PLATE, "--well", WELL)
    assert f"{SITES} site(s) ({SITES} computed" in seg.stdout
    # One corrected image replaced: only its site is segmented again.
    name = wsp.corrected_path(str(ws), PLATE, WELL, 5, "DAPI")
    image = tifffile.imread(name)
    tifffile.imwrite(name, np.roll(image, 3, axis=0))
    again = _cli("segment", "-w", str(ws), "--plate", PLATE, "--well", WELL)
    assert f"{SITES} site(s) (1 computed, {SITES - 1} already done)" in again.stdout
    manifest = json.loads(
        Path(wsp.site_manifest_path(str(ws), "segmentation", PLATE, WELL)).read_text()
    )
    assert sorted(map(int, manifest["sites"])) == list(range(SITES)) and manifest["well"]


def test_skip_bad_skips_only_the_odd_image_whatever_the_timing(
    prepared: Path, tmp_path: Path
) -> None:
    """One uint8 file among uint16 ones: the group's type is the majority's."""
    src = prepared
    ws = tmp_path / "ws"
    shutil.copytree(src, ws, ignore=shutil.ignore_patterns("images_corrected", "manifests"))
    from starrynight.index import dataset_root, image_uri, load_index

    keys = sorted(
        k for k, arm in zip(*load_index(str(ws)).select(["key", "arm"]).to_pydict().values(),
                            strict=True) if arm == "cp"
    )  # fmt: skip
    # The second site: read alongside the first one, so without a settled group type
    # whichever read finished first would decide (the race this guards against).
    odd = Path(image_uri(dataset_root(str(ws)), keys[1]))
    backup = tmp_path / "backup.tiff"
    shutil.copy(odd, backup)
    try:
        tifffile.imwrite(odd, (tifffile.imread(odd) // 256).astype(np.uint8))
        from starrynight.modules.illum import apply_illum

        for _ in range(12):
            res = apply_illum(str(ws), PLATE, WELL, force=True, skip_bad=True, workers=2)
            assert [path for path, _ in res.bad_files] == [str(odd)], res.bad_files
            assert res.sites_written == SITES - 1
    finally:
        shutil.copy(backup, odd)
