"""Where every site of a well sits: recorded positions from files, layouts or a CSV.

A site's position is given in the **well frame** of its arm (CP; SBS per cycle), in
micrometres, x to the right and y down as in the images, and names the **top-left
corner** of the field (the outer corner of pixel (0, 0)). Positions come, in this order:

1. the files' own OME-XML: ``Pixels/@PhysicalSizeX/Y`` and each ``Plane/@PositionX/Y``
   of the image stored in the file (only the header is read; on S3 a ranged read of the
   first kilobytes; a ``BinaryOnly`` header is followed to its metadata file). OME does
   not say which point of the field a stage position names; microscopes (NIS-Elements,
   Harmony, MetaMorph) record the field's **centre**, so the corner is the position
   minus half the field. All fields of an arm share one size, so a wrong guess moves
   every site by the same amount and the refinement, which only uses differences of
   positions, is unaffected;
2. a layout declared in the experiment (``layout`` in the arm): a rows x columns grid
   or one of PCPIP's round-well layouts, an acquisition order, the overlap, the first
   site's index and the pixel size;
3. a positions CSV (``layout.positions_csv``: columns ``site, x_um, y_um``, the
   top-left corner as above).

:mod:`starrynight.modules.geometry` refines them by registering neighbours.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import math
import mmap
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Literal

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field, model_validator

from starrynight import storage
from starrynight.errors import InputFileError, UserError

#: Which point of the field an OME stage position names (see the module docstring).
STAGE_POINT = "centre"

#: PCPIP's round-well layouts (``imperwell``): sites per row, top to bottom. From the
#: Broad's pooled-cell-painting-image-processing Fiji stitching scripts.
ROUND_LAYOUTS: dict[str, tuple[int, ...]] = {
    "1396": (18, 22, 26, 28, 30, 32, 34, 36, 36, 38, 38, 40, 40, 40, 40, 40, 40, 40, 40, 40,
             40, 40, 40, 40, 40, 40, 40, 40, 40, 38, 38, 36, 36, 34, 32, 30, 28, 26, 22, 18),
    "1364": (8, 14, 18, 22, 26, 28, 30, 32, 34, 34, 36, 36, 38, 38, 40, 40, 40, 42, 42, 42,
             42, 42, 42, 42, 42, 40, 40, 40, 38, 38, 36, 36, 34, 34, 32, 30, 28, 26, 22, 18,
             14, 8),
    "1332": (14, 18, 22, 26, 28, 30, 32, 34, 34, 36, 36, 38, 38, 40, 40, 40, 40, 40, 40, 40,
             40, 40, 40, 40, 40, 40, 40, 38, 38, 36, 36, 34, 34, 32, 30, 28, 26, 22, 18, 14),
    "394": (3, 7, 9, 11, 11, 13, 13, 15, 15, 15, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 15,
            15, 15, 13, 13, 11, 11, 9, 7, 3),
    "320": (4, 8, 12, 14, 16, 18, 18, 20, 20, 20, 20, 20, 20, 20, 18, 18, 16, 14, 12, 8, 4),
    "316": (6, 10, 14, 16, 16, 18, 18, 20, 20, 20, 20, 20, 20, 18, 18, 16, 16, 14, 10, 6),
    "293": (7, 11, 13, 15, 17, 17, 19, 19, 19, 19, 19, 19, 19, 17, 17, 15, 13, 11, 7),
    "256": (6, 10, 12, 14, 16, 16, 18, 18, 18, 18, 18, 18, 16, 16, 14, 12, 10, 6),
    "88": (6, 8, 10, 10, 10, 10, 10, 10, 8, 6),
    "52": (4, 6, 8, 8, 8, 8, 6, 4),
}  # fmt: skip

Order = Literal["snake_rows", "rows", "snake_columns", "columns"]

#: How a stage's axes can lie on the image's axes (the square's 8 symmetries), named by
#: what turns recorded positions into image-oriented ones: the x and y values swapped
#: first (a camera turned 90 degrees), then mirrored along x and/or y (a stage axis
#: counting the other way than the image's, as on many microscopes).
StageAxes = Literal[
    "as_recorded", "flip_x", "flip_y", "flip_xy",
    "swap_xy", "swap_xy_flip_x", "swap_xy_flip_y", "swap_xy_flip_xy",
]  # fmt: skip
STAGE_AXES: tuple[str, ...] = StageAxes.__args__  # type: ignore[attr-defined]
_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


class Layout(BaseModel):
    """How an arm's sites were laid out, for files that carry no stage positions.

    Attributes
    ----------
    rows, columns : int, optional
        A rectangular grid.
    round : str, optional
        Name of a PCPIP round-well layout (:data:`ROUND_LAYOUTS`, e.g. ``"1364"``).
    row_widths : list of int, optional
        Sites per row of any other round layout, top to bottom (rows centred).
    order : {"snake_rows", "rows", "snake_columns", "columns"}
        Acquisition order: row by row alternating direction (PCPIP's round wells),
        row by row left to right, and the same by columns.
    overlap_pct : float
        Overlap of neighbouring fields, percent of the field.
    first_site : {0, 1}
        Index of the first site in the file names.
    pixel_size_um : float, optional
        Pixel size; required when the files do not record ``PhysicalSizeX``.
    positions_csv : str, optional
        A CSV (``site, x_um, y_um``) giving each site's top-left corner instead.
    source : {"auto", "metadata", "layout", "csv"}
        Where positions come from; ``auto`` takes the files' metadata when every file
        has it, else the declared grid or round layout, else the CSV.
    stage_axes : {"auto"} or one of :data:`STAGE_AXES`
        How the recorded (metadata or CSV) positions' axes lie on the image's;
        ``auto`` keeps them as recorded unless registration shows another way fits
        (``starrynight.modules.geometry``). A declared layout is in image axes already.
    """

    model_config = ConfigDict(extra="forbid")

    rows: int | None = Field(default=None, ge=1)
    columns: int | None = Field(default=None, ge=1)
    round: str | None = None
    row_widths: list[int] | None = None
    order: Order = "snake_rows"
    overlap_pct: float = Field(default=10.0, ge=0, lt=100)
    first_site: Literal[0, 1] = 0
    pixel_size_um: float | None = Field(default=None, gt=0)
    positions_csv: str | None = None
    source: Literal["auto", "metadata", "layout", "csv"] = "auto"
    stage_axes: Literal["auto"] | StageAxes = "auto"

    @model_validator(mode="after")
    def _one_shape(self) -> Layout:
        if self.round is not None and self.round not in ROUND_LAYOUTS:
            raise ValueError(
                f"round: unknown layout {self.round!r}; known: {', '.join(ROUND_LAYOUTS)} "
                "(or give row_widths)"
            )
        if self.row_widths is not None and (
            not self.row_widths or any(w < 1 for w in self.row_widths)
        ):
            raise ValueError(f"row_widths must be positive counts, got {self.row_widths}")
        shapes = [
            self.rows is not None or self.columns is not None,
            self.round is not None,
            self.row_widths is not None,
        ]
        if sum(shapes) > 1:
            raise ValueError("give one of rows/columns, round or row_widths")
        if (self.rows is None) != (self.columns is None):
            raise ValueError("rows and columns go together")
        if self.source == "layout" and not any(shapes):
            raise ValueError("source 'layout' needs rows/columns, round or row_widths")
        if self.source == "csv" and not self.positions_csv:
            raise ValueError("source 'csv' needs positions_csv")
        return self

    @property
    def declared(self) -> bool:
        """True when a grid or round layout is declared."""
        return self.rows is not None or self.round is not None or self.row_widths is not None

    def widths(self) -> tuple[int, ...]:
        """Sites per row (per column for the column orders' transposed round layouts)."""
        if self.rows is not None and self.columns is not None:
            return (self.columns,) * self.rows
        if self.round is not None:
            return ROUND_LAYOUTS[self.round]
        if self.row_widths is not None:
            return tuple(self.row_widths)
        raise UserError("layout: no rows/columns, round or row_widths declared")

    @property
    def site_count(self) -> int:
        """Sites the declared layout holds."""
        return sum(self.widths())


@dataclass(frozen=True)
class OmeHeader:
    """What the OME-XML of one file says about its geometry.

    ``pixel_size_um`` and ``position_um`` are ``(y, x)``; None when not recorded.
    """

    uri: str
    height: int
    width: int
    pixel_size_um: tuple[float, float] | None
    position_um: tuple[float, float] | None
    #: Where the pixels of the frame asked for lie (see :func:`read_ome_header`).
    frame: FrameLayout | None = None


@dataclass(frozen=True)
class FrameLayout:
    """Where an uncompressed, contiguous frame's pixels lie in a local file.

    With it :func:`read_boxes` maps the pixels without parsing the file again.
    """

    index: int
    offset: int
    dtype: str
    shape: tuple[int, int]


@contextlib.contextmanager
def open_ranged(uri: str) -> Iterator[IO[bytes]]:
    """A seekable binary file for ``uri``: local file, or S3 with ranged GETs per read."""
    if storage.is_s3(uri):
        fs, path = storage.filesystem(uri)
        try:
            handle = fs.open_input_file(path)
        except FileNotFoundError as exc:
            raise InputFileError(uri, "file not found") from exc
        except OSError as exc:
            raise InputFileError(uri, f"cannot open ({exc})") from exc
        with handle:
            yield handle  # type: ignore[misc]
        return
    try:
        handle = open(storage.filesystem(uri)[1], "rb")  # noqa: SIM115
    except FileNotFoundError as exc:
        raise InputFileError(uri, "file not found") from exc
    with handle:
        yield handle


def read_ome_header(uri: str, frame: int | None = None) -> OmeHeader:
    """Read the size, pixel size and stage position of a TIFF from its header only.

    Parameters
    ----------
    uri : str
        Local path or ``s3://`` URI.
    frame : int, optional
        Also locate this frame's pixels (:attr:`OmeHeader.frame`), for a local file
        whose frame is uncompressed and contiguous (else ``frame`` stays None): the
        file is then parsed once for both its geometry and the reads that follow.

    Raises
    ------
    InputFileError
        When the file is not a readable TIFF, has no frame ``frame``, or its OME-XML is
        malformed or has a pixel size or position in a unit that is not a length.
    """
    layout = None
    with open_ranged(uri) as fh:
        try:
            with tifffile.TiffFile(fh) as tif:
                page = tif.pages.first
                height, width = int(page.shape[-2]), int(page.shape[-1])
                xml = tif.ome_metadata if tif.is_ome else None
                if frame is not None and not storage.is_s3(uri):
                    layout = _frame_layout(uri, tif, frame)
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(uri, f"not a readable TIFF ({_first_line(exc)})") from exc
    if not xml:
        return OmeHeader(uri, height, width, None, None, layout)
    return replace(parse_ome_geometry(uri, xml, height, width), frame=layout)


def _companion(uri: str, binary: ET.Element) -> ET.Element:
    """The metadata file that a ``BinaryOnly`` OME-XML element points to, parsed.

    Multi-file OME-TIFF datasets may keep the full metadata in one file (a
    ``.companion.ome`` or one of the TIFFs) and write in the others only
    ``<BinaryOnly MetadataFile="..."/>``; the name is relative to the file's folder.
    """
    name = binary.get("MetadataFile", "")
    if not name:
        raise InputFileError(uri, "OME-XML BinaryOnly names no MetadataFile")
    folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
    try:
        return _parsed_companion(storage.join(folder, name))
    except UserError as exc:
        raise InputFileError(uri, f"OME-XML BinaryOnly MetadataFile={name!r}: {exc}") from exc


@functools.lru_cache(maxsize=4)
def _parsed_companion(uri: str) -> ET.Element:
    # Cached: every file of a multi-file dataset points to the same metadata file.
    data = storage.read_bytes(uri)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise UserError(f"not well-formed OME-XML ({exc})") from exc
    if _binary_only(root) is not None:
        raise UserError("it is itself BinaryOnly")
    return root


def _binary_only(root: ET.Element) -> ET.Element | None:
    return next((e for e in root if _local(e.tag) == "BinaryOnly"), None)


def _image_pixels(
    uri: str, root: ET.Element, own_uuid: str | None, in_file: bool
) -> ET.Element | None:
    """The ``Pixels`` of the image whose planes this file stores.

    An OME document may describe several images (every file of a multi-file dataset
    can carry the whole dataset's metadata); each image's ``TiffData`` says which file
    holds its planes: a ``UUID`` child names that file (``FileName``, or the UUID the file
    declares at its root, which survives renaming), and no ``UUID`` means the file
    holding the document (``in_file``: this one). Without any ``TiffData``, images fill
    the file's frames in order, so the first one starts it.
    """
    pixels = [e for e in root.iter() if _local(e.tag) == "Pixels"]
    if len(pixels) <= 1:
        return pixels[0] if pixels else None
    name = uri.rsplit("/", 1)[-1]
    placed = False
    for px in pixels:
        for tiff in (e for e in px if _local(e.tag) == "TiffData"):
            placed = True
            ident = next((e for e in tiff if _local(e.tag) == "UUID"), None)
            if ident is None:
                if in_file:
                    return px
                continue
            if ident.get("FileName", "").rsplit("/", 1)[-1] == name or (
                own_uuid and (ident.text or "").strip() == own_uuid
            ):
                return px
    if not placed:
        return pixels[0]
    raise InputFileError(
        uri,
        f"OME-XML describes {len(pixels)} images and none is stored in this file "
        f"(no TiffData UUID with FileName={name!r})",
    )


def _frame_layout(uri: str, tif: tifffile.TiffFile, index: int) -> FrameLayout | None:
    try:
        page = tif.pages[index]
    except IndexError:
        raise InputFileError(
            uri, f"expected at least {index + 1} frames, found {len(tif.pages)}"
        ) from None
    if (
        not isinstance(page, tifffile.TiffPage)
        or page.ndim != 2
        or page.samplesperpixel != 1
        or page.compression != 1
        or not page.is_contiguous
    ):
        return None
    stored = np.dtype(page.dtype).newbyteorder(tif.byteorder)
    return FrameLayout(index, int(page.dataoffsets[0]), stored.str, tuple(page.shape))


def parse_ome_geometry(uri: str, xml: str, height: int, width: int) -> OmeHeader:
    """The geometry the OME-XML header of file ``uri`` records (see :class:`OmeHeader`).

    When the document describes several images, the one stored in this file is used;
    a ``BinaryOnly`` header is followed to the metadata file it names.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputFileError(uri, f"OME-XML is not well-formed ({exc})") from exc
    own_uuid = root.get("UUID")
    binary = _binary_only(root)
    if binary is not None:
        pixels = _image_pixels(uri, _companion(uri, binary), own_uuid, in_file=False)
        if pixels is None:
            raise InputFileError(uri, "OME metadata file named by BinaryOnly has no image")
    else:
        pixels = _image_pixels(uri, root, own_uuid, in_file=True)
    if pixels is None:
        return OmeHeader(uri, height, width, None, None)
    sx = _length(uri, pixels, "PhysicalSizeX")
    sy = _length(uri, pixels, "PhysicalSizeY")
    size = None
    if sx is not None or sy is not None:
        size = (sy if sy is not None else sx, sx if sx is not None else sy)
    plane = next((e for e in pixels if _local(e.tag) == "Plane"), None)
    position = None
    if plane is not None:
        px = _length(uri, plane, "PositionX")
        py = _length(uri, plane, "PositionY")
        if (px is None) != (py is None):
            raise InputFileError(uri, "OME-XML Plane has only one of PositionX and PositionY")
        if px is not None and py is not None:
            position = (py, px)
    return OmeHeader(uri, height, width, size, position)  # type: ignore[arg-type]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _length(uri: str, element: ET.Element, name: str) -> float | None:
    value = element.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError as exc:
        raise InputFileError(uri, f"OME-XML {name}={value!r} is not a number") from exc
    if not math.isfinite(number):
        raise InputFileError(uri, f"OME-XML {name}={value!r} is not finite")
    unit = element.get(f"{name}Unit", "µm")
    if unit not in _UNITS_UM:
        raise InputFileError(
            uri, f"OME-XML {name}Unit={unit!r}: expected a length unit ({', '.join(_UNITS_UM)})"
        )
    return number * _UNITS_UM[unit]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


# --------------------------------------------------------------------------- layouts


def layout_cells(layout: Layout) -> list[tuple[int, int]]:
    """``(row, column)`` of each site in acquisition order, for a declared layout.

    Round layouts centre each row in the widest one (as PCPIP does); the column orders
    walk the transposed layout (the widths count sites per column).
    """
    widths = layout.widths()
    full = max(widths)
    cells: list[tuple[int, int]] = []
    for r, count in enumerate(widths):
        left = (full - count) // 2
        cols = list(range(left, left + count))
        if layout.order.startswith("snake") and r % 2 == 1:
            cols.reverse()
        cells.extend((r, c) for c in cols)
    if layout.order in ("snake_columns", "columns"):
        cells = [(c, r) for r, c in cells]
    return cells


def orient_positions(positions: np.ndarray, axes: str) -> np.ndarray:
    """Recorded ``(y, x)`` positions turned into image axes by ``axes`` (:data:`STAGE_AXES`).

    Mirrors are taken about the middle of the positions' range, so the result covers
    the range the recorded positions did (positions are defined up to one translation
    anyway, and mirroring corners or centres gives the same layout).

    Raises
    ------
    ValueError
        For a name not in :data:`STAGE_AXES`.
    """
    if axes not in STAGE_AXES:
        raise ValueError(f"stage axes {axes!r}: expected one of {', '.join(STAGE_AXES)}")
    out = np.array(positions, np.float64, copy=True)
    if axes.startswith("swap_xy"):
        out = out[:, ::-1].copy()
    flips = axes.removeprefix("swap_xy").removeprefix("_")
    if not len(out):
        return out
    middle = (out.min(axis=0) + out.max(axis=0)) / 2
    if flips in ("flip_y", "flip_xy"):
        out[:, 0] = 2 * middle[0] - out[:, 0]
    if flips in ("flip_x", "flip_xy"):
        out[:, 1] = 2 * middle[1] - out[:, 1]
    return out


def layout_positions(
    layout: Layout, sites: Sequence[int], shape: tuple[int, int], pixel_size_um: float, where: str
) -> dict[int, tuple[float, float]]:
    """Top-left ``(y_um, x_um)`` of each site from a declared layout.

    Parameters
    ----------
    layout : Layout
        The declared layout.
    sites : sequence of int
        Site numbers of the files (as in the file names).
    shape : tuple of int
        Field ``(height, width)`` in pixels.
    pixel_size_um : float
        Pixel size.
    where : str
        Named in errors (the experiment field).

    Raises
    ------
    UserError
        When the layout's site count differs from the files', or a site number does
        not belong to the layout.
    """
    cells = layout_cells(layout)
    if len(cells) != len(sites):
        raise UserError(
            f"{where}: the declared layout has {len(cells)} sites but the files have "
            f"{len(sites)} (sites {min(sites)}..{max(sites)})"
        )
    step_y = shape[0] * pixel_size_um * (1 - layout.overlap_pct / 100)
    step_x = shape[1] * pixel_size_um * (1 - layout.overlap_pct / 100)
    out = {}
    for site in sites:
        k = site - layout.first_site
        if not 0 <= k < len(cells):
            raise UserError(
                f"{where}: site {site} is outside the layout (first_site {layout.first_site}, "
                f"{len(cells)} sites)"
            )
        r, c = cells[k]
        out[site] = (r * step_y, c * step_x)
    return out


def read_positions_csv(uri: str) -> dict[int, tuple[float, float]]:
    """``site -> (y_um, x_um)`` from a CSV with columns ``site, x_um, y_um``.

    Raises
    ------
    UserError
        When the file is missing, lacks a column, or has a value that is not a number or
        a site listed twice.
    """
    text = storage.read_bytes(uri).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("site", "x_um", "y_um") if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(
            f"{uri}: missing column(s) {', '.join(missing)}; expected site, x_um, y_um "
            f"(found {', '.join(reader.fieldnames or []) or 'no header'})"
        )
    out: dict[int, tuple[float, float]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            site = int(row["site"])
            x, y = float(row["x_um"]), float(row["y_um"])
        except (TypeError, ValueError) as exc:
            raise UserError(f"{uri}: line {line}: site, x_um and y_um must be numbers") from exc
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UserError(f"{uri}: line {line}: x_um and y_um must be finite")
        if site in out:
            raise UserError(f"{uri}: line {line}: site {site} is listed twice")
        out[site] = (y, x)
    return out


def read_plane(uri: str, index: int) -> np.ndarray:
    """Read one frame (page) of a multi-page TIFF, not the others; ranged reads on S3.

    Raises
    ------
    InputFileError
        When the file is unreadable or has no frame ``index``.
    """
    with open_ranged(uri) as fh:
        try:
            with tifffile.TiffFile(fh, is_ome=False) as tif:
                if index >= len(tif.pages):
                    raise InputFileError(
                        uri, f"expected at least {index + 1} frames, found {len(tif.pages)}"
                    )
                return tif.pages[index].asarray()
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(uri, f"not a readable TIFF ({_first_line(exc)})") from exc


# ------------------------------------------------------------------ reading regions

Box = tuple[slice, slice]


def read_boxes(
    uri: str,
    index: int,
    boxes: Sequence[Box],
    shape: tuple[int, int] | None = None,
    dtype: np.typing.DTypeLike = None,
    view: bool = False,
    layout: FrameLayout | None = None,
) -> list[np.ndarray]:
    """Read rectangles of one frame of a TIFF, decoding no more of it than they need.

    Microscopes mostly write uncompressed frames: their pixels are read as one ranged
    read of the rows the boxes span (local or S3), never decoded. Compressed or tiled
    frames (e.g. converted OME-TIFFs) have only the strips or tiles that touch a box
    read and decoded. Anything else (several samples per pixel, volumes) falls back to
    decoding the whole frame.

    Parameters
    ----------
    uri : str
        Local path or ``s3://`` URI.
    index : int
        Frame (page) of the file.
    boxes : sequence of (slice, slice)
        ``(rows, columns)`` with explicit, in-bounds starts and stops.
    shape : tuple of int, optional
        The frame's expected ``(height, width)`` (e.g. from the header of frame 0).
    dtype : numpy dtype, optional
        Give the boxes this dtype (converted while copied); default the file's.
    view : bool
        For a local uncompressed frame in native byte order (and no ``dtype``), return
        read-only views into a memory map of the file instead of copies: nothing is
        read until the boxes are used, then only the pages they touch (the map lives
        as long as a view does). Other frames are read as usual.
    layout : FrameLayout, optional
        Frame ``index``'s layout from :func:`read_ome_header`: with ``view``, the
        frame is mapped from it without parsing the file again.

    Returns
    -------
    list of numpy.ndarray
        One array per box: new (owned, native byte order), or views (``view``).

    Raises
    ------
    InputFileError
        When the file is unreadable, truncated, has no frame ``index`` or one of
        another shape.
    """
    if layout is not None and view and dtype is None and layout.index == index:
        mapped = _mapped_layout(uri, layout, boxes, shape)
        if mapped is not None:
            return mapped
    with open_ranged(uri) as fh:
        try:
            with tifffile.TiffFile(fh, is_ome=False) as tif:
                if index >= len(tif.pages):
                    raise InputFileError(
                        uri, f"expected at least {index + 1} frames, found {len(tif.pages)}"
                    )
                page = tif.pages[index]
                if shape is not None and tuple(page.shape[-2:]) != tuple(shape):
                    raise InputFileError(
                        uri, f"frame {index} is {tuple(page.shape)}, expected {tuple(shape)}"
                    )
                want = np.dtype(dtype if dtype is not None else page.dtype).newbyteorder("=")
                if page.ndim != 2 or page.samplesperpixel != 1 or page.imagedepth != 1:
                    whole = page.asarray()
                    return [np.array(whole[b], dtype=want) for b in boxes]
                if page.compression == 1 and page.is_contiguous:
                    native = np.dtype(page.dtype).newbyteorder(page.parent.byteorder) == want
                    if view and native and dtype is None and not storage.is_s3(uri):
                        return _mapped_boxes(uri, fh, page, boxes)
                    return _raw_boxes(uri, fh, page, boxes, want)
                return [b.astype(want, copy=False) for b in _segment_boxes(fh, page, boxes)]
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(uri, f"not a readable TIFF ({_first_line(exc)})") from exc


_scratch = threading.local()


def _row_buffer(nbytes: int) -> np.ndarray:
    """This thread's reusable byte buffer: fresh large allocations fault in every page."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _scratch.buf = np.empty(nbytes, np.uint8)
    return buf[:nbytes]


def _raw_boxes(
    uri: str, fh: IO[bytes], page: tifffile.TiffPage, boxes: Sequence[Box], dtype: np.dtype
) -> list[np.ndarray]:
    """Boxes of an uncompressed contiguous frame: one read of the rows they span."""
    _h, w = page.shape
    stored = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
    if not boxes:
        return []
    r0 = min(b[0].start for b in boxes)
    r1 = max(b[0].stop for b in boxes)
    nbytes = (r1 - r0) * w * stored.itemsize
    fh.seek(int(page.dataoffsets[0]) + r0 * w * stored.itemsize)
    buf = _row_buffer(nbytes)
    got = fh.readinto(memoryview(buf))  # type: ignore[attr-defined]
    if got != nbytes:
        raise InputFileError(uri, "truncated image data")
    rows = buf.view(stored).reshape(r1 - r0, w)
    return [np.array(rows[br.start - r0 : br.stop - r0, bc], dtype=dtype) for br, bc in boxes]


def _mapped_boxes(
    uri: str, fh: IO[bytes], page: tifffile.TiffPage, boxes: Sequence[Box]
) -> list[np.ndarray]:
    """Boxes of a local uncompressed contiguous frame as views into a memory map."""
    stored = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
    layout = FrameLayout(page.index, int(page.dataoffsets[0]), stored.str, tuple(page.shape))
    return _map_frame(uri, fh, layout, boxes)


def _mapped_layout(
    uri: str, layout: FrameLayout, boxes: Sequence[Box], shape: tuple[int, int] | None
) -> list[np.ndarray] | None:
    """:func:`_mapped_boxes` at a known layout, opening no TIFF; None where that cannot serve."""
    if storage.is_s3(uri) or not np.dtype(layout.dtype).isnative:
        return None
    if shape is not None and layout.shape != tuple(shape):
        raise InputFileError(
            uri, f"frame {layout.index} is {layout.shape}, expected {tuple(shape)}"
        )
    try:
        with open(storage.filesystem(uri)[1], "rb") as fh:
            return _map_frame(uri, fh, layout, boxes)
    except FileNotFoundError as exc:
        raise InputFileError(uri, "file not found") from exc


def _map_frame(
    uri: str, fh: IO[bytes], layout: FrameLayout, boxes: Sequence[Box]
) -> list[np.ndarray]:
    h, w = layout.shape
    stored = np.dtype(layout.dtype)
    if layout.offset + h * w * stored.itemsize > os.fstat(fh.fileno()).st_size:
        raise InputFileError(uri, "truncated image data")
    # The map keeps its own descriptor: it outlives the file handle, and is unmapped
    # when the last view of it is freed.
    mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    frame = np.frombuffer(mapped, stored, h * w, layout.offset).reshape(h, w)
    return [frame[b] for b in boxes]


def _segment_boxes(fh: IO[bytes], page: tifffile.TiffPage, boxes: Sequence[Box]) -> list:
    """Boxes of a compressed (or tiled) frame: decode only the segments that touch one."""
    h, w = page.shape
    if page.is_tiled:
        sh, sw = page.tilelength, page.tilewidth
    else:
        sh, sw = page.rowsperstrip or h, w
    across = -(-w // sw)
    out = [np.empty((b[0].stop - b[0].start, b[1].stop - b[1].start), page.dtype) for b in boxes]
    wanted: set[int] = set()
    for br, bc in boxes:
        for ty in range(br.start // sh, -(-br.stop // sh)):
            for tx in range(bc.start // sw, -(-bc.stop // sw)):
                wanted.add(ty * across + tx)
    decode = page.decode
    for k in sorted(wanted):
        fh.seek(int(page.dataoffsets[k]))
        data = fh.read(int(page.databytecounts[k]))
        seg, idx, _shape = decode(data, k, jpegtables=page.jpegtables)
        y0, x0 = int(idx[2]), int(idx[3])
        if seg is None:  # an empty segment: tifffile's fill value
            seg = np.zeros((1, sh, sw, 1), page.dtype)
        tile = seg[0, : min(sh, h - y0), : min(sw, w - x0), 0]
        for (br, bc), dst in zip(boxes, out, strict=True):
            ya, yb = max(br.start, y0), min(br.stop, y0 + tile.shape[0])
            xa, xb = max(bc.start, x0), min(bc.stop, x0 + tile.shape[1])
            if ya < yb and xa < xb:
                dst[ya - br.start : yb - br.start, xa - bc.start : xb - bc.start] = tile[
                    ya - y0 : yb - y0, xa - x0 : xb - x0
                ]
    return out
