"""LoadData CSVs: PCPIP column names, row keys, path joining, existence checks."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from starrynight import experiment, index, inventory, workspace
from starrynight.cellprofiler import loaddata as ld
from starrynight.cellprofiler.run import check_csv
from starrynight.cli.main import cli
from starrynight.errors import UserError
from starrynight.imageio import write_tiff

EXPECTED = Path(__file__).resolve().parents[1] / "data" / "cellprofiler" / "expected"
CP_CHANNELS = ("PhalloAF750", "ZO1-AF488", "DAPI")
SBS_CHANNELS = ("C", "A", "T", "G", "DAPI")
CYCLES = (1, 2)
SITES = (0, 1)


def cp_value(channel: int, site: int) -> int:
    """Constant pixel value of a CP test image: channel and site can be told apart."""
    return 1000 * (channel + 1) + 10 * site


def make_workspace(tmp: Path, wells: tuple[str, ...] = ("A1",)) -> tuple[str, str]:
    """A tiny Gallery-layout dataset (1 plate, 2 sites, 2 SBS cycles) indexed, with its
    experiment. Returns (dataset root, workspace)."""
    root = tmp / "ds" / "sample"
    images = root / "source_1" / "Batch1" / "images" / "Plate1"
    for well in wells:
        for site in SITES:
            stem = f"Well{well}_Point{well}_{site:04d}"
            cp = np.stack([np.full((8, 8), cp_value(c, site), np.uint16) for c in range(3)])
            name = f"{stem}_Channel{','.join(CP_CHANNELS)}_Seq{site:04d}.ome.tiff"
            write_tiff(str(images / "20X_CP_Plate1" / name), cp)
            for k in CYCLES:
                sbs = np.full((5, 8, 8), 100 * k, np.uint16)
                name = f"{stem}_Channel{','.join(SBS_CHANNELS)}_Seq{site:04d}.ome.tiff"
                write_tiff(str(images / f"10X_c{k}_SBS-{k}" / name), sbs)
    ws = str(tmp / "ws")
    inventory.generate(str(root), ws, progress=False)
    index.generate(ws, ws)
    experiment.new(ws, experiment.init(ws))
    return str(root), ws


def materialise(ws: str, steps: tuple[str, ...], wells: tuple[str, ...] = ("A1",)) -> None:
    """Empty placeholder files where illum calc / illum apply / align write."""
    paths = []
    norm = [index.normalise_channel(c) for c in CP_CHANNELS]
    sbs_norm = [index.normalise_channel(c) for c in SBS_CHANNELS]
    if "illum" in steps:
        paths += [workspace.illum_path(ws, "Plate1", n) for n in norm]
        paths += [workspace.illum_path(ws, "Plate1", n, k) for n in sbs_norm for k in CYCLES]
    for well in wells:
        for site in SITES:
            if "corr" in steps:
                paths += [workspace.corrected_path(ws, "Plate1", well, site, n) for n in norm]
            if "aligned" in steps:
                paths += [
                    workspace.aligned_path(ws, "Plate1", well, site, k, n)
                    for k in CYCLES
                    for n in sbs_norm
                ]
    for p in paths:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).write_bytes(b"")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root, ws = make_workspace(tmp_path_factory.mktemp("cp_tiny"))
    materialise(ws, ("illum", "corr", "aligned"))
    return root, ws


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def expected(name: str, root: str, ws: str) -> tuple[list[str], list[dict[str, str]]]:
    text = (EXPECTED / name).read_text()
    return read_csv(text.replace("{ROOT}", root).replace("{WS}", ws))


@pytest.mark.parametrize(
    ("step", "unit"),
    [
        ("illum_calc_cp", "Plate1"),
        ("illum_apply_cp", "Plate1-A1"),
        ("segcheck_cp", "Plate1-A1"),
        ("illum_calc_sbs", "Plate1"),
        ("preprocess_sbs", "Plate1-A1"),
    ],
)
def test_csv_matches_pcpip_expected(tiny: tuple[str, str], step: str, unit: str) -> None:
    root, ws = tiny
    result = ld.write_loaddata(ws, step)
    assert [c.unit for c in result.csvs] == [unit]
    got_cols, got_rows = read_csv(Path(result.csvs[0].uri).read_text())
    want_cols, want_rows = expected(f"{step}__{unit}.csv", root, ws)
    assert set(got_cols) == set(want_cols)
    assert got_cols[:4] == [
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Well_Value",
        "Metadata_Site",
    ]
    assert got_rows == want_rows


def test_sbs_wide_illum_apply_has_cycle_columns_and_unpadded_function_names(
    tiny: tuple[str, str],
) -> None:
    _, ws = tiny
    result = ld.write_loaddata(ws, "illum_apply_sbs")
    cols, rows = read_csv(Path(result.csvs[0].uri).read_text())
    names = {f"Cycle{k:02d}_{kind}{b}" for k in CYCLES for kind in ("Orig", "Illum")
             for b in ("A", "C", "G", "T", "DNA")}  # fmt: skip
    want = {f"Metadata_{m}" for m in ("Plate", "Well", "Well_Value", "Site", "Series")}
    want |= {f"{p}_{n}" for n in names for p in ("FileName", "PathName")}
    want |= {f"Frame_{n}" for n in names if "_Orig" in n}
    assert set(cols) == want
    assert [(r["Metadata_Well"], r["Metadata_Site"]) for r in rows] == [("A1", "0"), ("A1", "1")]
    row = rows[1]
    # PCPIP: SBS illumination functions are <plate>_Cycle<k>_Illum<Ch>.npy, k unpadded
    assert row["FileName_Cycle02_IllumA"] == "Plate1_Cycle2_IllumA.npy"
    assert row["PathName_Cycle02_IllumA"] == os.path.join(ws, "illum", "Plate1")
    assert row["Frame_Cycle02_OrigDNA"] == "4"  # DAPI is the 5th frame of C,A,T,G,DAPI
    assert row["Frame_Cycle01_OrigC"] == "0"
    assert row["PathName_Cycle02_OrigA"].endswith("/images/Plate1/10X_c2_SBS-2")
    assert (
        row["FileName_Cycle02_OrigA"] == "WellA1_PointA1_0001_ChannelC,A,T,G,DAPI_Seq0001.ome.tiff"
    )


def test_analysis_joins_corrected_cp_with_aligned_sbs_per_site(tiny: tuple[str, str]) -> None:
    _, ws = tiny
    result = ld.write_loaddata(ws, "analysis")
    cols, rows = read_csv(Path(result.csvs[0].uri).read_text())
    assert {"FileName_CorrDNA", "FileName_CorrPhalloidin", "FileName_Cycle01_DAPI"} <= set(cols)
    assert {"FileName_Cycle02_G", "PathName_Cycle02_T"} <= set(cols)
    assert "FileName_Cycle02_DAPI" not in cols  # PCPIP 9 loads cycle-1 nuclei only
    for row in rows:
        site = row["Metadata_Site"]
        assert row["FileName_CorrDNA"] == f"Plate_Plate1_Well_A1_Site_{site}_CorrDAPI.tiff"
        assert row["PathName_Cycle01_A"].endswith(f"Plate1-WellA1-{site}")


def test_every_csv_of_every_step_names_only_existing_files(tiny: tuple[str, str]) -> None:
    _, ws = tiny
    for step in ld.STEPS:
        result = ld.write_loaddata(ws, step)
        assert result.csvs, step
        for c in result.csvs:
            _, rows = read_csv(Path(c.uri).read_text())
            for row in rows:
                for col, value in row.items():
                    if col.startswith("FileName_"):
                        path = os.path.join(row["PathName_" + col[len("FileName_") :]], value)
                        assert os.path.isfile(path), (step, path)
            assert check_csv(c.uri) == c.rows


def test_grouping_by_site_and_by_cycle(tiny: tuple[str, str]) -> None:
    _, ws = tiny
    sites = ld.write_loaddata(ws, "segcheck_cp", by=("plate", "well", "site"))
    assert [(c.unit, c.rows) for c in sites.csvs] == [("Plate1-A1-0", 1), ("Plate1-A1-1", 1)]
    # the earlier per-well CSV of the same step is gone: cp run would redo the sites
    assert not Path(workspace.loaddata_path(ws, "segcheck_cp", "Plate1-A1")).exists()
    cycles = ld.write_loaddata(ws, "illum_calc_sbs", by=("plate", "cycle"))
    assert [(c.unit, c.rows) for c in cycles.csvs] == [("Plate1-Cycle01", 2), ("Plate1-Cycle02", 2)]
    _, rows = read_csv(Path(cycles.csvs[1].uri).read_text())
    assert {r["Metadata_SBSCycle"] for r in rows} == {"2"}


def test_path_masks_rewrite_roots_but_files_are_checked_where_they_are(
    tiny: tuple[str, str],
) -> None:
    _, ws = tiny
    result = ld.write_loaddata(
        ws, "illum_apply_cp", path_mask="/mnt/gallery/sample", workspace_mask="s3://bkt/ws"
    )
    _, rows = read_csv(Path(result.csvs[0].uri).read_text())
    assert (
        rows[0]["PathName_OrigDNA"]
        == "/mnt/gallery/sample/source_1/Batch1/images/Plate1/20X_CP_Plate1"
    )
    assert rows[0]["PathName_IllumDNA"] == "s3://bkt/ws/illum/Plate1"


def test_name_overrides_and_clashes(tiny: tuple[str, str]) -> None:
    _, ws = tiny
    names = ld.parse_name_overrides(["ZO1-AF488=ER"])
    result = ld.write_loaddata(ws, "illum_calc_cp", names=names)
    cols, _ = read_csv(Path(result.csvs[0].uri).read_text())
    assert "Frame_OrigER" in cols and "Frame_OrigZO1AF488" not in cols
    with pytest.raises(UserError, match="both get the CellProfiler name 'DNA'"):
        ld.write_loaddata(ws, "illum_calc_cp", names={"ZO1-AF488": "DNA"})
    with pytest.raises(UserError, match="'Nope': not a channel"):
        ld.write_loaddata(ws, "illum_calc_cp", names={"Nope": "X"})
    with pytest.raises(UserError, match="CHANNEL=NAME"):
        ld.parse_name_overrides(["ZO1-AF488"])


@pytest.mark.parametrize(
    ("step", "by", "message"),
    [
        ("segcheck_cp", ("well",), "must include plate"),
        ("segcheck_cp", ("plate", "site"), "site needs well"),
        ("illum_calc_cp", ("plate", "cycle"), "'cycle' is not a grouping of step illum_calc_cp"),
    ],
)
def test_bad_grouping_is_one_clear_error(
    tiny: tuple[str, str], step: str, by: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        ld.write_loaddata(tiny[1], step, by=by)


def test_inputs_not_materialised_are_named_before_anything_is_written(tmp_path: Path) -> None:
    _, ws = make_workspace(tmp_path)
    with pytest.raises(UserError) as err:
        ld.write_loaddata(ws, "illum_apply_cp")
    msg = str(err.value)
    assert "illumination function(s) not materialised yet" in msg
    assert "Plate1_Illum" in msg and "starrynight illum calc" in msg
    assert not Path(workspace.loaddata_dir(ws, "illum_apply_cp")).exists()
    materialise(ws, ("illum",))
    with pytest.raises(UserError, match=r"aligned SBS image\(s\) not materialised.*align"):
        ld.write_loaddata(ws, "preprocess_sbs")
    # a raw image deleted after indexing: the index is stale
    victim = next((tmp_path / "ds").rglob("*Seq0001.ome.tiff"))
    victim.unlink()
    with pytest.raises(UserError, match=r"raw image\(s\).*index is stale"):
        ld.write_loaddata(ws, "illum_calc_cp" if "CP" in victim.parent.name else "illum_calc_sbs")


def test_cli_loaddata_writes_and_reports_errors_in_one_line(tiny: tuple[str, str]) -> None:
    from starrynight.cli.main import main

    _, ws = tiny
    runner = CliRunner()
    ok = runner.invoke(cli, ["cp", "loaddata", "-w", ws, "--step", "illum_calc_cp"])
    assert ok.exit_code == 0, ok.output
    assert "wrote 1 LoadData CSV(s), 2 row(s)" in ok.output
    with pytest.raises(SystemExit) as exc:
        main(["cp", "loaddata", "-w", ws, "--step", "segcheck_cp", "--by", "well"])
    assert exc.value.code == 2


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "starrynight.cli", "cp", "loaddata", "-w", str(tmp_path),
         "--step", "analysis"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "experiment.json" in lines[0]


def test_aligned_nuclei_name_follows_a_name_override(tiny: tuple[str, str]) -> None:
    # PCPIP 7/9 read Cycle01_DAPI; nf-pooled-cellpainting's copies read Cycle01_DNA.
    _, ws = tiny
    units, _ = ld.build_units(ws, "preprocess_sbs")
    [rows] = units.values()
    assert "FileName_Cycle01_DAPI" in rows[0] and "FileName_Cycle01_DNA" not in rows[0]
    units, _ = ld.build_units(ws, "preprocess_sbs", names={"DAPI": "DNA"})
    [rows] = units.values()
    assert "FileName_Cycle01_DNA" in rows[0] and "FileName_Cycle01_DAPI" not in rows[0]
    assert rows[0]["FileName_Cycle01_DNA"] == "Plate_Plate1_Well_A1_Site_0_Cycle01_DAPI.tiff"
