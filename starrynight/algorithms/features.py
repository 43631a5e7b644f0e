"""Per-cell phenotype measurements: CellProfiler's families, with CellProfiler's names.

For nuclei, cells and cytoplasm (the cell minus its nucleus), every family that PCPIP's
9_Analysis pipeline reports:

=================  ===========================================  =======================
family             CellProfiler module                          computed by
=================  ===========================================  =======================
``shape``          MeasureObjectSizeShape (+ Zernike, Feret)    ``cp_measure``
``intensity``      MeasureObjectIntensity (CellProfiler         ``cp_measure``
                   quartiles, ``legacy=True``)
``texture``        MeasureTexture (Haralick, 256 levels,        ours
                   4 directions, several scales)                (:mod:`.haralick`)
``granularity``    MeasureGranularity                           ``cp_measure``
``radial``         MeasureObjectIntensityDistribution           ``cp_measure``
``colocalization`` MeasureColocalization (Pearson, slope,       ``cp_measure``
                   Manders, RWC) per channel pair
``neighbors``      MeasureObjectNeighbors (expand until         ``cp_measure``
                   adjacent)
=================  ===========================================  =======================

``cp_measure`` reimplements CellProfiler's modules function by function; texture is
our own because CellProfiler's per-object mahotas call costs ~100x more for the same
numbers (``tests/starrynight/test_features_haralick.py`` shows agreement to 1e-9,
``bench/bench_features.py`` both speeds). Columns: ``<Object>_<Family>_<Feature>_<Ch>
[_<suffix>]`` as CellProfiler writes them (``Cells_Texture_Contrast_DAPI_3_00_256``,
``Nuclei_Intensity_MeanIntensity_DAPI``, ``Cytoplasm_RadialDistribution_FracAtD_DAPI_1of4``,
``Cells_Correlation_Correlation_DAPI_Mito``, ``Cells_AreaShape_Zernike_2_2``).
Intensities are scaled to [0, 1] by the dtype's range, as CellProfiler does.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from starrynight.algorithms.haralick import haralick_features

OBJECTS = ("Nuclei", "Cells", "Cytoplasm")
FAMILIES = ("shape", "intensity", "texture", "granularity", "radial", "colocalization", "neighbors")
TEXTURE_SCALES = (3, 5, 10)
#: cp_measure's MeasureObjectNeighbors columns ("expand until adjacent"), in its order.
NEIGHBOURS = tuple(
    f"Neighbors_{k}_Expanded"
    for k in ("NumberOfNeighbors", "FirstClosestObjectNumber", "FirstClosestDistance",
              "SecondClosestObjectNumber", "SecondClosestDistance", "AngleBetweenNeighbors",
              "PercentTouching")
)  # fmt: skip
NEIGHBOUR_ZERO = {NEIGHBOURS[0], NEIGHBOURS[-1]}


def _scale(image: np.ndarray) -> np.ndarray:
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    return image.astype(np.float64)


def cytoplasm(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Cell labels with the nuclei removed (CellProfiler's IdentifyTertiaryObjects)."""
    return np.where(nuclei > 0, 0, cells)


def touches_border(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """True for the ``ids`` whose object touches the image border (cut off by the field)."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.isin(ids, edge[edge > 0])


def _cp() -> dict[str, Callable[..., dict[str, np.ndarray]]]:
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    # Labels are relabelled to 1..N here (see _per_object); legacy: CellProfiler's n*q
    # quartiles.
    core = get_core_measurements(legacy=True, sanitize=False)
    return {**core, **get_correlation_measurements(sanitize=False)}


def _per_object(
    labels: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Labels relabelled 1..N, the original id of each, and its row in ``ids``."""
    from cp_measure._sanitize import sanitize_masks

    clean, present = sanitize_masks(labels)
    if present.size == 0:
        return None
    rows = np.searchsorted(ids, present)
    ok = (rows < len(ids)) & (ids[np.minimum(rows, len(ids) - 1)] == present)
    if not ok.all():
        # An object without a cell of the same id: not a row of the table.
        clean = np.where(np.isin(labels, present[~ok]), 0, labels)
        return _per_object(clean, ids)
    return clean.astype(np.int32), present, rows


def _place(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    v = np.asarray(values, np.float64).ravel()
    out[rows] = v[: len(rows)]
    return out


def _channel_name(key: str, channel: str) -> str:
    """cp_measure key -> CellProfiler column tail with the channel in its place."""
    parts = key.split("_")
    if parts[0] == "Location":  # Location_CenterMassIntensity_X -> ..._X_<Ch>
        return f"{key}_{channel}"
    return "_".join([parts[0], parts[1], channel, *parts[2:]])


def _shape_families(
    obj: str, clean: np.ndarray, rows: np.ndarray, n: int, families: Sequence[str]
) -> dict[str, np.ndarray]:
    """Size/shape (with Zernike and Feret) and neighbours: the families without images."""
    cp = _cp()
    out: dict[str, np.ndarray] = {}
    if "shape" in families:
        for fn in ("sizeshape", "zernike", "feret"):
            kw = {"calculate_advanced": False} if fn == "sizeshape" else {}
            for key, v in cp[fn](clean, None, **kw).items():
                out[f"{obj}_AreaShape_{key}"] = _place(v, rows, n)
    if "neighbors" in families and obj != "Cytoplasm":
        from cp_measure.multimask.measureobjectneighbors import measureobjectneighbors

        if len(rows) >= 2:
            neighbours = measureobjectneighbors(clean, clean)
        else:  # cp_measure fails on a lone object; CellProfiler: no neighbours
            neighbours = {k: [0.0 if k in NEIGHBOUR_ZERO else np.nan] for k in NEIGHBOURS}
        for key, v in neighbours.items():
            out[f"{obj}_{key}"] = _place(v, rows, n)
    return out


def _channel_families(
    obj: str, clean: np.ndarray, rows: np.ndarray, n: int, ch: str, image: np.ndarray,
    families: Sequence[str], texture_scales: Sequence[int],
) -> dict[str, np.ndarray]:  # fmt: skip
    """Intensity, texture, granularity and radial distribution of one channel."""
    cp = _cp()
    out: dict[str, np.ndarray] = {}
    if "intensity" in families:
        for key, v in cp["intensity"](clean, image).items():
            if key.endswith("_Z"):  # 2-D images: no Z
                continue
            out[f"{obj}_{_channel_name(key, ch)}"] = _place(v, rows, n)
    if "texture" in families:
        for scale in texture_scales:
            for key, v in haralick_features(clean, image, scale).items():
                feat, _, suffix = key.partition("_")  # Contrast_3_00_256
                out[f"{obj}_Texture_{feat}_{ch}_{suffix}"] = _place(v, rows, n)
    if "granularity" in families:
        for key, v in cp["granularity"](clean, image).items():
            out[f"{obj}_{_channel_name(key, ch)}"] = _place(v, rows, n)
    if "radial" in families:
        for key, v in cp["radial_distribution"](clean, image).items():
            name = key.replace("RadialDistribution_", "")
            feat, _, suffix = name.partition("_")
            out[f"{obj}_RadialDistribution_{feat}_{ch}_{suffix}"] = _place(v, rows, n)
    return out


def _colocalization(
    obj: str, clean: np.ndarray, rows: np.ndarray, n: int, channels: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Pearson, slope, Manders and RWC of every channel pair."""
    cp = _cp()
    out: dict[str, np.ndarray] = {}
    for (a, ia), (b, ib) in itertools.combinations(channels.items(), 2):
        r = cp["pearson"](ia, ib, clean)
        out[f"{obj}_Correlation_Correlation_{a}_{b}"] = _place(r["Correlation_Pearson"], rows, n)
        out[f"{obj}_Correlation_Slope_{a}_{b}"] = _place(r["Correlation_Slope"], rows, n)
        for fn, name in (("manders_fold", "Manders"), ("rwc", "RWC")):
            r = cp[fn](ia, ib, clean)
            out[f"{obj}_Correlation_{name}_{a}_{b}"] = _place(r[f"Correlation_{name}_1"], rows, n)
            out[f"{obj}_Correlation_{name}_{b}_{a}"] = _place(r[f"Correlation_{name}_2"], rows, n)
    return out


def _object_families(
    obj: str,
    labels: np.ndarray,
    ids: np.ndarray,
    channels: Mapping[str, np.ndarray],
    families: Sequence[str],
    texture_scales: Sequence[int],
) -> dict[str, np.ndarray]:
    n = len(ids)
    placed = _per_object(labels, ids)
    if placed is None:
        return {}
    clean, _, rows = placed
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Undefined measurements (one-pixel objects, flat images) are NaN, as in
        # CellProfiler; their warnings say nothing more.
        warnings.simplefilter("ignore")
        out = _shape_families(obj, clean, rows, n, families)
        for ch, image in channels.items():
            out.update(_channel_families(obj, clean, rows, n, ch, image, families, texture_scales))
        if "colocalization" in families:
            out.update(_colocalization(obj, clean, rows, n, channels))
    return out


def measure_cells(
    nuclei: np.ndarray,
    cells: np.ndarray,
    channels: Mapping[str, np.ndarray],
    *,
    families: Sequence[str] = FAMILIES,
    texture_scales: Sequence[int] = TEXTURE_SCALES,
) -> dict[str, np.ndarray]:
    """Every feature of every cell, for its nucleus, the cell and its cytoplasm.

    Parameters
    ----------
    nuclei, cells : numpy.ndarray
        Label images sharing ids (cell ``i`` contains nucleus ``i``).
    channels : mapping of str to numpy.ndarray
        Normalised channel name to image (same shape as the labels).
    families : sequence of str
        Subset of :data:`FAMILIES`.
    texture_scales : sequence of int
        Haralick distances in pixels.

    Returns
    -------
    dict of str to numpy.ndarray
        ``label`` plus one float64 column per feature (the names of
        :func:`feature_names`, in that order), one row per cell label, sorted; NaN
        where an object is absent (a cell without a nucleus) or a value is undefined.
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown feature families {sorted(unknown)}; expected {FAMILIES}")
    for name, image in channels.items():
        if image.shape != cells.shape:
            raise ValueError(f"channel {name}: shape {image.shape} differs from {cells.shape}")
    if nuclei.shape != cells.shape:
        raise ValueError(f"nuclei shape {nuclei.shape} differs from cells {cells.shape}")
    ids = np.unique(cells)
    ids = ids[ids > 0].astype(np.int64)
    scaled = {ch: _scale(img) for ch, img in channels.items()}
    names = feature_names(tuple(channels), tuple(families), tuple(texture_scales))
    measured: dict[str, np.ndarray] = {}
    if ids.size:
        objects = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm(nuclei, cells)}
        for obj, labels in objects.items():
            measured |= _object_families(obj, labels, ids, scaled, families, texture_scales)
    out: dict[str, np.ndarray] = {"label": ids.astype(np.int32)}
    # Every column, in one order, even for objects absent from this site (an empty
    # site's table has the well's schema).
    for name in names:
        out[name] = measured.get(name, np.full(len(ids), np.nan))
    return out


def feature_names(
    channels: Sequence[str],
    families: Sequence[str] = FAMILIES,
    texture_scales: Sequence[int] = TEXTURE_SCALES,
) -> list[str]:
    """Names of the feature columns :func:`measure_cells` gives for ``channels``, in order.

    Found by measuring a small synthetic site (two cells with nuclei), so they are
    exactly what the measurement functions produce.

    Examples
    --------
    >>> names = feature_names(("DAPI",))
    >>> "Cells_Texture_Contrast_DAPI_3_00_256" in names, "Cytoplasm_AreaShape_Area" in names
    (True, True)
    """
    return list(_feature_names(tuple(channels), tuple(families), tuple(texture_scales)))


@functools.lru_cache(maxsize=32)
def _feature_names(
    channels: tuple[str, ...], families: tuple[str, ...], texture_scales: tuple[int, ...]
) -> tuple[str, ...]:
    yy, xx = np.mgrid[0:48, 0:64]
    cells = np.zeros((48, 64), np.int32)
    cells[(yy - 24) ** 2 + (xx - 18) ** 2 < 15**2] = 1
    cells[(yy - 24) ** 2 + (xx - 46) ** 2 < 13**2] = 2
    nuclei = np.where(((yy - 24) ** 2 + (xx - 18) ** 2 < 6**2), 1, 0)
    nuclei = np.where(((yy - 24) ** 2 + (xx - 46) ** 2 < 5**2), 2, nuclei).astype(np.int32)
    rng = np.random.default_rng(0)
    images = {ch: rng.uniform(0.1, 0.9, cells.shape) for ch in channels}
    ids = np.array([1, 2], np.int64)
    names: list[str] = []
    objects = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm(nuclei, cells)}
    for obj, labels in objects.items():
        names += list(_object_families(obj, labels, ids, images, families, texture_scales))
    return tuple(names)
