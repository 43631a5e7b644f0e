"""Reading and writing microscope images through :mod:`starrynight.storage`.

An image file holds all channels of one site: one page (frame) per channel, in the
order its file name lists them. Arrays are ``(channels, height, width)``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import tifffile

from starrynight import storage
from starrynight.errors import InputFileError

_reading = threading.local()


class _TiffWarnings(logging.Filter):
    """Keeps what tifffile logs while this thread reads an image, for our error line.

    tifffile logs its complaints about a damaged file ("invalid page offset ...") as
    warnings before it raises or returns fewer frames; the user should see one line
    from us that says what is wrong, not tifffile's internals before it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        kept = getattr(_reading, "messages", None)
        if kept is None:
            return True
        kept.append(record.getMessage())
        return False


logging.getLogger("tifffile").addFilter(_TiffWarnings())


@contextmanager
def _collect_tiff_warnings() -> Iterator[list[str]]:
    previous = getattr(_reading, "messages", None)
    _reading.messages = []
    try:
        yield _reading.messages
    finally:
        _reading.messages = previous


def read_image(uri: str, expected_channels: int | None = None) -> np.ndarray:
    """Read a (multi-page) TIFF as a ``(channels, height, width)`` array.

    Parameters
    ----------
    uri : str
        Local path or ``s3://`` URI of a ``.tif``/``.tiff``/``.ome.tiff`` file.
    expected_channels : int, optional
        When given, the file must hold exactly this many frames.

    Returns
    -------
    numpy.ndarray
        3-D array in the file's dtype.

    Raises
    ------
    InputFileError
        When the file is truncated, corrupt, not 2-D per frame, or has the wrong
        number of frames.
    """
    with _collect_tiff_warnings() as warned:
        try:
            if storage.is_s3(uri):
                data = storage.read_bytes(uri)
                arr = tifffile.imread(io.BytesIO(data), is_ome=False)
            else:
                arr = tifffile.imread(uri, is_ome=False)
        except FileNotFoundError as exc:
            raise InputFileError(uri, _not_found(uri)) from exc
        except InputFileError:
            raise
        except Exception as exc:  # tifffile raises many types for damaged files
            raise InputFileError(uri, f"not a readable TIFF ({_reason(exc)})") from exc
    damaged = f" (damaged: {_tifffile_message(warned[-1])})" if warned else ""
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise InputFileError(
            uri, f"expected frames of 2-D images, got array of shape {arr.shape}{damaged}"
        )
    if expected_channels is not None and arr.shape[0] != expected_channels:
        raise InputFileError(
            uri, f"expected {expected_channels} channel frames, found {arr.shape[0]}{damaged}"
        )
    return arr


def read_header(uri: str) -> tuple[int, tuple[int, int], np.dtype]:
    """Frames, frame shape and dtype of a TIFF, from its header (no pixels are read).

    On S3 the header is read with ranged reads of a random-access file.

    Raises
    ------
    InputFileError
        When the file is missing or not a readable TIFF.
    """
    try:
        # tifffile's complaints about a damaged header are not for the user: the file is
        # read (and reported, in one line) later.
        with _collect_tiff_warnings(), contextlib.ExitStack() as stack:
            if storage.is_s3(uri):
                fs, path = storage.filesystem(uri)
                handle = stack.enter_context(fs.open_input_file(path))
                tif = stack.enter_context(tifffile.TiffFile(handle, is_ome=False))
            else:
                tif = stack.enter_context(tifffile.TiffFile(uri, is_ome=False))
            page = tif.pages.first
            shape = tuple(int(n) for n in page.shape)
            n_frames = len(tif.pages)
            dtype = np.dtype(page.dtype)
    except FileNotFoundError as exc:
        raise InputFileError(uri, _not_found(uri)) from exc
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputFileError(uri, f"not a readable TIFF ({_reason(exc)})") from exc
    if len(shape) != 2:
        raise InputFileError(uri, f"expected frames of 2-D images, got frames of shape {shape}")
    return n_frames, (shape[0], shape[1]), dtype


def write_tiff(
    uri: str,
    image: np.ndarray,
    channel_names: Sequence[str] | None = None,
    ome: bool = False,
    compression: str | None = None,
    ome_uuid: str | None = None,
) -> None:
    """Write a 2-D image or a ``(channels, H, W)`` stack atomically.

    Parameters
    ----------
    uri : str
        Destination (local or ``s3://``).
    image : numpy.ndarray
        2-D image or 3-D stack, one page per channel.
    channel_names : sequence of str, optional
        Channel names recorded in OME metadata when ``ome`` is True.
    ome : bool
        Write OME-TIFF metadata (axes ``CYX``).
    compression : str, optional
        tifffile compression name (e.g. ``"zlib"``); uncompressed by default, as
        microscopes write them.
    ome_uuid : str, optional
        The OME document UUID; random when not given. Fixing it makes the file's
        bytes reproducible.
    """
    kwargs: dict[str, object] = {"compression": compression, "photometric": "minisblack"}
    if ome:
        meta: dict[str, object] = {"axes": "CYX" if image.ndim == 3 else "YX"}
        if channel_names is not None:
            meta["Channel"] = {"Name": list(channel_names)}
        if ome_uuid is not None:
            meta["UUID"] = ome_uuid
        kwargs["metadata"] = meta
        kwargs["ome"] = True
    else:
        kwargs["metadata"] = None
    with storage.atomic_local_path(uri, suffix=".tiff") as tmp:
        tifffile.imwrite(tmp, image, **kwargs)


def _tifffile_message(message: str) -> str:
    """tifffile's complaint without the reprs of its objects (``<tifffile.TiffPages @8>``)."""
    return re.sub(r"<[^<>]*>\s*", "", message).strip(" :")[:200] or message[:200]


def _not_found(uri: str) -> str:
    if not storage.is_s3(uri) and os.path.islink(uri):
        return f"dangling symbolic link (to {os.readlink(uri)}, which does not exist)"
    return "file not found"


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
