"""Screen results: filters, normalisation to controls, feature selection, hits.

A synthetic feature table with planted phenotypes gives a known answer: every planted
gene must be a hit at q < 0.05 and at most one other gene may be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from starrynight import workspace
from starrynight.algorithms import profiles as prof
from starrynight.cli.main import main
from starrynight.errors import UserError
from starrynight.modules.results import plate_profiles, screen_hits

PLANTED = ("G01", "G02", "G03", "G04", "G05")
N_FEATURES = 40


def _cells(
    plate: str, well: str, rng: np.random.Generator, control: str = "NTC", effect: float = 1.5
) -> pd.DataFrame:
    """~30 cells per guide: 4 control guides and 15 genes x 2 guides; 5 genes move."""
    guides = [(f"ntc{k}", control) for k in range(4)]
    guides += [(f"G{g:02d}_{k}", f"G{g:02d}") for g in range(1, 16) for k in range(2)]
    rows = []
    for sg, gene in guides:
        rows += [(sg, gene)] * int(rng.integers(25, 35))
    n = len(rows)
    meta = pd.DataFrame(rows, columns=["sgRNA", "gene_symbol"])
    # Correlated features around a plate-specific offset (normalisation must remove it).
    latent = rng.normal(size=(n, 8))
    x = latent @ rng.normal(size=(8, N_FEATURES)) + rng.normal(size=(n, N_FEATURES))
    x += 5.0 + 3.0 * (plate == "P2")
    for i, gene in enumerate(PLANTED):
        x[meta["gene_symbol"].to_numpy() == gene, 3 * i : 3 * i + 3] += effect
    table = pd.DataFrame(x, columns=[f"Cells_Intensity_F{j:02d}_DAPI" for j in range(N_FEATURES)])
    table["Cells_Intensity_Twin_DAPI"] = 2 * table.iloc[:, 10] + 0.01 * rng.normal(size=n)
    table["Cells_AreaShape_Center_X"] = rng.uniform(0, 500, n)
    table["Nuclei_Constant"] = 1.0
    table["Nuclei_AllNaN"] = np.nan
    out = pd.concat([meta, table], axis=1)
    out.insert(0, "cell", np.arange(1, n + 1, dtype=np.int32))
    out.insert(0, "site", np.zeros(n, np.int32))
    out.insert(0, "well", well)
    out.insert(0, "plate", plate)
    out["barcode"] = out["sgRNA"]
    out["field_edge"] = rng.random(n) < 0.05
    # 20 cells without a gene; 3 debris cells (every feature far off).
    extra = out.iloc[:23].copy()
    extra.loc[extra.index[:20], ["sgRNA", "gene_symbol", "barcode"]] = None
    extra.loc[extra.index[:23], "field_edge"] = False
    extra.iloc[20:, 6 : 6 + N_FEATURES] = 500.0
    return pd.concat([out, extra], ignore_index=True)


def _write(ws: Path, frame: pd.DataFrame) -> None:
    plate, well = frame["plate"].iloc[0], frame["well"].iloc[0]
    uri = workspace.cell_features_path(str(ws), plate, well)
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), uri)


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("results_ws")
    rng = np.random.default_rng(1)
    for plate in ("P1", "P2"):
        for well in ("A1", "A2"):
            _write(ws, _cells(plate, well, rng))
    return ws


def test_plate_profiles_filters_and_normalises(screen: Path) -> None:
    res = plate_profiles(str(screen), "P1")
    c = res.counts
    assert c.no_gene == 40 and c.outliers == 6 and c.field_edge > 0
    assert c.kept == c.total - c.no_gene - c.field_edge - c.well_edge - c.outliers
    assert "Nuclei_Constant" in res.unscalable and "Nuclei_AllNaN" in res.unscalable
    cells = pq.read_table(workspace.plate_cell_profiles_path(str(screen), "P1")).to_pandas()
    assert len(cells) == c.kept and cells["gene_symbol"].notna().all()
    ctrl = cells[cells["gene_symbol"] == "NTC"]["Cells_Intensity_F00_DAPI"]
    assert abs(ctrl.median()) < 0.05  # controls centred at 0
    report = json.loads(Path(workspace.plate_profiles_report_path(str(screen), "P1")).read_text())
    assert report["filters"]["outliers"] == 6 and report["control_label"] == "NTC"
    guides = pq.read_table(workspace.plate_guide_profiles_path(str(screen), "P1")).to_pandas()
    assert set(guides["well"]) == {"A1", "A2"} and guides["n_cells"].min() > 10


def test_normalisation_matches_pycytominer() -> None:
    from pycytominer import normalize

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(3, 2, size=(300, 4)), columns=[f"Cells_F{i}" for i in range(4)])
    df.insert(0, "Metadata_gene", np.where(np.arange(300) < 100, "NTC", "X"))
    expected = normalize(
        df, features=list(df.columns[1:]), meta_features=["Metadata_gene"],
        method="mad_robustize", samples="Metadata_gene == 'NTC'",
    )  # fmt: skip
    x = df.iloc[:, 1:].to_numpy(np.float64).copy()
    prof.normalize_to_controls(x, (df["Metadata_gene"] == "NTC").to_numpy(), block_rows=7)
    np.testing.assert_allclose(x, expected.iloc[:, 1:].to_numpy(), rtol=1e-9, atol=1e-9)


def test_planted_genes_are_the_hits(screen: Path) -> None:
    for plate in ("P1", "P2"):
        plate_profiles(str(screen), plate)
    res = screen_hits(str(screen), unit="guide", null_size=2000)
    hits = pq.read_table(workspace.screen_results_path(str(screen), "hits.parquet")).to_pandas()
    assert len(hits) == 15 and res.n_genes == 15
    called = set(hits.loc[hits["hit"], "gene_symbol"])
    assert set(PLANTED) <= called, hits[["gene_symbol", "mAP", "q_value"]]
    assert len(called - set(PLANTED)) <= 1
    assert (hits.loc[hits["hit"], "q_value"] < 0.05).all()
    row = hits.set_index("gene_symbol").loc["G01"]
    assert row["n_guides"] == 2 and row["n_cells"] > 100
    # The planted features (F00-F02 for G01) lead its top features.
    assert "Cells_Intensity_F0" in row["top_features"].split(";")[0]
    # Location, constant and all-NaN features never reach the profiles.
    report = json.loads(Path(workspace.screen_results_path(str(screen), "screen.json")).read_text())
    assert "Cells_AreaShape_Center_X" not in report["features"]
    assert "Nuclei_AllNaN" not in report["features"]
    twins = {"Cells_Intensity_Twin_DAPI", "Cells_Intensity_F10_DAPI"}
    assert len(twins & set(report["dropped"]["correlation_threshold"])) == 1
    csv = pd.read_csv(workspace.screen_results_path(str(screen), "hits.csv"))
    assert list(csv["gene_symbol"]) == list(hits["gene_symbol"])
    planted_consistency = hits.set_index("gene_symbol").loc[list(PLANTED), "guide_consistency"]
    assert (planted_consistency > 0.5).all()


def test_cell_unit_and_a_gene_with_one_cell(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    # Single cells are noisier than guide medians: a stronger phenotype.
    frame = _cells("P1", "A1", rng, effect=8.0)
    lone = frame.iloc[[0]].copy()
    lone[["sgRNA", "gene_symbol"]] = ("LONE_1", "LONE")
    _write(tmp_path, pd.concat([frame, lone], ignore_index=True))
    plate_profiles(str(tmp_path), "P1")
    screen_hits(str(tmp_path), unit="cell", null_size=1000, max_cells_per_gene=40)
    hits = pq.read_table(workspace.screen_results_path(str(tmp_path), "hits.parquet")).to_pandas()
    lone_row = hits.set_index("gene_symbol").loc["LONE"]
    assert lone_row["n_cells"] == 1 and np.isnan(lone_row["mAP"]) and not lone_row["hit"]
    assert "1 profile" in lone_row["activity_status"]
    assert set(PLANTED) <= set(hits.loc[hits["hit"], "gene_symbol"])


def test_plate_without_controls_names_plate_and_label(tmp_path: Path) -> None:
    _write(tmp_path, _cells("P9", "B3", np.random.default_rng(3), control="nontargeting"))
    with pytest.raises(UserError, match=r"plate 'P9'.*'NTC'.*--control-label"):
        plate_profiles(str(tmp_path), "P9")
    assert not Path(workspace.plate_profiles_report_path(str(tmp_path), "P9")).exists()
    # The label is configurable.
    res = plate_profiles(str(tmp_path), "P9", control_label="nontargeting")
    assert res.n_controls > 50 and res.status == "profiled"


def test_no_controls_allowed_is_reported_and_left_out(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    _write(tmp_path, _cells("P9", "B3", rng, control="nontargeting"))
    ws = str(tmp_path)
    main(["results", "profiles", "-w", ws, "--plate", "P9", "--allow-no-controls"])
    out = capsys.readouterr().out
    assert "P9: not profiled: plate 'P9': no cells of the non-targeting control 'NTC'" in out
    report = json.loads(Path(workspace.plate_profiles_report_path(ws, "P9")).read_text())
    assert report["status"] == "no_controls"
    assert not Path(workspace.plate_guide_profiles_path(ws, "P9")).exists()
    # The only plate lacks controls: an error without the flag, a report with it.
    with pytest.raises(UserError, match="'NTC'"):
        screen_hits(ws)
    res = screen_hits(ws, allow_no_controls=True)
    assert res.status == "no_usable_plates" and list(res.excluded) == ["P9"]
    # Naming that plate is a mistake; a second plate with controls is scored, P9 listed.
    with pytest.raises(UserError, match="leave plate 'P9' out"):
        screen_hits(ws, ["P9"])
    for well in ("A1", "A2"):
        _write(tmp_path, _cells("P1", well, rng))
        _write(tmp_path, _cells("P2", well, rng))
    for plate in ("P1", "P2"):
        plate_profiles(ws, plate)
    res = screen_hits(ws, null_size=500, allow_no_controls=True)
    assert res.status == "scored" and res.plates == ["P1", "P2"] and "P9" in res.excluded
    assert Path(workspace.screen_results_path(ws, "volcano.png")).read_bytes()[:4] == b"\x89PNG"


def test_reruns_skip_until_an_input_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    _write(tmp_path, _cells("P1", "A1", rng))
    ws = str(tmp_path)
    first = plate_profiles(ws, "P1")
    assert not first.skipped and plate_profiles(ws, "P1").skipped
    # A well analysed later (or again) makes the plate's profiles stale.
    _write(tmp_path, _cells("P1", "A2", rng))
    again = plate_profiles(ws, "P1")
    assert not again.skipped and again.counts.total > first.counts.total
    # Other parameters are another result, too.
    assert not plate_profiles(ws, "P1", outlier_z=8.0).skipped


def test_all_nan_features_are_a_clear_error(tmp_path: Path) -> None:
    frame = _cells("P1", "A1", np.random.default_rng(4))
    for c in frame.columns:
        if c.startswith(("Cells_", "Nuclei_")):
            frame[c] = np.nan
    _write(tmp_path, frame)
    with pytest.raises(UserError, match="no feature varies"):
        plate_profiles(str(tmp_path), "P1")
    # Allowed (what the Dagster asset asks): a report saying why, and no profiles.
    res = plate_profiles(str(tmp_path), "P1", allow_no_controls=True)
    assert res.status == "controls_unusable" and "no feature varies" in res.message
    assert not Path(workspace.plate_cell_profiles_path(str(tmp_path), "P1")).exists()


def test_cli_results(screen: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["results", "profiles", "-w", str(screen), "--plate", "P1"])
    out = capsys.readouterr().out
    assert "P1 (already done):" in out and "cells kept" in out
    main(["results", "hits", "-w", str(screen), "--null-size", "500", "--force"])
    out = capsys.readouterr().out
    assert "hit(s) at q < 0.05" in out and "hits.csv" in out
    with pytest.raises(SystemExit) as exc:
        main(["results", "hits", "-w", str(screen), "--plates", "NOPE", "--force"])
    assert exc.value.code == 2
    assert "NOPE" in capsys.readouterr().err
