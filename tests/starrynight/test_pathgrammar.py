"""The path grammar: every spelling of the layout, consistency checks, custom grammars."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starrynight.errors import UserError
from starrynight.pathgrammar import (
    INDEX_SCHEMA,
    REJECTS_SCHEMA,
    _only_groups,
    load_grammar,
    parse_paths,
)

CP = "source_1/Batch1/images/Plate1/20X_CP_Plate1_20240101_120000"
FILE = "WellA1_PointA1_0003_ChannelPhalloAF750,ZO1-AF488,DAPI_Seq0003.ome.tiff"


def parse(keys: list[str], dataset: str = "root"):
    return parse_paths(pa.array(keys, pa.string()), default_dataset=dataset)


def one_row(key: str) -> dict:
    result = parse([key])
    assert result.rejects.num_rows == 0, result.rejects.to_pylist()
    (row,) = result.index.to_pylist()
    return row


@pytest.mark.parametrize(
    ("folder", "arm", "cycle", "mag"),
    [
        ("10X_c1_SBS-1", "sbs", 1, "10X"),
        ("10X_c1-SBS-1", "sbs", 1, "10X"),
        ("10X-SBS-1", "sbs", 1, "10X"),
        ("20X_c11_SBS-11", "sbs", 11, "20X"),
        ("10X_c2_SBS-2_20240102_101010", "sbs", 2, "10X"),
        ("20X_CP_Plate1", "cp", 0, "20X"),
        ("20X_CP_Plate1_20240101_120000", "cp", 0, "20X"),
    ],
)
def test_plate_folder_spellings(folder: str, arm: str, cycle: int, mag: str) -> None:
    row = one_row(f"source_1/Batch1/images/Plate1/{folder}/{FILE}")
    assert (row["arm"], row["cycle"], row["magnification"]) == (arm, cycle, mag)
    assert row["plate_folder"] == folder


@pytest.mark.parametrize(
    ("file", "well", "site", "channels", "ext"),
    [
        ("WellA1_PointA1_0000_ChannelC,A,T,G,DAPI_Seq0000.ome.tiff", "A1", 0,
         ["C", "A", "T", "G", "DAPI"], ".ome.tiff"),
        ("WellA01_PointA01_0012_Channel405 nm,477 nm,G,T_Seq0012.tiff", "A01", 12,
         ["405 nm", "477 nm", "G", "T"], ".tiff"),
        ("Well1_Point1_0001_ChannelDAPI,Cy3,A594,Cy5,Cy7_Seq0001.tif", "1", 1,
         ["DAPI", "Cy3", "A594", "Cy5", "Cy7"], ".tif"),
        ("WellB12_PointB12_0101_ChannelPhalloAF750,ZO1-AF488,DAPI,750_Seq0101.nd2", "B12", 101,
         ["PhalloAF750", "ZO1-AF488", "DAPI", "750"], ".nd2"),
    ],
)  # fmt: skip
def test_file_name_spellings(file: str, well: str, site: int, channels: list, ext: str) -> None:
    row = one_row(f"{CP}/{file}")
    assert (row["well"], row["site"], row["channels"], row["extension"]) == (
        well, site, channels, ext,
    )  # fmt: skip


def test_row_fields_and_schema() -> None:
    result = parse([f"{CP}/{FILE}"], dataset="cpg0032")
    assert result.index.schema.equals(INDEX_SCHEMA)
    assert result.rejects.schema.equals(REJECTS_SCHEMA)
    row = result.index.to_pylist()[0]
    assert row == {
        "dataset": "cpg0032", "source": "source_1", "batch": "Batch1", "plate": "Plate1",
        "arm": "cp", "cycle": 0, "magnification": "20X",
        "plate_folder": "20X_CP_Plate1_20240101_120000", "well": "A1", "site": 3,
        "channels": ["PhalloAF750", "ZO1-AF488", "DAPI"], "key": f"{CP}/{FILE}",
        "extension": ".ome.tiff",
    }  # fmt: skip


def test_leading_component_is_the_dataset() -> None:
    assert one_row(f"mydata/{CP}/{FILE}")["dataset"] == "mydata"
    assert one_row(f"{CP}/{FILE}")["dataset"] == "root"


def reject_of(key: str) -> dict:
    result = parse([key])
    assert result.index.num_rows == 0
    (row,) = result.rejects.to_pylist()
    return row


def test_inconsistent_well_is_rejected_not_guessed() -> None:
    row = reject_of(f"{CP}/WellA1_PointB2_0000_ChannelDAPI_Seq0000.tiff")
    assert row["reason"] == "inconsistent well"
    assert "A1" in row["detail"] and "B2" in row["detail"]
    # Zero padding is not an inconsistency.
    assert one_row(f"{CP}/WellA01_PointA1_0000_ChannelDAPI_Seq0000.tiff")["well"] == "A01"


def test_inconsistent_cycle_is_rejected() -> None:
    row = reject_of(f"source_1/Batch1/images/Plate1/10X_c1_SBS-2/{FILE}")
    assert row["reason"] == "inconsistent cycle in plate folder"
    assert "10X_c1_SBS-2" in row["detail"]


def test_metadata_is_recorded_as_such() -> None:
    row = reject_of("source_1/workspace/metadata/Barcodes.csv")
    assert (row["kind"], row["reason"]) == ("metadata", "metadata file")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (f"extra/nesting/{CP}/{FILE}", "folder does not fit the layout"),
        (FILE, "folder does not fit the layout"),
        (f"source_1/Batch1/images/Plate1/Weird_Folder/{FILE}", "plate folder is neither"),
        (f"{CP}/{FILE[:-9]}.png", "not an image extension"),
        (f"{CP}/notes_{FILE}", "file name does not fit"),
        (f"{CP}/WellA1_PointA1_0000_ChannelDAPI,,Cy3_Seq0000.tiff", "empty or repeated"),
        (f"{CP}/WellA1_PointA1_0000_ChannelDAPI,DAPI_Seq0000.tiff", "empty or repeated"),
    ],
)
def test_reject_reasons(key: str, reason: str) -> None:
    row = reject_of(key)
    assert row["reason"].startswith(reason)
    assert row["kind"] == "error"


def test_duplicates_are_rejected_with_count() -> None:
    a = f"source_1/Batch1/images/Plate1/10X_c1_SBS-1/{FILE}"
    b = f"source_1/Batch1/images/Plate1/10X_c1_SBS-1_20240102_000000/{FILE}"
    result = parse([a, b, f"{CP}/{FILE}"])
    assert result.index.column("key").to_pylist() == [f"{CP}/{FILE}"]
    assert result.rejects.column("reason").to_pylist() == ["duplicate image"] * 2
    assert all("2 files" in d for d in result.rejects.column("detail").to_pylist())


def test_every_key_lands_once_in_a_big_mixed_batch() -> None:
    keys = [f"{CP}/Well{r}{c}_Point{r}{c}_{s:04d}_ChannelDAPI,Cy3_Seq0.tiff"
            for r in "ABC" for c in range(1, 13) for s in range(30)]  # fmt: skip
    keys += ["source_1/workspace/metadata/Barcodes.csv", "x.txt", "a/b/c"]
    result = parse(keys)
    assert result.index.num_rows == len(keys) - 3
    assert result.rejects.num_rows == 3
    assert sorted(
        result.index.column("key").to_pylist() + result.rejects.column("key").to_pylist()
    ) == sorted(keys)


def test_custom_grammar_file(tmp_path) -> None:
    grammar = {
        "name": "lab-x",
        "folder": r"^(?P<source>[^/]+)/(?P<batch>[^/]+)/(?P<plate>[^/]+)/(?P<plate_folder>[^/]+)$",
        "cp_folder": r"^painting$",
        "sbs_folder": r"^cycle(?P<cycle>[0-9]+)$",
        "file": r"^(?P<well>[A-P][0-9]{2})-s(?P<site>[0-9]+)-(?P<channels>[^_]+)\.tif$",
        "extensions": [".tif"],
        "channel_separator": "+",
    }
    path = tmp_path / "labx.json"
    path.write_text(json.dumps(grammar))
    g = load_grammar(str(path))
    result = parse_paths(
        pa.array(["s/b/P7/cycle03/B02-s5-DAPI+A+C+G+T.tif", "s/b/P7/painting/B02-s5-DNA+ER.tif"]),
        grammar=g,
        default_dataset="d",
    )
    rows = result.index.to_pylist()
    assert [(r["arm"], r["cycle"], r["well"], r["site"], r["channels"]) for r in rows] == [
        ("sbs", 3, "B02", 5, ["DAPI", "A", "C", "G", "T"]),
        ("cp", 0, "B02", 5, ["DNA", "ER"]),
    ]
    assert rows[0]["magnification"] == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"folder": "x"}', "missing field"),
        ('{"folder": "(", "cp_folder": "", "sbs_folder": "(?P<cycle>1)", "file": "", '
         '"extensions": [".tif"]}', "not a valid RE2"),
        ('{"folder": "^(?P<source>a)$", "cp_folder": "", "sbs_folder": "(?P<cycle>1)", '
         '"file": "(?P<well>a)(?P<site>1)(?P<channels>c)", "extensions": [".tif"]}',
         "lacks the named group"),
        ('{"folders": 1}', "unknown field"),
    ],
)  # fmt: skip
def test_bad_grammar_files(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "g.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_grammar(str(path))


def test_missing_grammar_file(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_grammar(str(tmp_path / "nope.json"))


def test_only_groups_rewrites_other_groups_as_non_capturing() -> None:
    pattern = r"^(?P<a>[(]x)(?P<b>y)(z|w)\(q\)$"
    assert _only_groups(pattern, ["b"]) == r"^(?:[(]x)(?P<b>y)(?:z|w)\(q\)$"
    assert _only_groups(pattern, []).startswith("(?P<_m>)")


# --- fuzzing: nothing crashes; each key is either a consistent row or a reject ----------

SEGMENT = st.text(alphabet="ABCGT aXc_-,./0123456789SWelPoint", max_size=12)


@st.composite
def mutated_paths(draw) -> str:
    well = draw(st.sampled_from(["A1", "A01", "1", "P24", "B2", ""]))
    point = draw(st.sampled_from([well, well, "B2", "A1", ""]))
    folder = draw(st.sampled_from(
        ["10X_c1_SBS-1", "10X_c1-SBS-1", "10X-SBS-3", "20X_c11_SBS-11", "10X_c1_SBS-2",
         "20X_CP_P1", "20X_CP_P1_20240101_120000", "CP", "10X_c_SBS-", ""]
    ))  # fmt: skip
    chans = draw(st.sampled_from(["DAPI", "C,A,T,G,DAPI", "405 nm,G", "", "A,,B", "A,A"]))
    ext = draw(st.sampled_from([".ome.tiff", ".tif", ".TIFF", ".nd2", ".png", ""]))
    site = draw(st.sampled_from(["0000", "12", "", "x1", "99999999999"]))
    head = draw(st.sampled_from(["", "ds/", "a/b/c/", "/"]))
    key = f"{head}s1/B1/images/P1/{folder}/Well{well}_Point{point}_{site}_Channel{chans}_Seq1{ext}"
    if draw(st.booleans()):
        i = draw(st.integers(0, len(key)))
        key = key[:i] + draw(SEGMENT) + key[i + draw(st.integers(0, 3)) :]
    return key


def check_consistent(keys: list[str]) -> None:
    result = parse(keys)
    index, rejects = result.index, result.rejects
    assert index.num_rows + rejects.num_rows == len(keys)
    assert sorted(index.column("key").to_pylist() + rejects.column("key").to_pylist()) == sorted(
        keys
    )
    assert all(r for r in rejects.column("reason").to_pylist())
    for row in index.to_pylist():
        key = row["key"]
        name = key.rsplit("/", 1)[-1]
        folder = key.split("/")[-2]
        assert row["plate_folder"] == folder
        assert name.startswith(f"Well{row['well']}_")
        assert f"_Channel{','.join(row['channels'])}_" in name
        assert all(c.strip() for c in row["channels"])
        assert len(set(row["channels"])) == len(row["channels"])
        assert name.lower().endswith(row["extension"])
        assert row["site"] >= 0
        assert row["arm"] in ("cp", "sbs")
        assert (row["arm"] == "cp") == (row["cycle"] == 0)
        if row["arm"] == "sbs":
            assert f"SBS-{row['cycle']}" in folder


@settings(max_examples=150, deadline=None)
@given(st.lists(mutated_paths(), min_size=1, max_size=20))
def test_fuzz_mutated_realistic_paths(keys: list[str]) -> None:
    check_consistent(keys)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=10))
def test_fuzz_arbitrary_strings(keys: list[str]) -> None:
    check_consistent(keys)
