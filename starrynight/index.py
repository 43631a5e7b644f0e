"""The index: one row per image of the dataset, and the checks that it is complete.

``WORKSPACE/index/index.parquet`` has the columns of
:data:`starrynight.pathgrammar.INDEX_SCHEMA` (dataset, source, batch, plate, arm, cycle,
magnification, plate_folder, well, site, channels, key, extension); the dataset root
URI is in the schema metadata under ``b"starrynight.dataset_root"``. Every inventory
row that is not an image goes to ``WORKSPACE/index/rejects.parquet`` with its reason.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from starrynight import inventory, storage, workspace
from starrynight.errors import UserError
from starrynight.pathgrammar import INDEX_SCHEMA, REJECTS_SCHEMA, load_grammar, parse_paths

ROOT_KEY = inventory.ROOT_KEY
GRAMMAR_KEY = b"starrynight.grammar"

_NOT_WORD = re.compile(r"[^A-Za-z0-9_]")


def normalise_channel(name: str) -> str:
    """A channel name fit for file names and CellProfiler-style columns.

    Drops every character outside ``[A-Za-z0-9_]``: ``"405 nm"`` -> ``"405nm"``,
    ``"ZO1-AF488"`` -> ``"ZO1AF488"``.
    """
    return _NOT_WORD.sub("", name)


def image_uri(root: str, key: str) -> str:
    """The URI of an image from the dataset root and its index ``key``."""
    return storage.join(root, *key.split("/"))


@dataclass
class IndexSummary:
    """What :func:`generate` wrote, for the one-line report."""

    images: int
    rejects: int
    per_arm: dict[str, int] = field(default_factory=dict)
    plates: int = 0
    wells: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    missing: int = 0

    def line(self) -> str:
        """One line: images per arm, plates, wells; rejects by reason; missing images."""
        arms = ", ".join(f"{arm} {n}" for arm, n in sorted(self.per_arm.items())) or "none"
        text = f"indexed {self.images} images ({arms}) in {self.plates} plate(s), "
        text += f"{self.wells} well(s); rejected {self.rejects}"
        if self.reject_reasons:
            text += " (" + ", ".join(f"{n} {r}" for r, n in self.reject_reasons.items()) + ")"
        return text + f"; missing {self.missing} image(s)"


def generate(
    inventory_uri: str, ws: str, grammar_path: str | None = None, experiment=None
) -> IndexSummary:
    """Parse an inventory into ``index/index.parquet`` and ``index/rejects.parquet``.

    Parameters
    ----------
    inventory_uri : str
        Inventory parquet, or a workspace holding ``inventory/inventory.parquet``.
    ws : str
        Workspace to write to.
    grammar_path : str, optional
        A pattern file for another naming scheme (see :mod:`starrynight.pathgrammar`).
    experiment : starrynight.experiment.Experiment, optional
        When given, the summary's missing images are counted against its cycles and
        channels (see :func:`completeness`).

    Returns
    -------
    IndexSummary

    Raises
    ------
    UserError
        When the inventory is missing or of another schema, or the pattern file is bad.
    """
    grammar = load_grammar(grammar_path)
    # The key is folder/name (see starrynight.inventory): rebuilding it from the two
    # split columns is cheaper than reading a third, long string column.
    table = inventory.load_inventory(inventory_uri, columns=["folder", "name"])
    root = inventory.dataset_root_of(table)
    folder, name = table.column("folder"), table.column("name")
    parsed = parse_paths(
        _join_keys(folder, name),
        grammar=grammar,
        default_dataset=_basename(root),
        folder=folder,
        name=name,
    )
    meta = {ROOT_KEY: root.encode(), GRAMMAR_KEY: grammar.name.encode()}
    rejects = parsed.rejects.replace_schema_metadata(meta)
    encoded = parsed.encoded.replace_schema_metadata(meta)
    # Writing the index (Arrow releases the GIL) overlaps the rejects and the summary.
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(_write, encoded, workspace.index_path(ws))
        _write(rejects, workspace.rejects_path(ws))
        channels = (parsed.channel_codes, parsed.channel_lists)
        summary = _summary(parsed.encoded, rejects, experiment, channels)
        written.result()
    return summary


def _join_keys(folder: pa.ChunkedArray, name: pa.ChunkedArray) -> pa.Array:
    """``folder/name`` per row (just ``name`` for files at the root)."""
    folder = _single_chunk(folder)
    name = _single_chunk(name)
    if pa.types.is_dictionary(folder.type):
        prefixes = [f"{f}/" if f else "" for f in folder.dictionary.to_pylist()]
        prefix = pa.DictionaryArray.from_arrays(folder.indices, pa.array(prefixes, pa.string()))
        prefix = prefix.cast(pa.string())
    else:
        prefix = pc.if_else(pc.equal(folder, ""), "", pc.binary_join_element_wise(folder, "", "/"))
    return pc.binary_join_element_wise(prefix, name.cast(pa.string()), "")


def _single_chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return column.chunk(0)
        if column.num_chunks == 0:
            return pa.array([], column.type)
        return column.combine_chunks()
    return column


def _basename(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1]


def _write(table: pa.Table, uri: str) -> None:
    """Write an index or rejects table as parquet.

    Dictionary-encoded columns are written as they are (parquet dictionary pages, no
    re-encoding); the Arrow schema is not stored, so every reader sees the plain types
    of :data:`INDEX_SCHEMA`. The unique ``key`` column skips dictionary encoding; only
    the columns queries filter on (plate, well, cycle, site) get min/max statistics,
    which cost as much as writing the other columns.
    """
    names = table.schema.names
    with_stats = [n for n in ("plate", "well", "cycle", "site") if n in names]
    with (
        storage.atomic_local_path(uri, suffix=".parquet") as tmp,
        pq.ParquetWriter(
            tmp,
            table.schema,
            compression="snappy",
            store_schema=False,
            use_dictionary=[n for n in names if n != "key"],
            write_statistics=with_stats or False,
        ) as writer,
    ):
        writer.write_table(table, row_group_size=1 << 20)
        if table.schema.metadata:
            writer.add_key_value_metadata(table.schema.metadata)


def _summary(
    encoded: pa.Table, rejects: pa.Table, experiment=None, channels: tuple | None = None
) -> IndexSummary:
    arm, arms = _codes(encoded.column("arm")) if encoded.num_rows else (np.zeros(0, int), [])
    counts = np.bincount(arm, minlength=len(arms)).tolist()
    per_arm = {a: n for a, n in zip(arms, counts, strict=True) if n}
    plates = wells = 0
    if encoded.num_rows:
        plate_key = np.zeros(encoded.num_rows, np.int64)
        for name in ("dataset", "source", "batch", "plate"):
            codes, values = _codes(encoded.column(name))
            plate_key = plate_key * max(len(values), 1) + codes
        well, well_values = _codes(encoded.column("well"))
        plates = len(_unique(plate_key))
        wells = len(_unique(plate_key * max(len(well_values), 1) + well))
    reasons = Counter(rejects.column("reason").to_pylist())
    missing = _completeness(encoded, experiment, channels).num_rows
    return IndexSummary(
        images=encoded.num_rows,
        rejects=rejects.num_rows,
        per_arm=per_arm,
        plates=plates,
        wells=wells,
        reject_reasons=dict(reasons.most_common()),
        missing=missing,
    )


def _connect(index_table: pa.Table, rejects: pa.Table | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("idx", index_table)
    con.execute('create view "index" as select * from idx')
    con.execute("create view images as select * from idx")
    con.register("rejects", rejects if rejects is not None else REJECTS_SCHEMA.empty_table())
    return con


def load_index(ws: str) -> pa.Table:
    """Read ``WORKSPACE/index/index.parquet``.

    Raises
    ------
    UserError
        When it is missing, unreadable or not of the index schema.
    """
    path = workspace.index_path(ws)
    if not storage.exists(path):
        raise UserError(f"{path}: no index; run 'starrynight index gen' first")
    table = inventory._read_parquet(path)
    for f in INDEX_SCHEMA:
        if f.name not in table.schema.names:
            raise UserError(f"{path}: not a starrynight index (no column {f.name!r})")
        if table.schema.field(f.name).type != f.type:
            got = table.schema.field(f.name).type
            raise UserError(f"{path}: column {f.name!r} is {got}, expected {f.type}")
    if ROOT_KEY not in (table.schema.metadata or {}):
        raise UserError(f"{path}: not a starrynight index (no dataset root in its metadata)")
    return table


def rows_of_plate(ws: str, table: pa.Table, plate: str, flag: str = "plate") -> pa.Table:
    """The rows of ``table`` (the workspace's index, or columns of it) of ``plate``.

    Raises
    ------
    UserError
        Naming ``flag`` (e.g. ``--plate``), the index and the plates it holds, when
        ``plate`` has no row.
    """
    rows = table.filter(pc.equal(table["plate"], plate))
    if rows.num_rows == 0:
        plates = sorted(set(table["plate"].to_pylist()))
        raise UserError(
            f"{flag} {plate!r}: not in the index {workspace.index_path(ws)} "
            f"(plates there: {', '.join(plates) or 'none'})"
        )
    return rows


def _arm_column(ws: str, column: str, plate: str, arm: str, well: str | None = None) -> list | None:
    """``column`` of the index rows of one arm of a plate (and well), None without index."""
    if not storage.exists(workspace.index_path(ws)):
        return None
    t = load_index(ws).select(list(dict.fromkeys(["plate", "well", "arm", column])))
    mask = pc.and_(pc.equal(t["plate"], plate), pc.equal(t["arm"], arm))
    if well is not None:
        mask = pc.and_(mask, pc.equal(t["well"], well))
    return t.filter(mask).column(column).to_pylist()


def well_channels(ws: str, plate: str, well: str, arm: str) -> list[str] | None:
    """Normalised channel names of one arm of a plate x well in the index, in frame order.

    None when the workspace has no index (see :func:`well_sites`).
    """
    rows = _arm_column(ws, "channels", plate, arm, well)
    if rows is None:
        return None
    seen: dict[str, None] = {}
    for channels in rows:
        for ch in channels:
            seen.setdefault(normalise_channel(ch), None)
    return list(seen)


def well_sites(ws: str, plate: str, well: str, arm: str) -> list[int] | None:
    """The sites of one arm of a plate x well in the workspace's index, sorted.

    These are the sites a per-well step must produce. None when the workspace has no
    index (inputs made by hand): the steps then take the sites their inputs have.
    """
    sites = _arm_column(ws, "site", plate, arm, well)
    return None if sites is None else sorted({int(s) for s in sites})


def plate_wells(ws: str, plate: str, arm: str) -> list[str] | None:
    """The wells of one arm of a plate in the workspace's index, sorted.

    None when the workspace has no index (see :func:`well_sites`).
    """
    wells = _arm_column(ws, "well", plate, arm)
    return None if wells is None else sorted(set(wells))


def load_rejects(ws: str) -> pa.Table:
    """Read ``WORKSPACE/index/rejects.parquet`` (empty table when absent)."""
    path = workspace.rejects_path(ws)
    if not storage.exists(path):
        return REJECTS_SCHEMA.empty_table()
    return inventory._read_parquet(path)


def dataset_root(ws: str) -> str:
    """The dataset root URI the workspace's index was built from."""
    path = workspace.index_path(ws)
    if not storage.exists(path):
        raise UserError(f"{path}: no index; run 'starrynight index gen' first")
    fs, inner = storage.filesystem(path)
    meta = pq.read_schema(inner, filesystem=fs).metadata or {}
    if ROOT_KEY not in meta:
        raise UserError(f"{path}: not a starrynight index (no dataset root in its metadata)")
    return meta[ROOT_KEY].decode()


MISSING_SCHEMA = pa.schema(
    [
        ("plate", pa.string()),
        ("well", pa.string()),
        ("site", pa.int32()),
        ("arm", pa.string()),
        ("cycle", pa.int32()),
        ("missing", pa.list_(pa.string())),
    ]
)


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Integer codes and the distinct values they stand for."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    elif len(pc.unique(column.dictionary)) != len(column.dictionary):
        column = pc.dictionary_encode(column.dictionary_decode())
    codes = column.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, column.dictionary.to_pylist()


def _channel_codes(channels: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[list[str]]]:
    if pa.types.is_dictionary(channels.type.value_type):
        channels = channels.cast(pa.list_(pa.string()))
    joined = pc.binary_join(channels, "\x1f")
    codes, values = _codes(joined)
    return codes, [v.split("\x1f") if v else [] for v in values]


def _unique(values: np.ndarray, return_counts: bool = False):
    """Sorted distinct non-negative integers (and counts), by counting when the range is small.

    numpy's hash-based ``np.unique`` is several times slower on a million codes.
    """
    top = int(values.max()) + 1 if len(values) else 0
    if top <= max(1 << 22, 8 * len(values)):
        counts = np.bincount(values, minlength=top)
        distinct = np.flatnonzero(counts)
        return (distinct, counts[distinct]) if return_counts else distinct
    ordered = np.sort(values)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    distinct = ordered[starts]
    if return_counts:
        return distinct, np.diff(np.r_[starts, len(ordered)])
    return distinct


def completeness(index_table: pa.Table, experiment=None) -> pa.Table:
    """Every image or channel that should exist but does not.

    Expected, per plate and arm: sites = every site seen in that well for that arm (any
    cycle); cycles = the experiment's cycles of the arm (CP: 0), or every cycle seen on
    the plate for that arm; channels = the experiment's channels of the arm, or every
    channel seen on the plate for that arm and cycle. Vectorised: rows are grouped by
    integer codes, and only incomplete groups are looked at one by one.

    Parameters
    ----------
    index_table : pyarrow.Table
        The index (plain or dictionary-encoded string columns).
    experiment : starrynight.experiment.Experiment, optional
        When given, its cycles and channels are what is expected.

    Returns
    -------
    pyarrow.Table
        Schema :data:`MISSING_SCHEMA`: one row per incomplete plate/well/site/arm/cycle;
        ``missing`` is ``["image"]`` when the file is absent, else the absent channels.
    """
    return _completeness(index_table, experiment)


def _completeness(
    index_table: pa.Table, experiment=None, channels: tuple | None = None
) -> pa.Table:
    """:func:`completeness`, optionally given the channel codes and lists already."""
    if index_table.num_rows == 0:
        return MISSING_SCHEMA.empty_table()
    rows = _IndexCodes.of(index_table, channels)
    exp_cycles, exp_chans, combos = _seen(rows)
    if experiment is not None:
        _expect_experiment(rows, experiment, exp_cycles, exp_chans)
    out = _missing_images(rows, exp_cycles) + _missing_channels(rows, exp_chans, combos)
    out.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    return pa.Table.from_pylist(
        [dict(zip(MISSING_SCHEMA.names, r, strict=True)) for r in out], schema=MISSING_SCHEMA
    )


@dataclass(frozen=True)
class _IndexCodes:
    """The index rows as integer codes, and the values the codes stand for.

    ``cyc`` is the position of the row's cycle in the sorted ``cyc_values``;
    ``plate_arm`` is ``plate * n_arm + arm``.
    """

    plate: np.ndarray
    plates: list
    well: np.ndarray
    wells: list
    arm: np.ndarray
    arms: list
    chan: np.ndarray
    chan_lists: list[list[str]]
    site: np.ndarray
    cycle: np.ndarray
    cyc: np.ndarray
    cyc_values: np.ndarray
    plate_arm: np.ndarray

    @classmethod
    def of(cls, index_table: pa.Table, channels: tuple | None) -> _IndexCodes:
        """Code a non-empty index; ``channels`` are its channel codes and lists, if known."""
        plate, plates = _codes(index_table.column("plate"))
        well, wells = _codes(index_table.column("well"))
        arm, arms = _codes(index_table.column("arm"))
        if channels is not None and channels[0] is not None:
            chan, chan_lists = channels[0].astype(np.int64), channels[1]
        else:
            chan, chan_lists = _channel_codes(index_table.column("channels"))
        site = index_table.column("site").to_numpy().astype(np.int64)
        cycle = index_table.column("cycle").to_numpy().astype(np.int64)
        cyc_values = _unique(cycle - cycle.min()) + cycle.min()
        cyc = np.searchsorted(cyc_values, cycle)
        return cls(
            plate, plates, well, wells, arm, arms, chan, chan_lists, site, cycle, cyc,
            cyc_values, plate * len(arms) + arm,
        )  # fmt: skip

    @property
    def n_arm(self) -> int:
        return len(self.arms)

    @property
    def n_cyc(self) -> int:
        return len(self.cyc_values)

    @property
    def chan_combo(self) -> np.ndarray:
        """Per row, a code of its (plate, arm, cycle, channel list)."""
        return (self.plate_arm * self.n_cyc + self.cyc) * len(self.chan_lists) + self.chan


def _seen(
    rows: _IndexCodes,
) -> tuple[dict[int, list[int]], dict[tuple[int, int], list[str]], np.ndarray]:
    """Expected cycles per plate x arm and channels per (plate x arm, cycle): those seen.

    Also returns the distinct (plate, arm, cycle, channel list) codes of the rows.
    """
    n_cyc, n_lists = rows.n_cyc, len(rows.chan_lists)
    exp_cycles: dict[int, list[int]] = {}
    exp_chans: dict[tuple[int, int], list[str]] = {}
    for pac in _unique(rows.plate_arm * n_cyc + rows.cyc).tolist():
        pa_code, c = divmod(pac, n_cyc)
        exp_cycles.setdefault(pa_code, []).append(int(rows.cyc_values[c]))
    combos = _unique(rows.chan_combo)
    for combo in combos.tolist():
        pac, ch = divmod(combo, n_lists)
        merged = exp_chans.setdefault(divmod(pac, n_cyc), [])
        merged += [c for c in rows.chan_lists[ch] if c not in merged]
    return exp_cycles, exp_chans, combos


def _expect_experiment(
    rows: _IndexCodes,
    experiment,
    exp_cycles: dict[int, list[int]],
    exp_chans: dict[tuple[int, int], list[str]],
) -> None:
    """Replace what is expected by the experiment's cycles and channels, per arm it has."""
    wanted = {}
    if experiment.cp is not None:
        wanted["cp"] = ([0], list(experiment.cp.channels))
    if experiment.sbs is not None:
        wanted["sbs"] = (list(experiment.sbs.cycles), list(experiment.sbs.channels))
    for pa_code in list(exp_cycles):
        arm_name = rows.arms[pa_code % rows.n_arm]
        if arm_name in wanted:
            cycles, chans = wanted[arm_name]
            exp_cycles[pa_code] = cycles
            for c in cycles:
                exp_chans[(pa_code, int(np.searchsorted(rows.cyc_values, c)))] = chans


def _missing_images(rows: _IndexCodes, exp_cycles: dict[int, list[int]]) -> list[tuple]:
    """Missing images: (plate, arm, well, site) groups with fewer cycles than expected."""
    n_cyc, n_wells, n_site = rows.n_cyc, len(rows.wells), int(rows.site.max()) + 1
    group = (rows.plate_arm * n_wells + rows.well) * n_site + rows.site
    gc = _unique(group * n_cyc + rows.cyc)
    groups, counts = _unique(gc // n_cyc, return_counts=True)
    per_plate_arm = np.zeros(len(rows.plates) * rows.n_arm, np.int64)
    for pa_code, cycles_wanted in exp_cycles.items():
        per_plate_arm[pa_code] = len(cycles_wanted)
    expected_n = per_plate_arm[groups // (n_wells * n_site)]
    suspicious = groups[counts != expected_n]
    if not len(suspicious):
        return []
    cyc_set_all = {k: set(v) for k, v in exp_cycles.items()}
    have: dict[int, set[int]] = {}
    for g_c in gc[np.isin(gc // n_cyc, suspicious)].tolist():
        g, c = divmod(g_c, n_cyc)
        have.setdefault(g, set()).add(int(rows.cyc_values[c]))
    out: list[tuple] = []
    for g, present in have.items():
        pw, s = divmod(g, n_site)
        pa_code, w = divmod(pw, n_wells)
        p, a = divmod(pa_code, rows.n_arm)
        for c in sorted(cyc_set_all[pa_code] - present):
            out.append((rows.plates[p], rows.wells[w], s, rows.arms[a], c, ["image"]))
    return out


def _missing_channels(
    rows: _IndexCodes, exp_chans: dict[tuple[int, int], list[str]], combos: np.ndarray
) -> list[tuple]:
    """Missing channels: rows whose channel list lacks an expected channel."""
    n_lists = len(rows.chan_lists)
    bad_combos = []
    for combo in combos.tolist():
        pac, ch = divmod(combo, n_lists)
        want = exp_chans.get(divmod(pac, rows.n_cyc))
        if want is not None and any(x not in rows.chan_lists[ch] for x in want):
            bad_combos.append(combo)
    if not bad_combos:
        return []
    out: list[tuple] = []
    for r in np.flatnonzero(np.isin(rows.chan_combo, bad_combos)).tolist():
        want = exp_chans[(int(rows.plate_arm[r]), int(rows.cyc[r]))]
        absent = [x for x in want if x not in rows.chan_lists[rows.chan[r]]]
        out.append(
            (
                rows.plates[rows.plate[r]],
                rows.wells[rows.well[r]],
                int(rows.site[r]),
                rows.arms[rows.arm[r]],
                int(rows.cycle[r]),
                absent,
            )
        )
    return out


def check(ws: str, experiment=None) -> pa.Table:
    """The missing images and channels of the workspace's index (see :func:`completeness`).

    ``experiment`` (optional) sets the expected cycles and channels; the index does not
    read it itself, as the experiment is validated against the index, not the reverse.
    """
    return completeness(load_index(ws), experiment)


def show(ws: str, experiment=None) -> list[dict]:
    """Rows of the per plate/well/arm/cycle summary printed by ``index show``.

    Each row: plate, well, arm, cycle, sites (images present), channels (comma
    separated, as written), missing (images or channel sets absent, from
    :func:`completeness`).
    """
    table = load_index(ws)
    missing = completeness(table, experiment)
    con = _connect(table)
    con.register("missing", missing)
    sql = """
    with present as (
        select plate, well, arm, cycle, count(*) as sites,
               string_agg(distinct array_to_string(channels, ','), ' | ') as channels
        from idx group by all
    ), gaps as (
        select plate, well, arm, cycle, count(*) as missing from missing group by all
    )
    select coalesce(p.plate, g.plate) as plate, coalesce(p.well, g.well) as well,
           coalesce(p.arm, g.arm) as arm, coalesce(p.cycle, g.cycle) as cycle,
           coalesce(p.sites, 0) as sites, coalesce(p.channels, '') as channels,
           coalesce(g.missing, 0) as missing
    from present p full join gaps g using (plate, well, arm, cycle)
    order by plate, well, arm, cycle
    """
    cols = ["plate", "well", "arm", "cycle", "sites", "channels", "missing"]
    return [dict(zip(cols, row, strict=True)) for row in con.sql(sql).fetchall()]


def query(ws: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Run DuckDB SQL over the index (tables ``index``/``images``) and ``rejects``.

    Returns
    -------
    tuple of (list of str, list of tuple)
        Column names and rows.

    Raises
    ------
    UserError
        When the SQL is invalid.
    """
    con = _connect(load_index(ws), load_rejects(ws))
    try:
        rel = con.sql(sql)
        if rel is None:
            return [], []
        return list(rel.columns), rel.fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"query failed: {first}") from exc
