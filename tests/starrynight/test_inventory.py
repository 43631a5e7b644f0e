"""``inventory gen``: every file listed, atomically, and per plate on demand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from starrynight import inventory, workspace
from starrynight.cli.main import main
from starrynight.errors import UserError


def make_dataset(root: Path, plates=("P1", "P2"), wells=("A1", "A2")) -> list[str]:
    keys = []
    for p in plates:
        for w in wells:
            keys.append(f"src/B1/images/{p}/20X_CP_{p}/Well{w}_Point{w}_0000_ChannelDAPI_Seq0.tif")
            keys.append(
                f"src/B1/images/{p}/10X_c1_SBS-1/Well{w}_Point{w}_0000_ChannelA,C,G,T_Seq0.tif"
            )
    keys.append("src/workspace/metadata/Barcodes.csv")
    for k in keys:
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_bytes(b"x" * 10)
    return keys


def test_generate_lists_every_file(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    keys = make_dataset(ds)
    summary = inventory.generate(str(ds), str(tmp_path / "ws"), batch_size=3)
    assert summary.files == len(keys) and summary.bytes == 10 * len(keys)
    table = inventory.load_inventory(str(tmp_path / "ws"))
    assert sorted(table.column("key").to_pylist()) == sorted(keys)
    assert table.schema.field("mtime").type == pa.timestamp("ns")
    assert inventory.dataset_root_of(table) == str(ds)
    folders = table.column("folder").to_pylist()
    names = table.column("name").to_pylist()
    assert [f"{f}/{n}" for f, n in zip(folders, names, strict=True)] == table.column(
        "key"
    ).to_pylist()


def test_rerun_replaces_output(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    keys = make_dataset(ds)
    ws = str(tmp_path / "ws")
    inventory.generate(str(ds), ws)
    (ds / keys[0]).unlink()
    assert inventory.generate(str(ds), ws).files == len(keys) - 1
    assert inventory.load_inventory(ws).num_rows == len(keys) - 1
    assert sorted(p.name for p in (tmp_path / "ws" / "inventory").iterdir()) == [
        "inventory.parquet"
    ]


def test_plate_limited_inventory_merges(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    keys = make_dataset(ds, plates=("P1",))
    ws = str(tmp_path / "ws")
    inventory.generate(str(ds), ws)
    new = make_dataset(ds, plates=("P2",), wells=("B1",))
    summary = inventory.generate(str(ds), ws, plate="P2")
    assert summary.replaced_plate_rows == 0
    got = set(inventory.load_inventory(ws).column("key").to_pylist())
    assert got == set(keys) | set(new)
    # Re-listing a plate replaces its rows (a file removed from P1 disappears).
    (ds / keys[0]).unlink()
    summary = inventory.generate(str(ds), ws, plate="P1")
    assert summary.replaced_plate_rows == 4
    got = set(inventory.load_inventory(ws).column("key").to_pylist())
    assert got == (set(keys) | set(new)) - {keys[0]}


def test_plate_limited_errors(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    make_dataset(ds)
    with pytest.raises(UserError, match="plate 'P9' not found"):
        inventory.generate(str(ds), str(tmp_path / "ws"), plate="P9")
    other = tmp_path / "other"
    make_dataset(other)
    inventory.generate(str(other), str(tmp_path / "ws"))
    with pytest.raises(UserError, match="inventory of"):
        inventory.generate(str(ds), str(tmp_path / "ws"), plate="P1")


def test_dataset_below_a_dataset_folder(tmp_path: Path) -> None:
    make_dataset(tmp_path / "top" / "cpg0032")
    assert inventory.find_plate_folders(str(tmp_path / "top"), "P1") == ["cpg0032/src/B1/images/P1"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such folder"),
        ("empty", "no files found"),
        ("file", "is a file"),
    ],
)
def test_bad_dataset_cli(tmp_path: Path, setup: str, message: str, capsys) -> None:
    target = tmp_path / "x"
    if setup == "empty":
        target.mkdir()
    elif setup == "file":
        target.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["inventory", "gen", "-d", str(target), "-o", str(tmp_path / "ws")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not Path(workspace.inventory_path(str(tmp_path / "ws"))).exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not parquet", "not a readable parquet file"), (None, "not a starrynight inventory")],
)
def test_load_inventory_rejects_other_files(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "inv.parquet"
    if content is None:
        pq.write_table(pa.table({"path": ["a"], "bytes": [1]}), path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        inventory.load_inventory(str(path))


def test_cli_gen(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    keys = make_dataset(ds)
    from starrynight.cli.main import _register, cli

    _register()
    result = CliRunner().invoke(cli, ["inventory", "gen", "-d", str(ds), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"inventoried {len(keys)} file(s)" in result.output


def test_inventory_with_a_null_folder_is_rejected_in_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from starrynight.errors import UserError
    from starrynight.inventory import INVENTORY_SCHEMA, ROOT_KEY, load_inventory

    columns = {f.name: [] for f in INVENTORY_SCHEMA}
    good = pa.table(columns, schema=INVENTORY_SCHEMA)
    row = {f.name: [None] for f in INVENTORY_SCHEMA}
    row.update(key=["a/b.tif"], name=["b.tif"], size=[1], mtime=[0])
    table = pa.concat_tables([good, pa.table(row, schema=INVENTORY_SCHEMA)])
    table = table.replace_schema_metadata({ROOT_KEY: b"/data"})
    path = tmp_path / "inventory.parquet"
    pq.write_table(table, path)
    with pytest.raises(UserError, match="column 'folder' has 1 empty value"):
        load_inventory(str(path))
