"""QC reports on a small generated screen, every step run through the CLI.

Plate1 has Cell Painting and SBS (2 wells x 2 sites, 3 cycles); Plate2's SBS folders are
removed before the inventory, so it is a plate whose SBS is missing, and only one of
its wells is segmented. A copy of the workspace has a well without cells or reads.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from starrynight import workspace
from starrynight.cli.main import cli, main
from starrynight.modules import qc
from starrynight.modules.barcodes import CELLS_SCHEMA, SPOTS_SCHEMA
from starrynight.modules.segment import COUNTS_SCHEMA, write_mask
from starrynight.sample import SampleSpec, generate

SPEC = SampleSpec(
    size=256, plates=("Plate1", "Plate2"), wells=("A1", "B02"), sites=2, cycles=3,
    n_barcodes=12, seed=3,
)  # fmt: skip
PLATE, NO_SBS = SPEC.plates


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"{' '.join(args)}:\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("qc")
    sample = generate(SPEC, out)
    plate2 = next(Path(sample.dataset_root).rglob(f"images/{NO_SBS}"))
    for folder in plate2.iterdir():
        if "SBS" in folder.name:
            shutil.rmtree(folder)
    ws = str(out / "ws")
    _invoke("inventory", "gen", "-d", sample.dataset_root, "-o", ws)
    _invoke("index", "gen", "-i", ws, "-o", ws)
    for plate in SPEC.plates:
        _invoke("illum", "calc", "-w", ws, "--plate", plate)
    for well in SPEC.wells:
        for step in (("illum", "apply"), ("align",), ("segment",), ("barcodes", "call")):
            _invoke(*step, "-w", ws, "--plate", PLATE, "--well", well)
    _invoke("illum", "apply", "-w", ws, "--plate", NO_SBS, "--well", "A1")
    _invoke("segment", "-w", ws, "--plate", NO_SBS, "--well", "A1")
    return {"ws": ws, "root": sample.dataset_root, "out": out}


def _index(ws: str, plate: str, gate: str) -> dict:
    return json.loads(Path(workspace.qc_index_path(ws, plate, gate)).read_text())


def _data(ws: str, plate: str, gate: str, name: str) -> pa.Table:
    return pq.read_table(workspace.qc_figure_path(ws, plate, gate, name, "parquet"))


def _check_files(ws: str, plate: str, gate: str, doc: dict) -> None:
    folder = Path(workspace.qc_report_dir(ws, plate, gate))
    for f in doc["figures"]:
        assert f["finding"] and f["title"]
        with Image.open(folder / f["png"]) as im:
            assert im.format == "PNG" and min(im.size) >= 150
        pq.read_table(folder / f["parquet"])  # readable
    assert not list(folder.glob(".*tmp*")), "temporary files left"


@pytest.fixture(scope="module")
def reports(screen: dict) -> dict:
    ws = screen["ws"]
    output = _invoke("qc", "report", "-w", ws, "--plate", PLATE, "--gate", "all")
    return {"output": output, **{g: _index(ws, PLATE, g) for g in qc.GATES}}


def test_painting_report_lists_its_figures_with_findings(screen: dict, reports: dict) -> None:
    ws, doc = screen["ws"], reports["painting"]
    assert doc["status"] == "complete" and doc["missing"] == []
    assert [f["name"] for f in doc["figures"]] == list(qc.FIGURES["painting"])
    _check_files(ws, PLATE, "painting", doc)
    assert "painting: complete, 4 figure(s)" in reports["output"]
    # The illumination data are the functions, downsampled.
    illum = _data(ws, PLATE, "painting", "illumination").to_pandas()
    assert set(illum["channel"]) == {"PhalloAF750", "ZO1AF488", "DAPI"}
    dapi = np.load(workspace.illum_path(ws, PLATE, "DAPI"))
    assert illum[illum.channel == "DAPI"]["value"].mean() == pytest.approx(dapi.mean(), rel=0.01)


def test_cells_per_site_come_from_the_segmentation_counts(screen: dict, reports: dict) -> None:
    ws = screen["ws"]
    table = _data(ws, PLATE, "painting", "cells_per_site").to_pandas()
    for well in SPEC.wells:
        counts = pq.read_table(workspace.segmentation_counts_path(ws, PLATE, well)).to_pandas()
        mine = table[table.well == well].set_index("site")
        assert mine.loc[counts.site, "n_cells"].tolist() == counts.n_cells.tolist()
    assert set(table.map_source) == {"grid"}
    figure = reports["painting"]["figures"][2]
    assert "square grid by site number" in figure["finding"]
    overlays = _data(ws, PLATE, "painting", "segmentation_overlays").to_pandas()
    assert len(overlays) == 4 and set(overlays.well) == set(SPEC.wells)
    assert (overlays.problem == "").all()


def test_barcoding_report_figures_match_the_tables(screen: dict, reports: dict) -> None:
    ws, doc = screen["ws"], reports["barcoding"]
    assert doc["status"] == "complete"
    assert [f["name"] for f in doc["figures"]] == list(qc.FIGURES["barcoding"])
    _check_files(ws, PLATE, "barcoding", doc)
    spots = pa.concat_tables(
        [pq.read_table(workspace.spots_path(ws, PLATE, w)) for w in SPEC.wells]
    ).to_pandas()
    # Expected frequencies: the first 3 bases of every sgRNA of Barcodes.csv.
    csv_path = next(Path(screen["root"]).rglob("Barcodes.csv"))
    prefixes = [
        r["sgRNA"][: SPEC.cycles] for r in csv.DictReader(io.StringIO(csv_path.read_text()))
    ]
    freq = _data(ws, PLATE, "barcoding", "nucleotide_frequency").to_pandas()
    for (cycle, base), row in freq.set_index(["cycle", "base"]).iterrows():
        want = sum(p[cycle - 1] == base for p in prefixes) / len(prefixes)
        read = (spots.read.str[cycle - 1] == base).mean()
        assert row.expected == pytest.approx(want) and row.observed == pytest.approx(read)
    rate = _data(ws, PLATE, "barcoding", "mapping_rate").to_pandas().set_index("well")
    for well in SPEC.wells:
        mine = pq.read_table(workspace.spots_path(ws, PLATE, well)).to_pandas()
        assert rate.loc[well, "read_mapping_rate"] == pytest.approx(
            (mine.match == "matched").mean()
        )
    per_cell = _data(ws, PLATE, "barcoding", "barcodes_per_cell").to_pandas()
    n_cells = sum(
        pq.read_table(workspace.cell_barcodes_path(ws, PLATE, w)).num_rows for w in SPEC.wells
    )
    assert per_cell.cells.sum() == n_cells
    align = _data(ws, PLATE, "barcoding", "alignment_cycles").to_pandas()
    assert len(align) == len(SPEC.wells) * SPEC.sites * SPEC.cycles


def test_plate_without_sbs_says_so_and_the_unsegmented_well_too(screen: dict) -> None:
    ws = screen["ws"]
    output = _invoke("qc", "report", "-w", ws, "--plate", NO_SBS)
    barcoding = _index(ws, NO_SBS, "barcoding")
    assert barcoding["status"] == "not_applicable"
    assert [f["name"] for f in barcoding["figures"]] == ["sbs_missing"]
    assert "no SBS images" in barcoding["figures"][0]["finding"]
    _check_files(ws, NO_SBS, "barcoding", barcoding)
    painting = _index(ws, NO_SBS, "painting")
    assert painting["status"] == "incomplete"
    assert workspace.segmentation_counts_path(ws, NO_SBS, "B02") in painting["missing"]
    cells = next(f for f in painting["figures"] if f["name"] == "cells_per_site")
    assert "B02 not segmented" in cells["finding"] and cells["attention"]
    _check_files(ws, NO_SBS, "painting", painting)
    assert f"{NO_SBS} barcoding: not_applicable" in output


def _empty_well(ws: str, well: str) -> None:
    """Make ``well`` a well where nothing was found: no cells, no spots, no reads."""
    counts = pq.read_table(workspace.segmentation_counts_path(ws, PLATE, well)).to_pydict()
    zero = {**counts, "n_nuclei": [0] * len(counts["site"]), "n_cells": [0] * len(counts["site"])}
    pq.write_table(pa.table(zero, schema=COUNTS_SCHEMA),
                   workspace.segmentation_counts_path(ws, PLATE, well))  # fmt: skip
    for site in zero["site"]:
        for obj in ("Nuclei", "Cells"):
            write_mask(
                workspace.segmentation_mask_path(ws, PLATE, well, site, obj),
                np.zeros((SPEC.size, SPEC.size), np.int32),
            )
    pq.write_table(SPOTS_SCHEMA.empty_table(), workspace.spots_path(ws, PLATE, well))
    pq.write_table(CELLS_SCHEMA.empty_table(), workspace.cell_barcodes_path(ws, PLATE, well))


def test_wells_without_cells_or_reads_are_drawn_as_such(screen: dict, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    _empty_well(ws, "B02")
    _invoke("qc", "report", "-w", ws, "--plate", PLATE)
    painting = {f["name"]: f for f in _index(ws, PLATE, "painting")["figures"]}
    assert "B02 has no cells" in painting["cells_per_site"]["finding"]
    barcoding = {f["name"]: f for f in _index(ws, PLATE, "barcoding")["figures"]}
    assert "no reads or not called: B02" in barcoding["mapping_rate"]["finding"]
    assert "B02 (no cells)" in barcoding["barcodes_per_cell"]["finding"]
    assert barcoding["barcodes_per_cell"]["attention"]
    rate = _data(ws, PLATE, "barcoding", "mapping_rate").to_pandas().set_index("well")
    assert rate.loc["B02", "n_reads"] == 0 and np.isnan(rate.loc["B02", "read_mapping_rate"])
    # Now every well is empty: every figure still renders, saying so.
    _empty_well(ws, "A1")
    _invoke("qc", "report", "-w", ws, "--plate", PLATE)
    for gate in qc.GATES:
        doc = _index(ws, PLATE, gate)
        _check_files(ws, PLATE, gate, doc)
    barcoding = {f["name"]: f for f in _index(ws, PLATE, "barcoding")["figures"]}
    assert barcoding["read_quality"]["finding"].startswith("no reads in any well")
    assert barcoding["top_barcodes"]["attention"]


def test_site_map_uses_geometry_positions_when_present(screen: dict, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    uri = workspace.positions_path(ws, PLATE, "A1", "cp")
    Path(uri).parent.mkdir(parents=True)
    positions = {
        "site": [1, 0], "x_um": [160.0, 0.0], "y_um": [0.0, 0.0],
        "width_px": [256, 256], "height_px": [256, 256],
        "pixel_size_x_um": [0.65, 0.65], "pixel_size_y_um": [0.65, 0.65],
    }  # fmt: skip
    pq.write_table(pa.table(positions), uri)
    qc.write_report(ws, PLATE, "painting")
    table = _data(ws, PLATE, "painting", "cells_per_site").to_pandas()
    a1 = table[table.well == "A1"].set_index("site")
    assert set(a1.map_source) == {"positions"}
    assert a1.loc[1, "map_x"] == 160.0 and a1.loc[0, "map_width"] == pytest.approx(166.4)
    assert set(table[table.well == "B02"].map_source) == {"grid"}
    finding = _index(ws, PLATE, "painting")["figures"][2]["finding"]
    assert "square grid by site number for 1 well(s)" in finding


def test_rerun_replaces_the_report_and_removes_stale_figures(screen: dict, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    first = qc.write_report(ws, PLATE, "painting")
    folder = Path(workspace.qc_report_dir(ws, PLATE, "painting"))
    doc = json.loads((folder / "index.json").read_text())
    doc["figures"].append({**doc["figures"][0], "name": "old", "png": "old.png",
                           "parquet": "old.parquet"})  # fmt: skip
    (folder / "index.json").write_text(json.dumps(doc))
    (folder / "old.png").write_bytes(b"x")
    (folder / "old.parquet").write_bytes(b"x")
    second = qc.write_report(ws, PLATE, "painting")
    assert not (folder / "old.png").exists() and not (folder / "old.parquet").exists()
    assert [f["name"] for f in second.figures] == [f["name"] for f in first.figures]
    assert [f["finding"] for f in second.figures] == [f["finding"] for f in first.figures]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plate", "Nope"], "--plate 'Nope': not in the index"),
        (["--plate", PLATE, "--report", "approval"], "Invalid value for '--report'"),
        (["--plate", PLATE, "--report", "merge", "--warn-match-rate", "0.4"],
         "--min-match-rate 0.5 / --warn-match-rate 0.4: expected 0 <= minimum <= warning"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(screen: dict, capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["qc", "report", "-w", screen["ws"], *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_index_is_a_user_error(tmp_path: Path) -> None:
    from starrynight.errors import UserError

    with pytest.raises(UserError, match="no index"):
        qc.write_report(str(tmp_path), PLATE, "painting")


def test_bad_cycle_is_the_position_of_single_mismatches(screen: dict, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    barcode = "ACG"

    def mutate(cycle: int) -> str:
        other = next(b for b in "ACGT" if b != barcode[cycle - 1])
        return barcode[: cycle - 1] + other + barcode[cycle:]

    reads = [barcode] * 10 + [mutate(2)] * 6 + [mutate(3)] * 2 + ["TTT"]
    n = len(reads)
    spots = {
        "site": [0] * n, "y": list(range(n)), "x": [5] * n, "sbs_cell": [1] * n, "read": reads,
        "quality": [0.9] * n, "barcode": [barcode] * (n - 1) + [None],
        "distance": [0] * 10 + [1] * 8 + [2], "match": ["matched"] * (n - 1) + ["none"],
    }  # fmt: skip
    pq.write_table(pa.table(spots, schema=SPOTS_SCHEMA), workspace.spots_path(ws, PLATE, "A1"))
    qc.write_report(ws, PLATE, "barcoding")
    table = _data(ws, PLATE, "barcoding", "match_and_bad_cycle").to_pandas()
    a1 = table[table.well == "A1"].set_index("cycle")
    assert a1.mismatches_at_cycle.tolist() == [0, 6, 2]
    assert a1.exact.iloc[0] == pytest.approx(10 / n)
    assert a1.within_one.iloc[0] == pytest.approx(18 / n)
    figures = {f["name"]: f for f in _index(ws, PLATE, "barcoding")["figures"]}
    assert "mismatches most often at cycle 2 (75%)" in figures["match_and_bad_cycle"]["finding"]


def test_an_unreadable_mask_is_named_in_its_panel(screen: dict, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    bad = workspace.segmentation_mask_path(ws, PLATE, "A1", 1, "Cells")
    Path(bad).write_bytes(b"not a tiff")
    report = qc.write_report(ws, PLATE, "painting", sample_sites=0)
    overlays = next(f for f in report.figures if f["name"] == "segmentation_overlays")
    assert "--sample-sites 0" in overlays["finding"]
    qc.write_report(ws, PLATE, "painting")
    table = _data(ws, PLATE, "painting", "segmentation_overlays").to_pandas().set_index("site")
    a1 = table[table.well == "A1"]
    assert bad in a1.loc[1, "problem"] and a1.loc[0, "problem"] == ""


def test_gate_cli_approves_closes_lists_and_refuses(screen: dict, capsys, tmp_path: Path) -> None:
    from starrynight import gates

    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    shutil.rmtree(Path(ws) / "qc_reports", ignore_errors=True)
    for args, message in [
        (["--plate", "Nope", "--gate", "painting"], "plate 'Nope': not in the index"),
        (["--plate", PLATE, "--gate", "painting"], "no painting QC report yet"),
        (["--plate", PLATE, "--gate", "merge"], "Invalid value for '--gate'"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["qc", "approve", "-w", ws, *args, "--by", "ada"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 or "Usage" in err
    _invoke("qc", "report", "-w", ws, "--plate", PLATE, "--gate", "painting")
    out = _invoke("qc", "approve", "-w", ws, "--plate", PLATE, "--gate", "painting",
                  "--by", "ada", "--comment", "fine")  # fmt: skip
    assert f"{PLATE} painting: approved by ada" in out
    _invoke("qc", "close", "-w", ws, "--plate", PLATE, "--gate", "painting", "--by", "bob")
    state = gates.read_gate(ws, PLATE, "painting")
    assert state.state == "closed" and [d.by for d in state.history] == ["ada", "bob"]
    assert state.history[0].comment == "fine"
    listing = _invoke("qc", "gates", "-w", ws).splitlines()
    mine = next(line for line in listing if line.startswith(PLATE) and "painting" in line)
    assert "closed" in mine and "yes" in mine and "bob" in mine
    other = next(line for line in listing if line.startswith(NO_SBS) and "barcoding" in line)
    assert "undecided" in other and " no " in other


# --------------------------------------------------------------------------- after the merge


def _merge_outputs(
    ws: str,
    well: str,
    status: str = "registered",
    distances: tuple[float, ...] = (),
    inside: int = 0,
    outside: int = 0,
    rms: float = 0.3,
    flags: tuple[str, ...] = (),
) -> None:
    """A well's merge outputs as ``starrynight merge`` writes them (the fields read)."""
    matched = len(distances)
    status_of = (["matched"] * matched + ["no SBS cell within reach"] * (inside - matched)
                 + ["outside the SBS area"] * outside)  # fmt: skip
    if status != "registered":
        status_of = ["not registered"] * (inside + outside)
    folder = Path(workspace.merge_dir(ws, PLATE, well))
    folder.mkdir(parents=True, exist_ok=True)
    dist = [*distances, *[None] * (len(status_of) - matched)]
    pq.write_table(
        pa.table({"status": pa.array(status_of, pa.string()),
                  "sbs_distance_um": pa.array(dist, pa.float64())}),
        workspace.merge_cells_path(ws, PLATE, well),
    )  # fmt: skip
    registered = status == "registered"
    counts = {s: status_of.count(s) for s in set(status_of)}
    report = {
        "plate": PLATE, "well": well, "status": status, "flags": list(flags),
        "reason": "" if registered else "12 CP and 9 SBS nuclei: fewer than 20",
        "cp": {"cells": len(status_of)},
        "transform": {"scale_px": 1.99, "rotation_deg": 0.1} if registered else None,
        "registration": {
            "pairs": 50, "inliers": 45 if registered else 0,
            "inlier_share": 0.9 if registered else None,
            "residual_um": {
                "rms": rms if registered else None, "median": rms * 0.8 if registered else None,
                "p95": rms * 2 if registered else None, "max": rms * 3 if registered else None,
                "histogram": {"edges": np.linspace(0, 2.5, 11).tolist(),
                              "counts": [5, 20, 10, 5, 3, 1, 1, 0, 0, 0]},
            },
        },
        "match": {
            "inside_sbs_area": inside if registered else 0, "matched": matched,
            "match_rate": matched / inside if registered and inside else None,
            "with_barcode": matched, "statuses": counts, "reach_um": 5.0,
        },
        "params": {"reach_um": 5.0,
                   "register": {"max_residual_um": 1.5, "min_inlier_share": 0.5}},
    }  # fmt: skip
    Path(workspace.merge_report_path(ws, PLATE, well)).write_text(json.dumps(report))


def _different_grids(ws: str, well: str) -> None:
    """CP and SBS positions on different site grids (so a failed registration matters)."""
    for arm, cycle, sites, px in (("cp", None, [0, 1], 0.65), ("sbs", 1, [0], 1.3)):
        uri = workspace.positions_path(ws, PLATE, well, arm, cycle)
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"site": sites, "pixel_size_x_um": [px] * len(sites)}), uri)


def _texts(figure: qc.Figure) -> str:
    """Every text drawn in a figure (titles, labels, notes), to assert what it says."""
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in figure.figure.findobj(Text))


def test_merge_report_before_the_merge_says_so(screen: dict) -> None:
    ws = screen["ws"]
    rep = qc.write_report(ws, PLATE, "merge")
    doc = _index(ws, PLATE, "merge")
    assert rep.status == doc["status"] == "incomplete"
    assert [f["name"] for f in doc["figures"]] == list(qc.FIGURES["merge"])
    assert {workspace.merge_report_path(ws, PLATE, w) for w in SPEC.wells} <= set(doc["missing"])
    figures = {f["name"]: f for f in doc["figures"]}
    assert "A1 (not merged yet)" in figures["match_rate"]["finding"]
    assert figures["match_rate"]["attention"]
    assert "no matched cell in any well" in figures["match_distance"]["finding"]
    _check_files(ws, PLATE, "merge", doc)
    # a plate without SBS has nothing to merge: it says so
    no_sbs = qc.write_report(ws, NO_SBS, "merge")
    assert no_sbs.status == "not_applicable"
    assert [f["name"] for f in no_sbs.figures] == ["merge_not_applicable"]
    assert "no SBS images" in no_sbs.figures[0]["finding"]


def test_merge_report_rates_distances_and_residuals(screen: dict, tmp_path: Path) -> None:
    from starrynight.modules.qc_merge import merge_figures

    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    distances = tuple(np.linspace(0.2, 2.0, 70))
    _merge_outputs(ws, "A1", distances=distances, inside=100, outside=30, rms=0.4)
    _merge_outputs(ws, "B02", inside=0, outside=0)  # a well without cells
    out = _invoke("qc", "report", "-w", ws, "--plate", PLATE, "--report", "merge",
                  "--warn-match-rate", "0.9", "--min-match-rate", "0.6")  # fmt: skip
    assert f"{PLATE} merge: complete, 4 figure(s)" in out
    doc = _index(ws, PLATE, "merge")
    _check_files(ws, PLATE, "merge", doc)
    figures = {f["name"]: f for f in doc["figures"]}
    rate = _data(ws, PLATE, "merge", "match_rate").to_pandas().set_index("well")
    assert rate.loc["A1", "match_rate"] == pytest.approx(0.7)
    assert rate.loc["A1", ["inside_sbs_area", "matched", "outside_sbs_area"]].tolist() == [
        100,
        70,
        30,
    ]
    assert rate.loc["A1", "level"] == "warn" and rate.loc["A1", "warn_rate"] == 0.9
    assert rate.loc["A1", "median_distance_um"] == pytest.approx(np.median(distances))
    assert rate.loc["B02", "level"] == "none" and rate.loc["B02", "cells"] == 0
    assert (
        "lowest match rate: A1 70% (70 of 100); 1 well(s) below 90%, 0 below 60%"
        in (figures["match_rate"]["finding"])
    )
    assert "B02 (no cells)" in figures["match_rate"]["finding"]
    assert figures["match_rate"]["attention"]
    hist = _data(ws, PLATE, "merge", "match_distance").to_pandas()
    assert hist.groupby("well")["cells"].sum().to_dict() == {"A1": 70, "B02": 0}
    assert hist.bin_high_um.max() == 5.0  # up to the reach
    residual = _data(ws, PLATE, "merge", "registration_residual").to_pandas().set_index("well")
    assert residual.loc["A1", "rms_um"] == 0.4 and residual.loc["A1", "max_residual_um"] == 1.5
    assert (
        "largest RMS residual: A1 0.40 um (flagged above 1.5 um)"
        in (figures["registration_residual"]["finding"])
    )
    pairs = _data(ws, PLATE, "merge", "residual_distribution").to_pandas()
    assert pairs.groupby("well")["pairs"].sum().to_dict() == {"A1": 45, "B02": 45}
    # the pictures say it: thresholds drawn, the empty well named where its bar would be
    layout = qc.plate_layout(ws, PLATE)
    drawn = {f.name: _texts(f) for f in merge_figures(ws, layout, [], 0.9, 0.6)[0]}
    assert "warning below 90%" in drawn["match_rate"] and "error below 60%" in drawn["match_rate"]
    assert "no cells" in drawn["match_rate"] and "reach 5 um" in drawn["match_distance"]
    assert "flagged above" in drawn["registration_residual"]


def test_merge_report_not_registered_and_below_minimum(screen: dict, tmp_path: Path) -> None:
    from starrynight.modules.qc_merge import merge_figures

    ws = str(tmp_path / "ws")
    shutil.copytree(screen["ws"], ws)
    _merge_outputs(ws, "A1", distances=(0.5,) * 40, inside=100, rms=1.8, flags=("residual_high",))
    _merge_outputs(ws, "B02", status="not registered", inside=20)
    _different_grids(ws, "B02")
    qc.write_report(ws, PLATE, "merge")
    figures = {f["name"]: f for f in _index(ws, PLATE, "merge")["figures"]}
    rate = _data(ws, PLATE, "merge", "match_rate").to_pandas().set_index("well")
    assert rate.loc["A1", "level"] == "error" and rate.loc["A1", "min_rate"] == 0.5
    assert (
        rate.loc["B02", "merge_status"] == "not registered" and not rate.loc["B02", "shared_grid"]
    )
    assert "fewer than 20" in rate.loc["B02", "reason"]
    assert "0 well(s) below 80%, 1 below 50%" in figures["match_rate"]["finding"]
    assert "flagged: A1 (residual_high)" in figures["registration_residual"]["finding"]
    assert figures["registration_residual"]["attention"]
    assert "not registered or not merged: B02" in figures["residual_distribution"]["finding"]
    drawn = {f.name: _texts(f) for f in merge_figures(ws, qc.plate_layout(ws, PLATE), [])[0]}
    assert "not registered" in drawn["match_rate"]
    assert "not registered" in drawn["registration_residual"]
    # arms sharing one site grid: not registered is how the per-cell table pairs sites
    # by number, not a failure to look at (the merge checks do not apply either)
    shutil.rmtree(workspace.geometry_dir(ws, PLATE, "B02"))
    _merge_outputs(ws, "A1", distances=(0.5,) * 95, inside=100)
    qc.write_report(ws, PLATE, "merge")
    figures = {f["name"]: f for f in _index(ws, PLATE, "merge")["figures"]}
    assert "B02 (one site grid: paired by site)" in figures["match_rate"]["finding"]
    assert not figures["match_rate"]["attention"]
