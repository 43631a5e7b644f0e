"""Per-plate ``inventory`` and ``index``, and the project's ``experiment``.

The inventory and the index are one file each for the whole workspace; the per-plate
partition is the plate's rows (``inventory gen --plate P`` replaces them, ``index gen``
re-parses). Writers of these shared files take a lock and run in the Dagster pool
``starrynight_catalog`` so two plates never rewrite them at once.
"""

import contextlib
import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from dagster_defs.assets.common import (
    digest,
    fail_if_any,
    node_metadata,
    run_env,
    step_deps,
    step_spec,
)
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import WELL, plate_partitions, valid_key
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import registry, storage
from starrynight import workspace as wsp
from starrynight.errors import UserError
from starrynight.inventory import acquisition_folders, folder_totals
from starrynight.pipelines import (
    CATALOG_STEPS,
    catalog_pipeline,
    experiment_pipeline,
    nodes_of,
)

INVENTORY = dg.AssetKey("inventory")
INDEX = dg.AssetKey("index")
EXPERIMENT = dg.AssetKey("experiment")
CATALOG_POOL = "starrynight_catalog"
#: Inventory metadata: acquisition folder -> files, bytes, when it last changed.
FOLDERS_METADATA = "folders"


@contextlib.contextmanager
def catalog_lock(ws: str) -> Iterator[None]:
    """Exclusive lock on this machine for rewriting the workspace's inventory/index."""
    name = hashlib.sha1(ws.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"starrynight-catalog-{name}.lock"
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _folder_times(dataset: str, plate: str) -> dict[str, int | None]:
    try:
        folders = acquisition_folders(dataset, plate)
    except UserError:
        return {}  # the catalog run itself says the plate is not there
    return {key: storage.folder_mtime_ns(uri) for key, uri in folders.items()}


def plate_index(ws: str, plate: str):
    """The index rows of ``plate`` (a pyarrow table)."""
    from starrynight.index import load_index

    table = load_index(ws)
    return table.filter(pc.equal(table.column("plate"), plate))


@dg.multi_asset(
    specs=[step_spec(name, automated=False, skippable=True) for name in CATALOG_STEPS],
    partitions_def=plate_partitions,
    can_subset=True,
    pool=CATALOG_POOL,
)
def catalog(
    context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
) -> Iterator[dg.MaterializeResult]:
    """List the plate's files and index them; add the plate's wells as partitions."""
    dataset, ws = project.require()
    plate = context.partition_key
    steps = [k.path[-1] for k in (INVENTORY, INDEX) if k in context.selected_asset_keys]
    pipeline = catalog_pipeline(dataset, ws, plate, backend.runner(run_env(context)), steps)
    # When each acquisition folder last changed, taken before listing: the new-plate
    # sensor compares it to tell which folders of a known plate need listing again.
    changed_ns = _folder_times(dataset, plate) if "inventory" in steps else {}
    with catalog_lock(ws):
        outcome = run_pipeline(context, backend, pipeline, ws)
    nodes = {s: nodes_of(s, outcome.states) for s in steps}
    if "inventory" in steps and outcome.ok(nodes["inventory"]):
        from starrynight.inventory import load_inventory

        inv = load_inventory(ws, columns=["key", "size", "folder"])
        mine = pc.match_substring(inv.column("key"), f"/images/{plate}/")
        rows = inv.filter(mine)
        keys = sorted(rows.column("key").to_pylist())
        totals = folder_totals(
            rows.column("folder").cast("string").to_pylist(),
            rows.column("size").to_pylist(),
            plate,
        )
        folders = {
            f: {"files": n, "bytes": b, "changed_ns": changed_ns.get(f)}
            for f, (n, b) in sorted(totals.items())
        }
        yield dg.MaterializeResult(
            asset_key=INVENTORY,
            metadata={
                "path": dg.MetadataValue.path(wsp.inventory_path(ws)),
                "files": rows.num_rows,
                "bytes": int(pc.sum(rows.column("size")).as_py() or 0),
                FOLDERS_METADATA: dg.MetadataValue.json(folders),
                **node_metadata(outcome, nodes["inventory"]),
            },
            data_version=digest([*keys, *map(str, rows.column("size").to_pylist())]),
        )
    if "index" in steps and outcome.ok(nodes["index"]):
        rows = plate_index(ws, plate)
        wells = sorted(set(rows.column("well").to_pylist()))
        good = [w for w in wells if valid_key(w)]
        bad = sorted(set(wells) - set(good))
        if bad:
            context.log.warning(f"wells {bad} cannot be Dagster partition keys; not added")
        new = [w for w in good if not context.instance.has_dynamic_partition(WELL, w)]
        if new:
            context.instance.add_dynamic_partitions(WELL, new)
            context.log.info(f"added well partitions {new}")
        arms = rows.column("arm").to_pylist()
        cycles = sorted(
            {c for c, a in zip(rows.column("cycle").to_pylist(), arms, strict=True) if a == "sbs"}
        )
        content = sorted(
            f"{k}|{','.join(ch)}"
            for k, ch in zip(
                rows.column("key").to_pylist(), rows.column("channels").to_pylist(), strict=True
            )
        )
        yield dg.MaterializeResult(
            asset_key=INDEX,
            metadata={
                "path": dg.MetadataValue.path(wsp.index_path(ws)),
                "images": rows.num_rows,
                "cp_images": arms.count("cp"),
                "sbs_images": arms.count("sbs"),
                "sbs_cycles": ", ".join(map(str, cycles)) or "none",
                "wells": ", ".join(wells),
                "sites": len(set(rows.column("site").to_pylist())),
                **node_metadata(outcome, nodes["index"]),
            },
            data_version=digest(content),
        )
    fail_if_any(outcome, f"catalog of plate {plate}")


@dg.asset(
    key=EXPERIMENT,
    deps=step_deps(registry.step("experiment")),
    description=registry.step("experiment").description,
    group_name=registry.step("experiment").group,
)
def experiment(
    context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
) -> dg.MaterializeResult:
    """Validate the experiment (the user's file, or the template guessed from the index)."""
    _, ws = project.require()
    pipeline = experiment_pipeline(ws, backend.runner(run_env(context)), project.experiment_file)
    outcome = run_pipeline(context, backend, pipeline, ws)
    fail_if_any(outcome, "experiment")
    from starrynight.experiment import load_experiment

    try:
        exp = load_experiment(ws)
    except UserError as exc:
        raise dg.Failure(description=str(exc)) from None
    raw = storage.read_bytes(wsp.experiment_path(ws))
    md: dict[str, object] = {
        "path": dg.MetadataValue.path(wsp.experiment_path(ws)),
        "source": project.experiment_file or "template guessed from the index",
    }
    if exp.cp is not None:
        md["cp_roles"] = dg.MetadataValue.json(dict(exp.cp.roles))
    if exp.sbs is not None:
        md["sbs_roles"] = dg.MetadataValue.json(dict(exp.sbs.roles))
        md["sbs_cycles"] = ", ".join(map(str, exp.sbs.cycles))
    return dg.MaterializeResult(metadata=md, data_version=digest([raw]))
