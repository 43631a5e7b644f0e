"""The sensor that watches the dataset for new plate folders.

A plate folder is ``<source>/<batch>/images/<plate>`` below the dataset root (or one level
deeper when the root is above the dataset). A plate that has no partition yet is listed
each tick; it starts once its listing (file count, total size, newest modification time)
is unchanged since the previous tick and no file is newer than ``stable_seconds``, so a
plate still being copied waits. Starting means: add the ``plate`` partition and request
that plate's catalog and illumination run (plus the experiment if none exists yet). The
index adds the plate's wells as ``well`` partitions; the per-well assets and the gene
summary then follow by their automation conditions.
"""

import json
import time
from dataclasses import dataclass

import dagster as dg

from dagster_defs.assets.catalog import EXPERIMENT, INDEX, INVENTORY
from dagster_defs.assets.illum import ILLUM_CP, ILLUM_SBS
from dagster_defs.partitions import PLATE, plate_partitions, valid_key
from dagster_defs.resources import StarryNightProject
from starrynight import storage
from starrynight.errors import UserError

PLATE_ASSETS = [INVENTORY, INDEX, ILLUM_CP, ILLUM_SBS]


@dataclass(frozen=True)
class PlateListing:
    """What a plate folder holds now."""

    files: int
    bytes: int
    newest: float  # seconds since the epoch

    def signature(self) -> list[float]:
        return [self.files, self.bytes, self.newest]


def plate_folders(root: str) -> dict[str, list[str]]:
    """Plate name -> its folders (one per source/batch holding it) below ``root``."""
    found: dict[str, list[str]] = {}

    def scan(base: str) -> bool:
        hit = False
        for source in storage.list_dirs(base):
            for batch in storage.list_dirs(storage.join(base, source)):
                images = storage.join(base, source, batch, "images")
                for plate in storage.list_dirs(images):
                    found.setdefault(plate, []).append(storage.join(images, plate))
                    hit = True
        return hit

    if not scan(root):
        for dataset in storage.list_dirs(root):
            scan(storage.join(root, dataset))
    return found


def list_plate(folders: list[str]) -> PlateListing:
    """Count, size and newest modification time of every file of a plate."""
    files = size = 0
    newest = 0
    for folder in folders:
        for entry in storage.list_files(folder):
            files += 1
            size += entry.size
            newest = max(newest, entry.mtime_ns)
    return PlateListing(files, size, newest / 1e9)


def _experiment_exists(instance: dg.DagsterInstance) -> bool:
    return instance.get_latest_materialization_event(EXPERIMENT) is not None


def _new_plates(
    context: dg.SensorEvaluationContext, project: StarryNightProject
) -> dg.SensorResult | dg.SkipReason:
    """Start every plate folder that is new and no longer being written."""
    if not project.dataset_uri or not project.workspace_uri:
        return dg.SkipReason(
            "no project configured: set STARRYNIGHT_DATASET_URI and STARRYNIGHT_WORKSPACE_URI"
        )
    try:
        plates = plate_folders(project.dataset_uri)
    except UserError as exc:
        return dg.SkipReason(f"cannot list the dataset: {exc}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(PLATE))
    now = time.time()
    seen: dict[str, list[float]] = {}
    new: list[str] = []
    waiting: list[str] = []
    for plate in sorted(plates):
        if plate in known:
            continue
        if not valid_key(plate):
            context.log.warning(f"plate folder {plate!r} cannot be a partition key; ignored")
            continue
        listing = list_plate(plates[plate])
        sig = listing.signature()
        seen[plate] = sig
        quiet = now - listing.newest >= project.stable_seconds
        unchanged = cursor.get(plate, sig) == sig
        if listing.files and quiet and unchanged:
            new.append(plate)
        else:
            waiting.append(plate)
    run_requests = []
    creating = not _experiment_exists(context.instance)
    for i, plate in enumerate(new):
        if not creating:
            selection = list(PLATE_ASSETS)
        elif i == 0:
            selection = [*PLATE_ASSETS, EXPERIMENT]
        else:
            # The first plate's run creates the experiment; this plate's illumination
            # follows by automation once it exists.
            selection = [INVENTORY, INDEX]
        run_requests.append(
            dg.RunRequest(
                run_key=f"plate-{plate}",
                partition_key=plate,
                asset_selection=selection,
                tags={"starrynight/plate": plate, "starrynight/trigger": "new_plate"},
            )
        )
    if waiting:
        context.log.info(f"plates still being written (or empty): {waiting}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[plate_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps({p: s for p, s in seen.items() if p not in new}),
    )


#: Default seconds between two ticks of the sensors in a daemon.
TICK_SECONDS = 30


def make_new_plate_sensor(tick_seconds: int = TICK_SECONDS) -> dg.SensorDefinition:
    """The new-plate sensor, ticking at most every ``tick_seconds`` in a daemon."""

    @dg.sensor(
        name="new_plate_sensor",
        asset_selection=[*PLATE_ASSETS, EXPERIMENT],
        minimum_interval_seconds=tick_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a plate partition for each new, stable plate folder of the dataset "
        "and requests its catalog and illumination run.",
    )
    def new_plate_sensor(
        context: dg.SensorEvaluationContext, project: StarryNightProject
    ) -> dg.SensorResult | dg.SkipReason:
        """Start every plate folder that is new and no longer being written."""
        return _new_plates(context, project)

    return new_plate_sensor


def make_automation_sensor(tick_seconds: int = TICK_SECONDS) -> dg.SensorDefinition:
    """The daemon's evaluation of every asset's automation condition (the per-well runs
    and summaries that follow a plate), every ``tick_seconds``."""
    return dg.AutomationConditionSensorDefinition(
        "automation",
        target=dg.AssetSelection.all(),
        minimum_interval_seconds=tick_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests the runs whose upstream data changed or that are newly "
        "missing (wells of a new plate, its gene summary).",
    )


new_plate_sensor = make_new_plate_sensor()
