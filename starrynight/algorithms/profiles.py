"""Profiles and hits of a pooled screen, on arrays and data frames (no I/O).

The steps are the Cell Painting community's, done with its libraries:

- cell filters (no gene, field/well edge, outliers), each with its count;
- robust z-scores against the same plate's non-targeting controls, with pycytominer's
  ``RobustMAD`` (what ``pycytominer.normalize(method="mad_robustize")`` uses), fitted
  on the control cells and applied block by block in place, so memory stays that of
  the feature matrix;
- feature selection with ``pycytominer.feature_select`` (variance, missing values,
  correlation, blocklist) on a fixed-seed sample of rows, because its correlation
  matrix over every cell would cost far more than the choice it makes;
- medians per group (sgRNA, gene), column block by column block;
- phenotypic activity with copairs: the mean average precision (mAP) with which a
  gene's profiles retrieve each other against the non-targeting control profiles,
  its permutation p-value and the Benjamini-Hochberg q-value;
- guide consistency (mean pairwise cosine similarity of a gene's guide profiles) and
  the features that move most per gene.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Gene symbol of the non-targeting control guides unless configured otherwise.
CONTROL_LABEL = "NTC"

#: Features that describe where a cell is, not what it looks like (glob patterns).
LOCATION_PATTERNS = (
    "*_AreaShape_Center_*",
    "*_AreaShape_BoundingBox*",
    "*_AreaShape_Orientation",
    "*_Location_*",
    "*_Number_Object_Number",
    "*ObjectNumber*",  # a neighbour's label: an identifier, not a measurement
    "*_Parent_*",
    "*_Children_*",
)

#: ``pycytominer.feature_select`` operations, in the order they run.
SELECT_OPERATIONS = ("drop_na_columns", "variance_threshold", "correlation_threshold", "blocklist")


@dataclass(frozen=True)
class FilterCounts:
    """How many cells each filter removed (a cell counts under its first reason)."""

    total: int
    no_gene: int
    field_edge: int
    well_edge: int
    outliers: int

    @property
    def kept(self) -> int:
        """Cells left after every filter."""
        return self.total - self.no_gene - self.field_edge - self.well_edge - self.outliers


def normalize_to_controls(
    features: np.ndarray,
    controls: np.ndarray,
    block_rows: int = 65536,
    min_mad_fraction: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust z-score every row against the control rows, in place.

    ``(x - median) / (1.4826 * MAD)`` of the controls, as pycytominer's
    ``mad_robustize``. A feature without spread in the controls (MAD 0) or without
    finite control values cannot be scaled: its column becomes NaN (and is dropped
    later as missing) instead of dividing by pycytominer's 1e-18 epsilon. So does a
    feature whose control MAD is below ``min_mad_fraction`` of the controls' standard
    deviation: most controls share one value and a few differ (large-scale granularity
    is 0 in most cells), and dividing by the rounding-noise MAD gives z-scores of 1e13.

    Parameters
    ----------
    features : numpy.ndarray
        ``(cells, features)`` float matrix, overwritten with the z-scores.
    controls : numpy.ndarray
        Boolean mask of the control rows (at least one).
    block_rows : int
        Rows transformed at a time (bounds the temporary memory).
    min_mad_fraction : float
        Smallest control MAD, as a fraction of the controls' standard deviation, that
        scales a feature.

    Returns
    -------
    tuple of numpy.ndarray
        Control median and scaled MAD per feature; the MAD is NaN for a feature that
        could not be scaled.
    """
    from pycytominer.operations.transform import RobustMAD

    if not controls.any():
        raise ValueError("no control rows to normalise against")
    with warnings.catch_warnings():
        # All-NaN control columns: reported through the NaN MAD returned, not a warning.
        warnings.simplefilter("ignore")
        control_rows = features[controls]
        scaler = RobustMAD(epsilon=0.0).fit(pd.DataFrame(control_rows))
        spread = np.nanstd(control_rows, axis=0, dtype=np.float64)
    del control_rows
    median = scaler.median.to_numpy(np.float64)
    mad = scaler.mad.to_numpy(np.float64).copy()
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(median) & np.isfinite(mad) & (mad > 0)
        usable &= ~(mad < min_mad_fraction * spread)
    for start in range(0, features.shape[0], block_rows):
        block = features[start : start + block_rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            block[:] = scaler.transform(pd.DataFrame(block)).to_numpy(block.dtype)
        block[:, ~usable] = np.nan
    mad[~usable] = np.nan
    return median, mad


def outlier_cells(
    zscores: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    z: float = 10.0,
    fraction: float = 0.1,
    block_rows: int = 65536,
) -> np.ndarray:
    """Cells whose profile is extreme in many features at once (debris, clumps, blur).

    A cell is an outlier when more than ``fraction`` of its finite features have
    ``|z| > z``. A real phenotype moves some features by a few units; an artefact moves
    most of them by an order of magnitude, so a single feature is never enough.

    ``rows`` (indices) restricts the test to those rows without copying the matrix.

    Returns
    -------
    numpy.ndarray
        Boolean mask, one per row (of ``rows`` when given).
    """
    rows = np.arange(zscores.shape[0]) if rows is None else rows
    out = np.zeros(len(rows), bool)
    for start in range(0, len(rows), block_rows):
        block = zscores[rows[start : start + block_rows]]
        finite = np.isfinite(block)
        with np.errstate(invalid="ignore"):
            extreme = (np.abs(block) > z).sum(axis=1)
        n = finite.sum(axis=1)
        out[start : start + len(block)] = (n == 0) | (extreme > fraction * np.maximum(n, 1))
    return out


def blocklisted(names: Iterable[str], extra: Sequence[str] = ()) -> list[str]:
    """Names matching :data:`LOCATION_PATTERNS` or the glob patterns ``extra``."""
    patterns = (*LOCATION_PATTERNS, *extra)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def select_features(
    sample: pd.DataFrame,
    features: Sequence[str],
    *,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    blocklist: Sequence[str] = (),
    operations: Sequence[str] = SELECT_OPERATIONS,
) -> tuple[list[str], dict[str, list[str]]]:
    """Features kept by ``pycytominer.feature_select``, and why each other one went.

    Parameters
    ----------
    sample : pandas.DataFrame
        Normalised profiles (rows) with the ``features`` columns; a row sample is enough.
    features : sequence of str
        Candidate feature columns.
    na_cutoff, corr_threshold : float
        pycytominer's missing-fraction and Pearson-correlation thresholds.
    blocklist : sequence of str
        Glob patterns of features to drop besides :data:`LOCATION_PATTERNS` and
        pycytominer's packaged blocklist.
    operations : sequence of str
        Subset of :data:`SELECT_OPERATIONS`.

    Returns
    -------
    tuple
        Kept names (in input order) and ``{operation: dropped names}``.
    """
    from pycytominer import feature_select
    from pycytominer.cyto_utils.blocklist import get_blocklist_features

    unknown = set(operations) - set(SELECT_OPERATIONS)
    if unknown:
        raise ValueError(f"unknown feature selection operation(s) {sorted(unknown)}")
    remaining = list(features)
    dropped: dict[str, list[str]] = {}
    block = sorted(
        set(blocklisted(remaining, blocklist))
        | set(get_blocklist_features(population_df=sample[remaining]))
    )
    for op in SELECT_OPERATIONS:
        if op not in operations or not remaining:
            continue
        if op == "correlation_threshold" and len(remaining) < 2:
            continue
        frame = sample[remaining]
        if op != "drop_na_columns":
            # Missing values left after drop_na_columns (< na_cutoff) would make
            # pandas' variance and correlation skip rows unevenly; the control median
            # (0 after normalisation) is the neutral value.
            frame = frame.fillna(0.0)
        kept = feature_select(
            frame, features=remaining, operation=op, na_cutoff=na_cutoff,
            corr_threshold=corr_threshold, blocklist=block or ["__none__"],
        )  # fmt: skip
        gone = [f for f in remaining if f not in kept.columns]
        dropped[op] = gone
        remaining = [f for f in remaining if f in kept.columns]
    return remaining, dropped


def group_medians(
    values: np.ndarray,
    groups: pd.DataFrame,
    rows: np.ndarray | None = None,
    block_cols: int = 64,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Median of ``values`` per distinct row of ``groups`` (NaN ignored).

    Parameters
    ----------
    values : numpy.ndarray
        ``(rows, features)``.
    groups : pandas.DataFrame
        One key row per value row (per ``rows`` entry when given).
    rows : numpy.ndarray, optional
        Row indices of ``values`` to use (read block by block, never copied whole).
    block_cols : int
        Feature columns reduced at a time (bounds the temporary memory).

    Returns
    -------
    tuple
        The distinct keys (sorted), their medians ``(groups, features)`` in the
        values' dtype, and their row counts.
    """
    codes, keys = _group_codes(groups)
    counts = np.bincount(codes, minlength=len(keys))
    out = np.empty((len(keys), values.shape[1]), values.dtype)
    for start in range(0, values.shape[1], block_cols):
        cols = slice(start, start + block_cols)
        frame = pd.DataFrame(values[:, cols] if rows is None else values[rows, cols])
        out[:, start : start + block_cols] = (
            frame.groupby(codes, sort=True).median().reindex(range(len(keys))).to_numpy()
        )
    return keys, out, counts


def _group_codes(groups: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Integer code per row and the distinct key rows (sorted), for any key columns."""
    keys = groups.drop_duplicates().sort_values(list(groups.columns)).reset_index(drop=True)
    lookup = pd.MultiIndex.from_frame(keys)
    codes = lookup.get_indexer(pd.MultiIndex.from_frame(groups))
    return codes.astype(np.int64), keys


def phenotypic_activity(
    meta: pd.DataFrame,
    profiles: np.ndarray,
    *,
    gene: str = "gene_symbol",
    control_label: str = CONTROL_LABEL,
    null_size: int = 10000,
    seed: int = 0,
    threshold: float = 0.05,
) -> pd.DataFrame:
    """copairs mAP of each gene's profiles against the non-targeting control profiles.

    Each non-control profile is a query: its positives are the other profiles of the
    same gene, its negatives every control profile (genes are not compared with each
    other). The p-value comes from copairs' permutation null of the average precision
    for the same numbers of positives and negatives; q is its Benjamini-Hochberg
    correction over the genes that could be scored.

    Parameters
    ----------
    meta : pandas.DataFrame
        One row per profile with the ``gene`` column.
    profiles : numpy.ndarray
        ``(profiles, features)``, finite.
    gene : str
        Column naming the perturbed gene.
    control_label : str
        Value of ``gene`` for the non-targeting controls.
    null_size, seed : int
        Permutations of copairs' null distribution and its seed.
    threshold : float
        q-value below which a gene is a hit.

    Returns
    -------
    pandas.DataFrame
        One row per non-control gene: ``n_profiles``, ``mAP``, ``p_value``, ``q_value``,
        ``hit`` and ``activity_status`` (``scored`` or why it could not be).
    """
    import copairs.map as cmap

    genes = meta[gene].astype(str).to_numpy()
    is_control = genes == control_label
    n_profiles = pd.Series(genes[~is_control]).value_counts()
    out = pd.DataFrame({gene: sorted(n_profiles.index)})
    out["n_profiles"] = out[gene].map(n_profiles).astype(np.int64)
    out["mAP"] = np.nan
    out["p_value"] = np.nan
    out["q_value"] = np.nan
    out["hit"] = False
    out["activity_status"] = np.where(
        out["n_profiles"] < 2, "1 profile: no replicate to retrieve", "scored"
    )
    n_controls = int(is_control.sum())
    if n_controls == 0:
        out["activity_status"] = f"no {control_label} control profiles"
        return out
    scorable = set(out.loc[out["activity_status"] == "scored", gene])
    if not scorable:
        return out
    keep = is_control | np.isin(genes, list(scorable))
    pair_meta = pd.DataFrame({"gene": genes[keep]})
    # A distinct reference per control makes controls negatives to every gene and
    # positives to nothing; genes share reference -1, so they are never negatives of
    # each other (copairs' phenotypic-activity recipe).
    ref = np.full(len(pair_meta), -1, np.int64)
    ctrl_rows = np.flatnonzero(is_control[keep])
    ref[ctrl_rows] = np.arange(len(ctrl_rows))
    pair_meta["reference"] = ref
    feats = np.ascontiguousarray(profiles[keep], dtype=np.float64)
    ap = cmap.average_precision(
        pair_meta, feats, pos_sameby=["gene", "reference"], pos_diffby=[], neg_sameby=[],
        neg_diffby=["gene", "reference"], progress_bar=False,
    )  # fmt: skip
    ap = ap[ap["gene"] != control_label]
    scores = cmap.mean_average_precision(
        ap, sameby=["gene"], null_size=null_size, threshold=threshold, seed=seed,
        progress_bar=False, max_workers=1,
    ).set_index("gene")  # fmt: skip
    rows = out[gene].isin(scores.index)
    idx = out.loc[rows, gene]
    out.loc[rows, "mAP"] = scores.loc[idx, "mean_average_precision"].to_numpy()
    out.loc[rows, "p_value"] = scores.loc[idx, "p_value"].to_numpy()
    out.loc[rows, "q_value"] = scores.loc[idx, "corrected_p_value"].to_numpy()
    out["hit"] = out["q_value"].lt(threshold).to_numpy()
    return out


def guide_consistency(guide_genes: np.ndarray, guide_profiles: np.ndarray) -> dict[str, float]:
    """Mean pairwise cosine similarity of each gene's guide profiles (NaN below 2 guides).

    Guides that knock out the same gene should move the cells the same way; a gene
    whose activity rests on one guide shows a low value here.
    """
    norms = np.linalg.norm(guide_profiles, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(norms > 0, guide_profiles / norms, 0.0)
    out: dict[str, float] = {}
    for g in np.unique(guide_genes):
        rows = unit[guide_genes == g]
        if len(rows) < 2:
            out[str(g)] = float("nan")
            continue
        sim = rows @ rows.T
        k = len(rows)
        out[str(g)] = float((sim.sum() - np.trace(sim)) / (k * (k - 1)))
    return out


def top_features(profile: np.ndarray, names: Sequence[str], k: int = 5) -> str:
    """The ``k`` features furthest from the controls, as ``name (+z.z); ...``."""
    finite = np.flatnonzero(np.isfinite(profile))
    if not finite.size:
        return ""
    order = finite[np.argsort(-np.abs(profile[finite]), kind="stable")][:k]
    return "; ".join(f"{names[i]} ({profile[i]:+.2f})" for i in order)
