"""What both sample generators draw with: the optics, the stains and the files.

The shared-grid sample (:mod:`starrynight.sample`) and the real-geometry sample
(:mod:`starrynight.sample_geometry`) render cells the same way: this module holds the
point-spread function, the bases and their crosstalk, the illumination fields, the
Cell Painting stain patterns and the OME-TIFF writer, so neither generator imports the
other's internals.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage
from skimage.segmentation import find_boundaries

from starrynight import storage
from starrynight.roles import NUCLEAR_NAMES

BASES = ("A", "C", "G", "T")
STAGE_ORIGIN_UM = (5000.0, 5000.0)  # stage coordinates of well A1's centre
WELL_PITCH_UM = 9000.0
#: Share of each base's dye seen in its spectral neighbour's channel.
CROSSTALK = {("A", "C"): 0.25, ("C", "A"): 0.2, ("G", "T"): 0.25, ("T", "G"): 0.2}
PSF_SIGMA = 1.3


@functools.lru_cache(maxsize=32)
def illumination_field(spec: Any, arm: str, index: int) -> np.ndarray:
    """The true multiplicative illumination field of one channel (float32, mean 1).

    A radial vignetting falloff whose centre, strength and tilt differ per channel,
    as with real widefield optics.
    """
    rng = np.random.default_rng([spec.seed, 31, 0 if arm == "cp" else 1, index])
    n = spec.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1) - 0.5
    cy, cx = rng.uniform(-0.15, 0.15, size=2)
    strength = rng.uniform(0.9, 1.4)
    tilt_y, tilt_x = rng.uniform(-0.15, 0.15, size=2)
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    f = np.exp(-strength * r2 * 2.0) * (1.0 + tilt_y * yy + tilt_x * xx)
    f = (f / f.mean()).astype(np.float32)
    f.setflags(write=False)  # cached and shared: nobody may modify it
    return f


@dataclass
class _Scene:
    nuclei: np.ndarray  # int32 labels on the padded canvas
    cells: np.ndarray
    brightness: np.ndarray  # per label, nuclear stain
    cyto: np.ndarray  # per label, cytoplasm stain
    barcode_of: np.ndarray  # per label, index into barcodes (-1 for background)
    spots: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # y, x, amplitude, label


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return t / (t.std() + 1e-9)


def _cp_signal(scene: _Scene, channel: str, role: int, rng: np.random.Generator) -> np.ndarray:
    shape = scene.nuclei.shape
    nuc = scene.nuclei > 0
    cell = scene.cells > 0
    if NUCLEAR_NAMES.search(channel):
        tex = 1 + 0.15 * _texture(rng, shape, 1.5)
        s = scene.brightness[scene.nuclei] * nuc * tex
        return (0.02 + s).astype(np.float32)
    kind = role % 3
    if kind == 0:  # cytoplasm with cortical actin brighter at the cell edge
        edge = find_boundaries(scene.cells, mode="inner")
        s = scene.cyto[scene.cells] * (0.35 * cell + 0.8 * edge) * (1 - 0.5 * nuc)
    elif kind == 1:  # membrane / junctions
        edge = find_boundaries(scene.cells, mode="inner")
        s = scene.cyto[scene.cells] * (0.08 * cell + 1.0 * edge)
    else:  # punctate organelles in the cytoplasm
        speck = np.clip(_texture(rng, shape, 1.0) - 0.8, 0, None)
        s = scene.cyto[scene.cells] * (cell & ~nuc) * (0.15 + speck)
    return (0.03 + s).astype(np.float32)


def _file_uuid(spec: Any, path: str) -> str:
    """A UUID fixed by the seed and the file's name, so output bytes are reproducible."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"starrynight-sample/{spec.seed}/{Path(path).name}"))


def write_ome(
    path: str,
    planes: np.ndarray,
    channels,
    ome_uuid: str,
    pixel_um: float,
    position_um: tuple[float, float] | None,
) -> None:
    """An OME-TIFF with ``PhysicalSizeX/Y`` and, per plane, the stage ``PositionX/Y``."""
    meta: dict[str, object] = {
        "axes": "CYX",
        "Channel": {"Name": list(channels)},
        "UUID": ome_uuid,
        "PhysicalSizeX": pixel_um,
        "PhysicalSizeY": pixel_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }
    if position_um is not None:
        k = planes.shape[0]
        meta["Plane"] = {
            "PositionX": [round(position_um[1], 4)] * k,
            "PositionY": [round(position_um[0], 4)] * k,
            "PositionXUnit": ["µm"] * k,
            "PositionYUnit": ["µm"] * k,
        }
    with storage.atomic_local_path(path, suffix=".tiff") as tmp:
        tifffile.imwrite(tmp, planes, photometric="minisblack", metadata=meta, ome=True)


def stage_centre(well_index: int) -> np.ndarray:
    """Stage coordinates (um, y x) of a well's centre (wells in a row, 9 mm apart)."""
    return np.array([STAGE_ORIGIN_UM[0], STAGE_ORIGIN_UM[1] + well_index * WELL_PITCH_UM])
