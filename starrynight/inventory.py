"""The inventory: every file of a dataset, listed once, as a parquet table.

``WORKSPACE/inventory/inventory.parquet`` holds one row per file: ``key`` (path relative
to the dataset root), ``size``, ``mtime``, and the key split into ``folder``
(dictionary-encoded: a dataset has few folders) and ``name``, which lets the index parse
folders once per folder instead of once per file. The dataset root URI is stored in the
schema metadata under ``b"starrynight.dataset_root"``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from starrynight import storage, workspace
from starrynight.errors import UserError

ROOT_KEY = b"starrynight.dataset_root"
VERSION_KEY = b"starrynight.inventory_version"
VERSION = b"1"

INVENTORY_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.timestamp("ns")),
        ("folder", pa.dictionary(pa.int32(), pa.string())),
        ("name", pa.string()),
    ]
)


@dataclass(frozen=True)
class InventorySummary:
    """What :func:`generate` wrote."""

    path: str
    files: int
    bytes: int
    replaced_plate_rows: int = 0
    #: Keys of symbolic links whose target does not exist (not inventoried).
    dangling: tuple[str, ...] = ()


def normalise_root(uri: str) -> str:
    """The canonical form of a dataset root: absolute local path or ``s3://b/p``."""
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return storage.filesystem(uri)[1]


def _schema(root: str) -> pa.Schema:
    return INVENTORY_SCHEMA.with_metadata({ROOT_KEY: root.encode(), VERSION_KEY: VERSION})


def _to_batch(batch: storage.ListingBatch, root: str) -> pa.RecordBatch:
    folder = pc.dictionary_encode(pa.array(batch.folders, pa.string()))
    names = pa.array(batch.names, pa.string())
    # key = folder/name, joined by Arrow over the few distinct folders.
    prefixes = [f"{f}/" if f else "" for f in folder.dictionary.to_pylist()]
    prefix = pa.DictionaryArray.from_arrays(folder.indices, pa.array(prefixes, pa.string()))
    keys = pc.binary_join_element_wise(prefix.cast(pa.string()), names, "")
    return pa.RecordBatch.from_arrays(
        [
            keys,
            pa.array(batch.sizes, pa.int64()),
            pa.array(batch.mtimes_ns, pa.int64()).cast(pa.timestamp("ns")),
            folder,
            names,
        ],
        schema=_schema(root),
    )


def _write_batch(writer: pq.ParquetWriter, batch: storage.ListingBatch, root: str) -> None:
    writer.write_batch(_to_batch(batch, root))


def find_plate_folders(root: str, plate: str) -> list[str]:
    """Folders ``[<dataset>/]<source>/<batch>/images/<plate>`` below ``root``.

    Only the top two or three levels are listed, so a new plate is found without
    listing the dataset.

    Raises
    ------
    UserError
        When no such folder exists.
    """
    found = []
    for a in storage.list_dirs(root):
        for b in storage.list_dirs(storage.join(root, a)):
            if plate in storage.list_dirs(storage.join(root, a, b, "images")):
                found.append(f"{a}/{b}/images/{plate}")
            for c in storage.list_dirs(storage.join(root, a, b)):
                if c != "images" and plate in storage.list_dirs(
                    storage.join(root, a, b, c, "images")
                ):
                    found.append(f"{a}/{b}/{c}/images/{plate}")
    if not found:
        raise UserError(
            f"{root}: plate {plate!r} not found (looked for <source>/<batch>/images/{plate} "
            "and <dataset>/<source>/<batch>/images/" + plate + ")"
        )
    return found


def acquisition_folders(root: str, plate: str) -> dict[str, str]:
    """The acquisition folders of ``plate`` (its CP folder, one per SBS cycle, ...).

    Returns
    -------
    dict
        Key relative to ``root`` (``<source>/<batch>/images/<plate>/<folder>``, as the
        inventory's ``folder`` column spells it) -> the folder's URI.
    """
    root = normalise_root(root)
    found: dict[str, str] = {}
    for plate_folder in find_plate_folders(root, plate):
        for name in storage.list_dirs(storage.join(root, plate_folder)):
            found[f"{plate_folder}/{name}"] = storage.join(root, plate_folder, name)
    return found


def acquisition_folder(folder: str, plate: str) -> str:
    """The acquisition folder (key relative to the root) holding a file of ``folder``."""
    parts = folder.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "images" and parts[i + 1] == plate:
            return "/".join(parts[: i + 3])
    return folder


def folder_totals(folders: list[str], sizes: list[int], plate: str) -> dict[str, list[int]]:
    """Files and bytes per acquisition folder of ``plate``, from inventory rows."""
    totals: dict[str, list[int]] = {}
    cache: dict[str, str] = {}
    for folder, size in zip(folders, sizes, strict=True):
        if folder not in cache:
            cache[folder] = acquisition_folder(folder, plate)
        entry = totals.setdefault(cache[folder], [0, 0])
        entry[0] += 1
        entry[1] += size
    return totals


def _progress(enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A counter on stderr when it is a terminal; no-ops otherwise."""
    if not enabled:
        return (lambda _n: None), (lambda: None)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("listing: {task.completed:,} files"),
        TimeElapsedColumn(),
        transient=True,
    )
    progress.start()
    task = progress.add_task("list", total=None)
    return (lambda n: progress.advance(task, n)), progress.stop


def generate(
    dataset: str,
    ws: str,
    plate: str | None = None,
    progress: bool | None = None,
    batch_size: int = 65536,
) -> InventorySummary:
    """List every file of ``dataset`` into ``WORKSPACE/inventory/inventory.parquet``.

    Parameters
    ----------
    dataset : str
        Dataset root (local folder or ``s3://bucket/prefix``); keys are relative to it.
    ws : str
        Workspace folder or S3 prefix.
    plate : str, optional
        Only list this plate's folders (``.../images/<plate>``) and merge them into the
        existing inventory: that plate's previous rows are replaced, other plates' rows
        are kept. Without an existing inventory it holds just this plate.
    progress : bool, optional
        Show a counter on stderr; by default only when stderr is a terminal.
    batch_size : int
        Files per record batch written.

    Returns
    -------
    InventorySummary

    Raises
    ------
    UserError
        The dataset does not exist, is empty, the plate is not found, or the existing
        inventory (with ``plate``) belongs to another dataset.
    """
    root = normalise_root(dataset)
    if not storage.is_s3(root) and not storage.is_dir(root):
        problem = "is a file, expected a folder" if storage.exists(root) else "no such folder"
        raise UserError(f"{dataset}: {problem}")
    out = workspace.inventory_path(ws)
    previous: pa.Table | None = None
    prefixes = [""]
    if plate is not None:
        prefixes = find_plate_folders(root, plate)
        if storage.exists(out):
            previous = load_inventory(out)
            old_root = dataset_root_of(previous)
            if old_root != root:
                raise UserError(
                    f"{out}: inventory of {old_root}, not {root}; "
                    "use another workspace or list the whole dataset (no --plate)"
                )
    if progress is None:
        progress = sys.stderr.isatty()
    advance, stop = _progress(progress)
    files = total_bytes = replaced = 0
    dangling: list[str] = []
    schema = _schema(root)
    try:
        with storage.atomic_local_path(out, suffix=".parquet") as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                if previous is not None:
                    keep = _outside(previous.column("key"), prefixes)
                    replaced = previous.num_rows - pc.sum(keep).as_py() if len(previous) else 0
                    kept = previous.filter(keep).cast(schema)
                    if kept.num_rows:
                        writer.write_table(kept)
                        files += kept.num_rows
                        total_bytes += pc.sum(kept.column("size")).as_py() or 0
                # Converting and writing a batch (Arrow releases the GIL) overlaps
                # listing the next one; at most one batch is in flight.
                with ThreadPoolExecutor(max_workers=1) as pool:
                    pending = None
                    for batch in _listing(root, prefixes, batch_size):
                        dangling += batch.dangling
                        if not batch:
                            continue
                        if pending is not None:
                            pending.result()
                        pending = pool.submit(_write_batch, writer, batch, root)
                        files += len(batch)
                        total_bytes += sum(batch.sizes)
                        advance(len(batch))
                    if pending is not None:
                        pending.result()
            if files == 0:
                raise UserError(f"{dataset}: no files found (empty dataset)")
    finally:
        stop()
    return InventorySummary(out, files, total_bytes, replaced, tuple(dangling))


def _listing(root: str, prefixes: list[str], batch_size: int) -> Iterator[storage.ListingBatch]:
    for prefix in prefixes:
        yield from storage.list_batches(root, batch_size=batch_size, prefix=prefix)


def _outside(keys: pa.ChunkedArray, prefixes: list[str]) -> pa.ChunkedArray:
    inside = None
    for prefix in prefixes:
        hit = pc.starts_with(keys, prefix + "/")
        inside = hit if inside is None else pc.or_(inside, hit)
    return pc.invert(inside)


def dataset_root_of(table: pa.Table) -> str:
    """The dataset root URI recorded in an inventory or index table's metadata."""
    meta = table.schema.metadata or {}
    return meta.get(ROOT_KEY, b"").decode()


def load_inventory(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read an inventory parquet and check its schema.

    Parameters
    ----------
    uri : str
        The inventory file, or a workspace holding ``inventory/inventory.parquet``.
    columns : list of str, optional
        Read only these columns (all by default).

    Raises
    ------
    UserError
        When the file is missing, is not parquet, or is not an inventory.
    """
    path = _inventory_file(uri)
    fs, inner = storage.filesystem(path)
    try:
        names = pq.read_schema(inner, filesystem=fs).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({_first_line(exc)})") from exc
    wanted = columns if columns is not None and set(columns) <= set(names) else None
    table = _read_parquet(path, wanted)
    missing = [f.name for f in INVENTORY_SCHEMA if f.name not in names]
    if missing or ROOT_KEY not in (table.schema.metadata or {}):
        what = f"lacks column(s) {', '.join(missing)}" if missing else "lacks the dataset root"
        raise UserError(
            f"{path}: not a starrynight inventory ({what}); "
            "expected the output of 'starrynight inventory gen'"
        )
    for f in INVENTORY_SCHEMA:
        if f.name not in table.schema.names:
            continue
        actual = table.schema.field(f.name).type
        if actual != f.type and not (f.name == "folder" and pa.types.is_string(actual)):
            raise UserError(f"{path}: column {f.name!r} is {actual}, expected {f.type}")
        nulls = table.column(f.name).null_count
        if nulls and f.name in ("key", "folder", "name"):
            raise UserError(
                f"{path}: column {f.name!r} has {nulls} empty value(s); expected a path"
            )
    return table


def _inventory_file(uri: str) -> str:
    if storage.is_dir(uri):
        candidate = workspace.inventory_path(uri)
        if not storage.exists(candidate):
            raise UserError(f"{uri}: no inventory/inventory.parquet in this workspace")
        return candidate
    if not storage.exists(uri):
        raise UserError(f"{uri}: inventory file not found")
    return uri


def _read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, inner = storage.filesystem(path)
    try:
        return pq.read_table(inner, filesystem=fs, columns=columns)
    except PermissionError as exc:
        raise UserError(f"{path}: permission denied, cannot read it") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
