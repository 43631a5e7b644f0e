"""``index gen/show/query/check``: the index, rejects and completeness."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from starrynight import index, inventory, workspace
from starrynight.cli.main import _register, cli, main
from starrynight.errors import UserError
from starrynight.pathgrammar import INDEX_SCHEMA

CP = "20X_CP_P1_20240101_120000"


def build(root: Path, ws: Path, sites=2, cycles=(1, 2), drop=(), extra=()) -> Path:
    keys = []
    for w in ("A1", "A2"):
        for s in range(sites):
            keys.append(
                f"src/B1/images/P1/{CP}/Well{w}_Point{w}_{s:04d}_ChannelDAPI,ZO1-AF488_Seq{s}.tif"
            )
            for c in cycles:
                keys.append(
                    f"src/B1/images/P1/10X_c{c}_SBS-{c}/Well{w}_Point{w}_{s:04d}_ChannelA,C,G,T,DAPI_Seq{s}.tif"
                )
    keys = [k for k in keys if not any(d in k for d in drop)] + list(extra)
    keys.append("src/workspace/metadata/Barcodes.csv")
    for k in keys:
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_bytes(b"x")
    inventory.generate(str(root), str(ws))
    return ws


def test_generate_writes_index_and_rejects(tmp_path: Path) -> None:
    ws = build(tmp_path / "ds", tmp_path / "ws")
    summary = index.generate(str(ws), str(ws))
    assert summary.per_arm == {"cp": 4, "sbs": 8}
    assert (summary.plates, summary.wells, summary.rejects, summary.missing) == (1, 2, 1, 0)
    assert summary.line() == (
        "indexed 12 images (cp 4, sbs 8) in 1 plate(s), 2 well(s); "
        "rejected 1 (1 metadata file); missing 0 image(s)"
    )
    table = index.load_index(str(ws))
    assert table.schema.remove_metadata().equals(INDEX_SCHEMA)
    # the file itself carries the exact contract types for any parquet reader
    raw = pq.read_table(workspace.index_path(str(ws)))
    assert [f.type for f in raw.schema] == [f.type for f in INDEX_SCHEMA]
    assert raw.schema.metadata[b"starrynight.dataset_root"] == str(tmp_path / "ds").encode()
    assert index.dataset_root(str(ws)) == str(tmp_path / "ds")
    assert table.column("dataset").unique().to_pylist() == ["ds"]
    rejects = index.load_rejects(str(ws)).to_pylist()
    assert rejects == [{"key": "src/workspace/metadata/Barcodes.csv", "kind": "metadata",
                        "reason": "metadata file", "detail": ""}]  # fmt: skip
    key = table.column("key")[0].as_py()
    assert index.image_uri(index.dataset_root(str(ws)), key) == str(tmp_path / "ds" / key)


def test_completeness_reports_missing_images_and_channels(tmp_path: Path) -> None:
    bad_channels = ("src/B1/images/P1/10X_c2_SBS-2/WellA2_PointA2_0001_ChannelA,C,G,DAPI_Seq9.tif",)
    ws = build(
        tmp_path / "ds", tmp_path / "ws",
        drop=("10X_c2_SBS-2/WellA1_PointA1_0001", "10X_c2_SBS-2/WellA2_PointA2_0001"),
        extra=bad_channels,
    )  # fmt: skip
    summary = index.generate(str(ws), str(ws))
    assert summary.missing == 2
    missing = index.check(str(ws)).to_pylist()
    assert missing == [
        {"plate": "P1", "well": "A1", "site": 1, "arm": "sbs", "cycle": 2, "missing": ["image"]},
        {"plate": "P1", "well": "A2", "site": 1, "arm": "sbs", "cycle": 2, "missing": ["T"]},
    ]
    rows = {(r["well"], r["arm"], r["cycle"]): r for r in index.show(str(ws))}
    assert rows[("A1", "sbs", 2)]["sites"] == 1 and rows[("A1", "sbs", 2)]["missing"] == 1
    assert rows[("A1", "cp", 0)]["channels"] == "DAPI,ZO1-AF488"
    runner = CliRunner()
    _register()
    result = runner.invoke(cli, ["index", "check", str(ws)])
    assert result.exit_code == 1
    assert "A1    1     sbs  2      image" in result.output


def test_completeness_uses_the_experiment(tmp_path: Path) -> None:
    from starrynight.experiment import parse_experiment

    ws = build(tmp_path / "ds", tmp_path / "ws")
    index.generate(str(ws), str(ws))
    exp = parse_experiment(
        {"dataset": "ds", "sbs": {"cycles": [1, 2, 3], "channels": ["A", "C", "G", "T", "DAPI"],
                                  "roles": {"nuclei": "DAPI", "A": "A", "C": "C", "G": "G",
                                            "T": "T"}}},
        "test",
    )  # fmt: skip
    missing = index.completeness(index.load_index(str(ws)), exp).to_pylist()
    assert len(missing) == 4  # cycle 3 of every site of both wells
    assert {(m["cycle"], tuple(m["missing"])) for m in missing} == {(3, ("image",))}


def test_query(tmp_path: Path) -> None:
    ws = build(tmp_path / "ds", tmp_path / "ws")
    index.generate(str(ws), str(ws))
    cols, rows = index.query(str(ws), "select arm, count(*) as n from index group by 1 order by 1")
    assert cols == ["arm", "n"] and rows == [("cp", 4), ("sbs", 8)]
    assert index.query(str(ws), "select count(*) from rejects")[1] == [(1,)]
    with pytest.raises(UserError, match="query failed"):
        index.query(str(ws), "select nope from images")


def test_custom_grammar_via_cli(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    key = "lab/run1/P7/cycle03/B02-s5-DAPI+A.tif"
    (root / key).parent.mkdir(parents=True)
    (root / key).write_bytes(b"x")
    grammar = {
        "folder": r"^(?P<source>[^/]+)/(?P<batch>[^/]+)/(?P<plate>[^/]+)/(?P<plate_folder>[^/]+)$",
        "cp_folder": r"^painting$",
        "sbs_folder": r"^cycle(?P<cycle>[0-9]+)$",
        "file": r"^(?P<well>[A-P][0-9]{2})-s(?P<site>[0-9]+)-(?P<channels>[^_]+)\.tif$",
        "extensions": [".tif"],
        "channel_separator": "+",
    }
    (tmp_path / "g.json").write_text(json.dumps(grammar))
    ws = tmp_path / "ws"
    _register()
    runner = CliRunner()
    assert runner.invoke(cli, ["inventory", "gen", "-d", str(root), "-o", str(ws)]).exit_code == 0
    result = runner.invoke(cli, ["index", "gen", "-i", str(ws), "-o", str(ws), "-g",
                                 str(tmp_path / "g.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "indexed 1 images (sbs 1)" in result.output
    row = index.load_index(str(ws)).to_pylist()[0]
    assert (row["plate"], row["cycle"], row["well"], row["channels"]) == (
        "P7",
        3,
        "B02",
        ["DAPI", "A"],
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "gen", "-i", "{tmp}/nope.parquet", "-o", "{tmp}/ws"], "file not found"),
        (["index", "gen", "-i", "{tmp}/other.parquet", "-o", "{tmp}/ws"], "not a starrynight"),
        (["index", "show", "{tmp}/ws"], "no index"),
        (["index", "query", "{tmp}/ws", "select 1"], "no index"),
        (["index", "gen", "-i", "{tmp}", "-o", "{tmp}/ws"], "no inventory/inventory.parquet"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(tmp_path: Path, capsys, args: list, message: str) -> None:
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(SystemExit) as exc:
        main([a.format(tmp=tmp_path) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ws" / "index").exists()


def test_load_index_rejects_wrong_schema(tmp_path: Path) -> None:
    path = Path(workspace.index_path(str(tmp_path)))
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a"]}), path)
    with pytest.raises(UserError, match="not a starrynight index"):
        index.load_index(str(tmp_path))


def test_normalise_channel() -> None:
    assert index.normalise_channel("405 nm") == "405nm"
    assert index.normalise_channel("ZO1-AF488") == "ZO1AF488"
    assert index.normalise_channel("Cy5_b.2") == "Cy5_b2"


def test_sample_dataset_end_to_end(small_sample, tmp_path: Path) -> None:
    """inventory gen + index gen + exp init/new on the generated sample, via the CLI."""
    from starrynight.sample import SampleSpec

    spec = SampleSpec(size=256, wells=("A1", "B02"), sites=3, cycles=3, n_barcodes=12, seed=3)
    ws = str(tmp_path / "ws")
    _register()
    runner = CliRunner()
    result = runner.invoke(cli, ["inventory", "gen", "-d", small_sample.dataset_root, "-o", ws])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["index", "gen", "-i", ws, "-o", ws])
    assert result.exit_code == 0, result.output
    n_sites = len(spec.wells) * spec.sites
    assert (
        f"indexed {n_sites * (1 + spec.cycles)} images (cp {n_sites}, sbs {n_sites * spec.cycles})"
        in result.output
    )
    assert "rejected 1 (1 metadata file); missing 0 image(s)" in result.output
    table = index.load_index(ws)
    assert sorted(table.column("well").unique().to_pylist()) == sorted(spec.wells)
    assert sorted(table.column("cycle").unique().to_pylist()) == [0, 1, 2, 3]
    cp = [r for r in table.to_pylist() if r["arm"] == "cp"]
    assert {tuple(r["channels"]) for r in cp} == {tuple(spec.cp_channels)}
    result = runner.invoke(cli, ["exp", "init", "-w", ws])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli, ["exp", "new", "-w", ws, "-i", f"{ws}/experiment/experiment.init.json"]
    )
    assert result.exit_code == 0, result.output
    from starrynight.experiment import load_experiment

    exp = load_experiment(ws)
    assert exp.sbs is not None and exp.sbs.cycles == [1, 2, 3]
    assert exp.barcodes is not None and exp.barcodes.endswith("workspace/metadata/Barcodes.csv")
    result = runner.invoke(cli, ["index", "show", ws])
    assert result.exit_code == 0 and len(result.output.splitlines()) == 1 + len(spec.wells) * 4
