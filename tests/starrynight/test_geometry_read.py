"""Reading rectangles of a TIFF frame without decoding the rest (geometry.read_boxes)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from starrynight import geometry as geo
from starrynight.errors import InputFileError

BOXES = [
    (slice(0, 30), slice(0, 130)),  # a top strip
    (slice(0, 100), slice(110, 130)),  # a right strip
    (slice(45, 77), slice(33, 97)),  # inside, across strips and tiles
]


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    return rng.integers(0, 65535, (2, 100, 130), dtype=np.uint16)


@pytest.mark.parametrize(
    "options",
    [
        {},  # uncompressed, contiguous: one ranged read
        {"byteorder": ">"},  # big-endian uncompressed
        {"compression": "zlib", "rowsperstrip": 16},  # compressed strips
        {"compression": "lzw", "tile": (32, 48)},  # compressed tiles, ragged edges
        {"tile": (32, 48)},  # uncompressed tiles
    ],
    ids=["raw", "big-endian", "zlib-strips", "lzw-tiles", "raw-tiles"],
)
def test_boxes_equal_the_whole_frame_cut(tmp_path, frames, options):
    path = str(tmp_path / "f.tiff")
    tifffile.imwrite(path, frames, photometric="minisblack", **options)
    got = geo.read_boxes(path, 1, BOXES, shape=(100, 130))
    for box, crop in zip(BOXES, got, strict=True):
        np.testing.assert_array_equal(crop, frames[1][box])
        assert crop.dtype == np.uint16 and crop.dtype.isnative and crop.flags.owndata
    as_float = geo.read_boxes(path, 0, BOXES[:1], dtype=np.float32)[0]
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, frames[0][BOXES[0]].astype(np.float32))
    # Views where the frame is local, raw and native; copies otherwise: same pixels.
    viewed = geo.read_boxes(path, 1, BOXES, shape=(100, 130), view=True)
    mapped = not options
    for box, crop in zip(BOXES, viewed, strict=True):
        np.testing.assert_array_equal(crop, frames[1][box])
        assert crop.dtype.isnative and crop.flags.owndata is not mapped
        assert crop.flags.writeable is not mapped


def test_a_truncated_raw_frame_is_an_error_when_mapped(tmp_path, frames):
    path = tmp_path / "f.tiff"
    tifffile.imwrite(str(path), frames, photometric="minisblack")
    data = path.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputFileError, match="truncated"):
        geo.read_boxes(str(cut), 1, BOXES, view=True)


def test_bad_frames_are_one_clear_error(tmp_path, frames):
    path = str(tmp_path / "f.tiff")
    tifffile.imwrite(path, frames, photometric="minisblack")
    with pytest.raises(InputFileError, match="expected at least 3 frames"):
        geo.read_boxes(path, 2, BOXES)
    with pytest.raises(InputFileError, match=r"expected \(120, 130\)"):
        geo.read_boxes(path, 0, BOXES, shape=(120, 130))
    data = (tmp_path / "f.tiff").read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError):
        geo.read_boxes(str(cut), 1, BOXES)


@pytest.mark.parametrize(
    ("options", "located"),
    [({}, True), ({"byteorder": ">"}, True), ({"compression": "zlib"}, False)],
    ids=["raw", "big-endian", "zlib"],
)
def test_a_header_locates_a_frame_for_reads_that_parse_nothing(tmp_path, frames, options, located):
    path = str(tmp_path / "f.tiff")
    tifffile.imwrite(path, frames, photometric="minisblack", **options)
    layout = geo.read_ome_header(path, 1).frame
    assert (layout is not None) is located
    assert geo.read_ome_header(path).frame is None
    got = geo.read_boxes(path, 1, BOXES, (100, 130), view=True, layout=layout)
    for box, crop in zip(BOXES, got, strict=True):
        np.testing.assert_array_equal(crop, frames[1][box])
    if layout is not None:
        # A layout of another frame is not used for this one.
        other = geo.read_boxes(path, 0, BOXES[:1], (100, 130), view=True, layout=layout)
        np.testing.assert_array_equal(other[0], frames[0][BOXES[0]])


def test_a_located_frame_still_meets_bad_files_with_one_clear_error(tmp_path, frames):
    path = tmp_path / "f.tiff"
    tifffile.imwrite(str(path), frames, photometric="minisblack")
    with pytest.raises(InputFileError, match="expected at least 3 frames, found 2"):
        geo.read_ome_header(str(path), 2)
    layout = geo.read_ome_header(str(path), 1).frame
    with pytest.raises(InputFileError, match=r"is \(100, 130\), expected \(50, 50\)"):
        geo.read_boxes(str(path), 1, BOXES[:1], (50, 50), view=True, layout=layout)
    assert layout is not None
    # Truncated inside the frame after its header was read.
    path.write_bytes(path.read_bytes()[: layout.offset + 100])
    with pytest.raises(InputFileError, match="truncated image data"):
        geo.read_boxes(str(path), 1, BOXES[:1], (100, 130), view=True, layout=layout)
    path.unlink()
    with pytest.raises(InputFileError, match="file not found"):
        geo.read_boxes(str(path), 1, BOXES[:1], (100, 130), view=True, layout=layout)
