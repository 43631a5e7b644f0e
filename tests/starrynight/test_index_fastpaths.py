"""The vectorised fast paths of the data layer agree with their simple definitions."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from starrynight import index, storage
from starrynight.pathgrammar import (
    INDEX_SCHEMA,
    _extension_of,
    _extensions,
    _select,
    parse_paths,
)

EXTS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".nd2")
NAMES = [
    "a.ome.tiff",
    "a.OME.TIFF",
    "a.OME.tiff",
    "b.tiff",
    "b.TIF",
    ".tif",
    "tif",
    "",
    "x",
    "c.nd2",
    "c.ND2.txt",
    "é.tiff",
    "Ωmega.ome.tif",
    "Well1_Point1_0001_ChannelDAPI_Seq0001.ome.tiff",
]


def test_extensions_fast_path_matches_per_name_rule() -> None:
    expected = [_extension_of(n, EXTS) for n in NAMES]
    assert _extensions(pa.array(NAMES, pa.string()), EXTS).tolist() == expected
    sliced = pa.array(["zz", *NAMES], pa.string()).slice(1)
    assert _extensions(sliced, EXTS).tolist() == expected


def test_extensions_non_ascii_extension_uses_the_general_path() -> None:
    exts = (".tïff", ".tif")
    names = ["a.TÏFF", "a.tif", "a.png"]
    expected = [_extension_of(n, exts) for n in names]
    assert _extensions(pa.array(names, pa.string()), exts).tolist() == expected


@pytest.mark.parametrize("pattern", ["few", "many", "none", "all"])
def test_select_equals_filter(pattern: str) -> None:
    values = pa.array([f"k{i}" for i in range(10_000)])
    keep = {
        "few": np.arange(10_000) % 997 != 0,
        "many": np.arange(10_000) % 2 == 0,
        "none": np.zeros(10_000, bool),
        "all": np.ones(10_000, bool),
    }[pattern]
    got = _select(values, keep)
    assert got.to_pylist() == [v for v, k in zip(values.to_pylist(), keep, strict=True) if k]


def test_written_index_has_the_plain_schema_and_metadata(tmp_path) -> None:
    keys = [
        f"s/b/images/P1/20X_CP_P1/WellA{w}_PointA{w}_{s:04d}_ChannelDNA,Mito_Seq{s}.tiff"
        for w in (1, 2)
        for s in range(3)
    ] + ["s/workspace/metadata/Barcodes.csv"]
    parsed = parse_paths(pa.array(keys, pa.string()))
    meta = {index.ROOT_KEY: b"/data/ds"}
    out = tmp_path / "index.parquet"
    index._write(parsed.encoded.replace_schema_metadata(meta), str(out))
    table = pq.read_table(out)
    assert table.schema.remove_metadata().equals(INDEX_SCHEMA)
    assert table.schema.metadata[index.ROOT_KEY] == b"/data/ds"
    assert table.equals(parsed.index.cast(table.schema))
    assert table.column("channels").to_pylist()[0] == ["DNA", "Mito"]
    assert parsed.channel_codes is not None and len(parsed.channel_codes) == table.num_rows


def test_join_keys_rebuilds_inventory_keys() -> None:
    folder = pa.array(["a/b", "", "a/b", "c"]).dictionary_encode()
    name = pa.array(["x.tif", "root.txt", "y.tif", "z"])
    assert index._join_keys(folder, name).to_pylist() == [
        "a/b/x.tif",
        "root.txt",
        "a/b/y.tif",
        "c/z",
    ]
    plain = pa.array(["a/b", "", "c"])
    assert index._join_keys(plain, pa.array(["x", "y", "z"])).to_pylist() == ["a/b/x", "y", "c/z"]


def test_listing_skips_dangling_links_and_special_files(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.tif").write_bytes(b"abc")
    (tmp_path / "d" / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "d" / "link.tif").symlink_to(tmp_path / "d" / "f.tif")
    os.mkfifo(tmp_path / "d" / "pipe")
    (tmp_path / "d" / ".x.parquet.1234.tmp.parquet").write_bytes(b"")
    found = {e.key: e.size for e in storage.list_files(str(tmp_path))}
    assert found == {"d/f.tif": 3, "d/link.tif": 3}
