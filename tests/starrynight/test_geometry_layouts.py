"""Recorded positions: OME-XML headers, declared layouts and positions CSVs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from starrynight import geometry as geo
from starrynight.errors import InputFileError, UserError
from tests.starrynight.test_storage import bucket, s3_endpoint  # noqa: F401 (fixtures)


def test_pcpip_round_layouts_have_their_site_counts():
    for name, widths in geo.ROUND_LAYOUTS.items():
        assert sum(widths) == int(name), name
        assert list(widths) == list(reversed(widths)), name  # round wells are symmetric


def test_round_layout_is_centred_and_snaked_like_pcpip():
    layout = geo.Layout(round="52")
    cells = geo.layout_cells(layout)
    assert len(cells) == 52
    assert cells[:4] == [(0, 2), (0, 3), (0, 4), (0, 5)]  # row 0: 4 sites centred in 8
    assert cells[4:6] == [(1, 6), (1, 5)]  # row 1 runs right to left


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("rows", [(0, 0), (0, 1), (0, 2), (1, 0)]),
        ("snake_rows", [(0, 0), (0, 1), (0, 2), (1, 2)]),
        ("columns", [(0, 0), (1, 0), (0, 1), (1, 1)]),
        ("snake_columns", [(0, 0), (1, 0), (1, 1), (0, 1)]),
    ],
)
def test_acquisition_orders(order, expected):
    rows, cols = (2, 3) if order.endswith("rows") else (3, 2)
    layout = geo.Layout(rows=rows, columns=cols, order=order)
    assert geo.layout_cells(layout)[:4] == expected


def test_layout_positions_use_overlap_pixel_size_and_first_site():
    layout = geo.Layout(rows=2, columns=2, order="rows", overlap_pct=10, first_site=1)
    pos = geo.layout_positions(layout, [1, 2, 3, 4], (100, 200), 0.5, "exp: cp.layout")
    assert pos[1] == (0.0, 0.0)
    assert pos[2] == pytest.approx((0.0, 90.0))
    assert pos[3] == pytest.approx((45.0, 0.0))
    with pytest.raises(UserError, match="declared layout has 4 sites but the files have 3"):
        geo.layout_positions(layout, [1, 2, 3], (100, 200), 0.5, "exp: cp.layout")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"round": "1025"}, "round: unknown layout '1025'"),
        ({"rows": 2}, "rows and columns go together"),
        ({"rows": 2, "columns": 2, "round": "88"}, "give one of rows/columns, round or row_widths"),
        ({"source": "csv"}, "source 'csv' needs positions_csv"),
        ({"row_widths": [3, 0]}, "row_widths must be positive"),
    ],
)
def test_bad_layouts_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        geo.Layout(**fields)


def test_ome_header_gives_pixel_size_and_position_in_micrometres(tmp_path):
    path = tmp_path / "a.ome.tiff"
    tifffile.imwrite(
        path, np.zeros((2, 32, 48), np.uint16), ome=True, photometric="minisblack",
        metadata={"axes": "CYX", "PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm",
                  "PhysicalSizeY": 0.65,
                  "Plane": {"PositionX": [1.5, 1.5], "PositionY": [2.0, 2.0],
                            "PositionXUnit": ["mm", "mm"], "PositionYUnit": ["mm", "mm"]}},
    )  # fmt: skip
    h = geo.read_ome_header(str(path))
    assert (h.height, h.width) == (32, 48)
    assert h.pixel_size_um == pytest.approx((0.65, 0.65))
    assert h.position_um == pytest.approx((2000.0, 1500.0))
    assert geo.read_plane(str(path), 1).shape == (32, 48)
    with pytest.raises(InputFileError, match="expected at least 3 frames"):
        geo.read_plane(str(path), 2)


def test_plain_tiff_has_no_geometry_and_bad_units_are_named(tmp_path):
    plain = tmp_path / "p.tiff"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint16))
    h = geo.read_ome_header(str(plain))
    assert h.pixel_size_um is None and h.position_um is None
    xml = '<OME><Image><Pixels PhysicalSizeX="1" PhysicalSizeXUnit="parsec"/></Image></OME>'
    with pytest.raises(InputFileError, match="PhysicalSizeXUnit='parsec'"):
        geo.parse_ome_geometry("f.tiff", xml, 8, 8)
    with pytest.raises(InputFileError, match="not a readable TIFF"):
        (tmp_path / "x.tiff").write_bytes(b"nope")
        geo.read_ome_header(str(tmp_path / "x.tiff"))


_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def _dataset_xml(files: dict[str, float], root_uuid: str = "", body: str = "") -> str:
    """A multi-file OME document: one image per file, PositionX as given (um)."""
    images = "".join(
        f'<Image ID="Image:{i}"><Pixels ID="Pixels:{i}" DimensionOrder="XYCZT" Type="uint16" '
        f'SizeX="8" SizeY="8" SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="0.5" '
        f'PhysicalSizeY="0.5"><TiffData IFD="0" PlaneCount="1">'
        f'<UUID FileName="{name}">urn:uuid:{name}</UUID></TiffData>'
        f'<Plane TheC="0" TheZ="0" TheT="0" PositionX="{x}" PositionY="7"/></Pixels></Image>'
        for i, (name, x) in enumerate(files.items())
    )
    uuid = f' UUID="{root_uuid}"' if root_uuid else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{_NS}"{uuid}>{body or images}</OME>'


def _tiff(path, xml: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), description=xml, metadata=None)
    return str(path)


def test_multi_file_ome_gives_each_file_its_own_image(tmp_path):
    # Every file of the dataset carries the metadata of all: the image is the one whose
    # TiffData names the file, by FileName or (after renaming) by the file's UUID.
    files = {"s0.ome.tiff": 100.0, "s1.ome.tiff": 900.0}
    for name, x in files.items():
        path = _tiff(tmp_path / name, _dataset_xml(files, f"urn:uuid:{name}"))
        assert geo.read_ome_header(path).position_um == (7.0, x)
    renamed = _tiff(tmp_path / "renamed.ome.tiff", _dataset_xml(files, "urn:uuid:s1.ome.tiff"))
    assert geo.read_ome_header(renamed).position_um == (7.0, 900.0)
    stray = _tiff(tmp_path / "other.ome.tiff", _dataset_xml(files))
    with pytest.raises(InputFileError, match=r"other.ome.tiff: OME-XML describes 2 images and "
                       r"none is stored in this file"):  # fmt: skip
        geo.read_ome_header(stray)


def test_binary_only_headers_are_read_from_their_metadata_file(tmp_path):
    files = {"s0.ome.tiff": 100.0, "s1.ome.tiff": 900.0}
    (tmp_path / "set.companion.ome").write_text(_dataset_xml(files))
    binary = '<BinaryOnly MetadataFile="set.companion.ome" UUID="urn:uuid:set"/>'
    for name, x in files.items():
        path = _tiff(tmp_path / name, _dataset_xml({}, f"urn:uuid:{name}", binary))
        h = geo.read_ome_header(path)
        assert h.position_um == (7.0, x) and h.pixel_size_um == (0.5, 0.5)
    lost = _tiff(tmp_path / "sub" / "s0.ome.tiff", _dataset_xml({}, "", binary))
    with pytest.raises(InputFileError, match=r"s0.ome.tiff: OME-XML BinaryOnly "
                       r"MetadataFile='set.companion.ome': .*file not found"):  # fmt: skip
        geo.read_ome_header(lost)
    (tmp_path / "bad.ome").write_text("<OME><Image>")
    broken = _tiff(
        tmp_path / "b.ome.tiff", _dataset_xml({}, "", binary.replace("set.companion", "bad"))
    )
    with pytest.raises(InputFileError, match=r"MetadataFile='bad\.ome': not well-formed OME-XML"):
        geo.read_ome_header(broken)


def test_positions_csv(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("site,x_um,y_um\n0,1.5,2.5\n1,10,2.5\n")
    assert geo.read_positions_csv(str(good)) == {0: (2.5, 1.5), 1: (2.5, 10.0)}
    bad = tmp_path / "b.csv"
    bad.write_text("site,x\n0,1\n")
    with pytest.raises(UserError, match="missing column"):
        geo.read_positions_csv(str(bad))
    dup = tmp_path / "d.csv"
    dup.write_text("site,x_um,y_um\n0,1,1\n0,2,2\n")
    with pytest.raises(UserError, match="line 3: site 0 is listed twice"):
        geo.read_positions_csv(str(dup))


def test_headers_frames_and_mosaics_on_s3(bucket, tmp_path):  # noqa: F811 (fixture)
    from starrynight import storage
    from starrynight.modules import mosaic as mos

    local = tmp_path / "a.ome.tiff"
    planes = np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50)
    tifffile.imwrite(
        local, planes, ome=True, photometric="minisblack",
        metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65,
                  "Plane": {"PositionX": [10.0] * 2, "PositionY": [20.0] * 2}},
    )  # fmt: skip
    uri = f"s3://{bucket}/ds/a.ome.tiff"
    storage.write_bytes(uri, local.read_bytes())
    h = geo.read_ome_header(uri)
    assert h.position_um == (20.0, 10.0) and h.pixel_size_um == (0.65, 0.65)
    np.testing.assert_array_equal(geo.read_plane(uri, 1), planes[1])
    # Overlap boxes by ranged reads, as the refinement reads them.
    boxes = [(slice(0, 10), slice(0, 50)), (slice(3, 40), slice(41, 50))]
    for box, crop in zip(boxes, geo.read_boxes(uri, 1, boxes, (40, 50), np.float32), strict=True):
        np.testing.assert_array_equal(crop, planes[1][box].astype(np.float32))

    tile = f"s3://{bucket}/ws/t.tiff"
    single = tmp_path / "t.tiff"
    tifffile.imwrite(single, planes[0])
    storage.write_bytes(tile, single.read_bytes())
    np.testing.assert_array_equal(mos._TileRows(tile).rows(5, 9), planes[0][5:9])
    target = f"s3://{bucket}/ws/mosaics/P-A1/cp.zarr"
    tiles = [mos.Tile(0, 0, 0, (tile,)), mos.Tile(1, 0, 30, (tile,))]
    levels, png = mos.write_mosaic(target, tiles, ["DAPI"], (0.65, 0.65), (40, 80), chunk=64)
    assert levels == 1 and png[:4] == b"\x89PNG"
    attrs = storage.read_bytes(storage.join(target, ".zattrs"))
    assert b'"multiscales"' in attrs
