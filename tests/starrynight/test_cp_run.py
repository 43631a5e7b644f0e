"""``cp run``: pipeline checks, one node per CSV, per-unit failures and re-runs.

CellProfiler itself is replaced here by a test double (a script that records its argv
and writes one file); the real CellProfiler run is in ``test_cp_cellprofiler.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipecraft import Command, NodeState, RunStatus
from starrynight import workspace
from starrynight.cellprofiler import cppipe
from starrynight.cellprofiler import loaddata as ld
from starrynight.cellprofiler import run as cprun
from starrynight.cli.main import cli
from starrynight.errors import UserError
from tests.starrynight.test_cp_loaddata import make_workspace

DATA = Path(__file__).resolve().parents[1] / "data" / "cellprofiler"
PIPE = str(DATA / "measure_intensity.cppipe")

FAKE = """#!{python}
# Test double of the cellprofiler executable: records argv, writes one output file.
import csv, json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CP_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
data = args[args.index("--data-file") + 1]
out = args[args.index("-o") + 1]
fail = os.environ.get("FAKE_CP_FAIL")
if fail and fail in os.path.basename(data):
    print("fake cellprofiler: failing on purpose", file=sys.stderr)
    sys.exit(3)
rows = list(csv.DictReader(open(data)))
with open(os.path.join(out, "Image.csv"), "w") as f:
    f.write("ImageNumber,Metadata_Site\\n")
    for i, r in enumerate(rows, 1):
        f.write(f"{{i}},{{r['Metadata_Site']}}\\n")
"""


@pytest.fixture
def fake_cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    exe = tmp_path / "bin" / "cellprofiler"
    exe.parent.mkdir()
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_CP_LOG", str(log))
    monkeypatch.delenv("FAKE_CP_FAIL", raising=False)
    return str(exe), log


@pytest.fixture
def two_wells(tmp_path: Path) -> str:
    _, ws = make_workspace(tmp_path, wells=("A1", "A2"))
    ld.write_loaddata(ws, "illum_calc_cp", by=("plate", "well"))
    return ws


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_one_cellprofiler_per_csv_then_rerun_skips(two_wells: str, fake_cp) -> None:
    exe, log = fake_cp
    ws = two_wells
    report = cprun.run_pipeline(ws, "illum_calc_cp", PIPE, cellprofiler=exe, workers=2)
    assert report.status == RunStatus.SUCCEEDED
    assert [u.unit for u in report.units] == ["Plate1-A1", "Plate1-A2"]
    argvs = sorted(calls(log))
    assert len(argvs) == 2
    for unit, argv in zip(("Plate1-A1", "Plate1-A2"), argvs, strict=True):
        out = workspace.cellprofiler_output_dir(ws, "illum_calc_cp", unit)
        csv_uri = workspace.loaddata_path(ws, "illum_calc_cp", unit)
        folder = os.path.join(workspace.cellprofiler_dir(ws, "illum_calc_cp"), "_input")
        assert argv == ["-c", "-r", "-p", PIPE, "--data-file", csv_uri, "-i", folder, "-o", out]
        assert Path(out, "Image.csv").read_text().splitlines()[1:] == ["1,0", "2,1"]
    again = cprun.run_pipeline(ws, "illum_calc_cp", PIPE, cellprofiler=exe)
    assert set(again.states.values()) == {NodeState.SKIPPED}
    assert len(calls(log)) == 2


def test_a_failed_unit_fails_alone_and_is_rerun(
    two_wells: str, fake_cp, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe, log = fake_cp
    monkeypatch.setenv("FAKE_CP_FAIL", "Plate1-A2")
    report = cprun.run_pipeline(two_wells, "illum_calc_cp", PIPE, cellprofiler=exe)
    assert report.status == RunStatus.FAILED
    assert report.states["cp-illum_calc_cp-Plate1-A1"] == NodeState.SUCCEEDED
    assert report.states["cp-illum_calc_cp-Plate1-A2"] == NodeState.FAILED
    assert list(report.failures) == ["cp-illum_calc_cp-Plate1-A2"]
    monkeypatch.delenv("FAKE_CP_FAIL")
    rerun = cprun.run_pipeline(two_wells, "illum_calc_cp", PIPE, cellprofiler=exe)
    assert rerun.status == RunStatus.SUCCEEDED
    assert rerun.states["cp-illum_calc_cp-Plate1-A1"] == NodeState.SKIPPED
    assert rerun.states["cp-illum_calc_cp-Plate1-A2"] == NodeState.SUCCEEDED
    ran = sorted(Path(argv[5]).name for argv in calls(log))
    assert ran == ["Plate1-A1.csv", "Plate1-A2.csv", "Plate1-A2.csv"]


def test_cli_run_reports_units_and_exit_code(two_wells: str, fake_cp, monkeypatch) -> None:
    exe, _ = fake_cp
    args = ["cp", "run", "-w", two_wells, "--step", "illum_calc_cp", "-p", PIPE,
            "--cellprofiler", exe, "--plate", "Plate1"]  # fmt: skip
    monkeypatch.setenv("FAKE_CP_FAIL", "Plate1-A1")
    res = CliRunner().invoke(cli, args, standalone_mode=False)
    assert res.return_value == 1
    assert "cp run illum_calc_cp: failed" in res.output
    assert "Plate1-A1\tfailed" in res.output and "Plate1-A2\tsucceeded" in res.output


def write(tmp_path: Path, name: str, data: bytes | str) -> str:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def test_pipeline_checks(tmp_path: Path) -> None:
    info = cppipe.check_pipeline(PIPE)
    assert info.version == 5 and info.date_revision == 428
    assert info.modules == ("LoadData", "MeasureImageIntensity", "ExportToSpreadsheet")
    with pytest.raises(UserError, match="no such pipeline file"):
        cppipe.check_pipeline(str(tmp_path / "nope.cppipe"))
    with pytest.raises(UserError, match="not a CellProfiler pipeline"):
        cppipe.check_pipeline(write(tmp_path, "a.cppipe", "hello\nworld\n"))
    with pytest.raises(UserError, match="CellProfiler project"):
        cppipe.check_pipeline(write(tmp_path, "p.cpproj", b"\x89HDF\r\n\x1a\n\0\0"))
    with pytest.raises(UserError, match="no enabled LoadData module"):
        cppipe.check_pipeline(str(DATA / "no_loaddata.cppipe"))
    text = Path(PIPE).read_text()
    # CellProfiler runs a pipeline whose ModuleCount is off (several Broad files are so)
    truncated = text[: text.index("ExportToSpreadsheet:[")]
    info = cppipe.check_pipeline(write(tmp_path, "t.cppipe", truncated))
    assert info.modules == ("LoadData", "MeasureImageIntensity")
    assert info.warnings == (
        f"{tmp_path / 't.cppipe'}: header says ModuleCount:3 but 2 module(s) follow; "
        "CellProfiler runs the modules that are there",
    )
    with pytest.raises(UserError, match="Version"):
        cppipe.check_pipeline(write(tmp_path, "v.cppipe", text.replace("Version:5", "Version:x")))
    disabled = text.replace("variable_revision_number:6|show_window:False|notes:[]|batch_state:"
                            "array([], dtype=uint8)|enabled:True", "variable_revision_number:6|"
                            "show_window:False|notes:[]|batch_state:array([], dtype=uint8)|"
                            "enabled:False")  # fmt: skip
    assert disabled != text
    with pytest.raises(UserError, match="no enabled LoadData"):
        cppipe.check_pipeline(write(tmp_path, "d.cppipe", disabled))


def test_bad_inputs_fail_before_anything_runs(two_wells: str, fake_cp, tmp_path: Path) -> None:
    exe, log = fake_cp
    ws = two_wells
    with pytest.raises(UserError, match="no enabled LoadData"):
        cprun.run_pipeline(ws, "illum_calc_cp", str(DATA / "no_loaddata.cppipe"), cellprofiler=exe)
    with pytest.raises(UserError, match=r"no LoadData CSVs.*cp loaddata"):
        cprun.run_pipeline(ws, "segcheck_cp", PIPE, cellprofiler=exe)
    with pytest.raises(UserError, match="not found on PATH"):
        cprun.run_pipeline(ws, "illum_calc_cp", PIPE, cellprofiler="no-such-cellprofiler-exe")
    # a CSV naming a file that has gone: caught with the file named, nothing runs
    victim = next((tmp_path / "ds").rglob("WellA2_PointA2_0001_*PhalloAF750*"))
    victim.unlink()
    with pytest.raises(
        UserError, match=r"Plate1-A2.csv: names 1 missing file\(s\), e.g. .*A2_0001"
    ):
        cprun.run_pipeline(ws, "illum_calc_cp", PIPE, cellprofiler=exe)
    assert calls(log) == []
    # unless the CSVs were written for another machine's mount
    report = cprun.run_pipeline(ws, "illum_calc_cp", PIPE, cellprofiler=exe, check_files=False)
    assert report.status == RunStatus.SUCCEEDED


def test_csv_checks(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a LoadData CSV"):
        cprun.check_csv(write(tmp_path, "a.csv", "x,y\n1,2\n"))
    with pytest.raises(UserError, match="no PathName_OrigDNA column"):
        cprun.check_csv(write(tmp_path, "b.csv", "FileName_OrigDNA\nx.tif\n"))
    with pytest.raises(UserError, match="no rows"):
        cprun.check_csv(write(tmp_path, "c.csv", "FileName_OrigDNA,PathName_OrigDNA\n"))


def test_aws_batch_nodes_carry_the_cellprofiler_image() -> None:
    units = [
        cprun.CPUnit("P-A1", "s3://b/ws/loaddata/x/P-A1.csv", "s3://b/ws/cellprofiler/x/P-A1", 2)
    ]
    pipe = cprun.build_pipeline(
        "x", units, "s3://b/pipes/a.cppipe", "cellprofiler", "/plugins", image="cp:4.2.8"
    )
    node = pipe.root.body(units[0])
    assert isinstance(node, Command) and node.image == "cp:4.2.8"
    assert list(node.argv) == [
        "cellprofiler", "-c", "-r", "-p", "s3://b/pipes/a.cppipe", "--data-file",
        "s3://b/ws/loaddata/x/P-A1.csv", "-o", "s3://b/ws/cellprofiler/x/P-A1",
        "--plugins-directory", "/plugins",
    ]  # fmt: skip
    with pytest.raises(UserError, match="needs --job-queue and --image"):
        cprun.make_backend("aws_batch", "/tmp/x")


def test_local_backend_refuses_an_s3_workspace() -> None:
    with pytest.raises(UserError, match="use a local workspace or --backend aws_batch"):
        cprun.run_pipeline("s3://bucket/ws", "analysis", PIPE, backend="local")


def test_snakemake_backend_runs_the_same_units(two_wells: str, fake_cp, tmp_path: Path) -> None:
    exe, log = fake_cp
    report = cprun.run_pipeline(
        two_wells, "illum_calc_cp", PIPE, backend="snakemake", cellprofiler=exe,
        workdir=str(tmp_path / "smk"),
    )  # fmt: skip
    assert report.status == RunStatus.SUCCEEDED, report.failures
    assert len(calls(log)) == 2
    for u in report.units:
        assert Path(u.output, "Image.csv").is_file()
    assert os.path.isdir(tmp_path / "smk")
