"""The sensor that watches the dataset for new plates and for new data of known plates.

A plate folder is ``<source>/<batch>/images/<plate>`` below the dataset root (or one level
deeper when the root is above the dataset); it holds one acquisition folder per arm and
SBS cycle. Each tick:

- a plate that has no partition yet is listed; it starts once its listing (file count,
  total size, newest modification time) is unchanged since the previous tick and no file
  is newer than ``stable_seconds``, so a plate still being copied waits. Starting means:
  add the ``plate`` partition and request that plate's catalog and illumination run
  (plus the experiment if none exists yet). The index adds the plate's wells as ``well``
  partitions; the per-well assets and the gene summary then follow by their automation
  conditions.
- a known plate is compared with what its last inventory recorded per acquisition
  folder (files, bytes, when the folder last changed). SBS is imaged over weeks: a cycle
  folder added later, or new wells' files in a folder, re-catalog that plate once the
  new files are stable in the same way. Only that plate's index changes, so only its
  products whose inputs changed follow (its SBS products for a new cycle). Locally a
  folder whose modification time is unchanged is not listed again; on S3, which has no
  folder times, the known plates' folders are listed each tick.

- a known plate's QC gate files (:mod:`starrynight.gates`) are read: when a reviewer's
  decision changed since the previous tick, a check-only run of that plate's gate check
  (``painting_approved`` / ``barcoding_approved``) is requested, so an approval lets what
  follows the gate start (by automation) and a closing stops new work.

The cursor keeps, per plate, the listing seen at the previous tick (``waiting``), the
listing a run was last requested for (``requested``): a catalog run that fails on the
data is not requested again until the data changes; and the version of each gate file a
check run was requested for (``gates``).
"""

import hashlib
import json
import time
from dataclasses import dataclass

import dagster as dg

from dagster_defs.assets.catalog import EXPERIMENT, FOLDERS_METADATA, INDEX, INVENTORY
from dagster_defs.assets.illum import ILLUM_CP, ILLUM_SBS
from dagster_defs.assets.qc import GATE_CHECKS
from dagster_defs.partitions import PLATE, plate_partitions, valid_key
from dagster_defs.resources import StarryNightProject
from starrynight import gates, storage
from starrynight.errors import UserError
from starrynight.inventory import normalise_root

PLATE_ASSETS = [INVENTORY, INDEX, ILLUM_CP, ILLUM_SBS]
#: Dagster's run tag of a partition (``dagster._core.storage.tags.PARTITION_NAME_TAG``).
PARTITION_TAG = "dagster/partition"
#: What a known plate with new data re-runs; the rest follows by automation.
CATALOG_ASSETS = [INVENTORY, INDEX]


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


def acquisitions(root: str, plate_folder_uris: list[str]) -> dict[str, str]:
    """Acquisition folders of a plate: key relative to ``root`` -> URI.

    Keys are spelled as the inventory's ``folder`` column spells them
    (``<source>/<batch>/images/<plate>/<folder>``).
    """
    base = normalise_root(root)
    found = {}
    for uri in plate_folder_uris:
        rel = normalise_root(uri)[len(base) :].strip("/")
        for name in storage.list_dirs(uri):
            found[f"{rel}/{name}"] = storage.join(uri, name)
    return found


def catalogued_folders(instance: dg.DagsterInstance, plate: str) -> dict[str, dict] | None:
    """Per acquisition folder, what the plate's last inventory recorded.

    ``None`` when the plate has no inventory yet; ``{}`` when its inventory predates
    the per-folder record (it is then catalogued again once).
    """
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=INVENTORY, asset_partitions=[plate]), limit=1
    ).records
    if not records:
        return None
    entry = records[0].asset_materialization.metadata.get(FOLDERS_METADATA)
    return dict(entry.value) if entry is not None else {}


def changed_folders(
    folders: dict[str, str], catalogued: dict[str, dict]
) -> tuple[dict[str, PlateListing], list[str]]:
    """Acquisition folders that differ from the catalogued record, listed; and the
    catalogued folders that are gone.

    A local folder whose modification time equals the recorded one is not listed: no
    entry of it was added, removed or renamed since.
    """
    listed: dict[str, PlateListing] = {}
    for key, uri in folders.items():
        seen = catalogued.get(key)
        recorded = seen.get("changed_ns") if seen is not None else None
        if recorded is not None and storage.folder_mtime_ns(uri) == recorded:
            continue
        listing = list_plate([uri])
        if seen is None or [listing.files, listing.bytes] != [seen["files"], seen["bytes"]]:
            listed[key] = listing
    return listed, sorted(set(catalogued) - set(folders))


def _experiment_exists(instance: dg.DagsterInstance) -> bool:
    return instance.get_latest_materialization_event(EXPERIMENT) is not None


def _load_cursor(text: str | None) -> tuple[dict[str, list], dict[str, str], dict[str, str]]:
    cursor = json.loads(text) if text else {}
    if "waiting" not in cursor and "requested" not in cursor:
        return cursor, {}, {}  # the cursor of an older sensor: plates seen waiting
    return cursor.get("waiting", {}), cursor.get("requested", {}), cursor.get("gates", {})


def _gate_requests(
    context: dg.SensorEvaluationContext,
    project: StarryNightProject,
    known: set[str],
    seen: dict[str, str],
) -> list[dg.RunRequest]:
    """Check-only runs of the gates of known plates whose decision changed; updates
    ``seen`` (``"<plate>/<gate>"`` -> gate file version)."""
    requests = []
    for plate in sorted(known):
        for gate, check in GATE_CHECKS.items():
            try:
                version = gates.gate_version(project.workspace_uri, plate, gate)
            except UserError as exc:
                context.log.warning(f"plate {plate} {gate} gate: cannot read it: {exc}")
                continue
            slot = f"{plate}/{gate}"
            if version is None or seen.get(slot) == version:
                continue
            seen[slot] = version
            context.log.info(f"plate {plate}: {gate} gate decision changed; checking it again")
            requests.append(
                dg.RunRequest(
                    run_key=f"gate-{plate}-{gate}-{version}",
                    partition_key=plate,
                    asset_selection=[],
                    asset_check_keys=[check],
                    # The partition as a tag too: Dagster resolves a request's partition
                    # from its assets, and one of only checks would take the sensor's
                    # whole target (plate and unpartitioned assets: the daemon refuses
                    # the tick). A resolved partition is how the daemon runs checks.
                    tags={
                        "starrynight/plate": plate,
                        "starrynight/trigger": f"{gate}_gate",
                        PARTITION_TAG: plate,
                    },
                )
            )
    return requests


def _digest(sig: object) -> str:
    return hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Observed:
    """What one tick sees of a plate folder: its signature, content and newest file."""

    sig: list
    content: list
    newest: float
    has_files: bool
    what: str


def _observe(
    project: StarryNightProject, plate_uri: str, catalogued: dict | None
) -> _Observed | None:
    """A new plate's listing, or what changed in a known plate's acquisition folders
    (None when nothing did)."""
    if catalogued is None:
        listing = list_plate(plate_uri)
        sig: list = listing.signature()
        return _Observed(sig, sig[:2], listing.newest, listing.files > 0, "new plate")
    folders = acquisitions(project.dataset_uri, plate_uri)
    listed, gone = changed_folders(folders, catalogued)
    if not listed and not gone:
        return None
    sig = [[k, *v.signature()] for k, v in sorted(listed.items())] + [gone]
    content = [[k, v.files, v.bytes] for k, v in sorted(listed.items())] + [gone]
    what = ", ".join(
        [f"{'new' if k not in catalogued else 'changed'} {k}" for k in listed]
        + [f"removed {k}" for k in gone]
    )
    newest = max((v.newest for v in listed.values()), default=0.0)
    return _Observed(sig, content, newest, True, what)


def _plate_request(
    context: dg.SensorEvaluationContext,
    plate: str,
    content: str,
    changed: str | None,
    creating: bool,
    first: bool,
) -> dg.RunRequest:
    """The run of a plate that starts (``changed`` None) or is catalogued again."""
    if changed is not None:
        selection, trigger = list(CATALOG_ASSETS), "plate_changed"
        context.log.info(f"plate {plate}: {changed}; cataloguing it again")
    elif not creating:
        selection, trigger = list(PLATE_ASSETS), "new_plate"
    elif first:
        selection, trigger = [*PLATE_ASSETS, EXPERIMENT], "new_plate"
    else:
        # The first plate's run creates the experiment; this plate's illumination
        # follows by automation once it exists.
        selection, trigger = [INVENTORY, INDEX], "new_plate"
    return dg.RunRequest(
        run_key=f"plate-{plate}-{content}",
        partition_key=plate,
        asset_selection=selection,
        tags={"starrynight/plate": plate, "starrynight/trigger": trigger},
    )


def _new_plates(
    context: dg.SensorEvaluationContext, project: StarryNightProject
) -> dg.SensorResult | dg.SkipReason:
    """Start every plate folder that is new, and re-catalog known plates with new data,
    once no longer being written."""
    if not project.dataset_uri or not project.workspace_uri:
        return dg.SkipReason(
            "no project configured: set STARRYNIGHT_DATASET_URI and STARRYNIGHT_WORKSPACE_URI"
        )
    try:
        plates = plate_folders(project.dataset_uri)
    except UserError as exc:
        return dg.SkipReason(f"cannot list the dataset: {exc}")
    previous, requested, gate_seen = _load_cursor(context.cursor)
    known = set(context.instance.get_dynamic_partitions(PLATE))
    now = time.time()
    seen: dict[str, list] = {}
    new: list[str] = []  # plates that start (no catalog yet)
    grown: dict[str, str] = {}  # known plates to catalog again -> what changed
    waiting: list[str] = []
    contents: dict[str, str] = {}
    for plate in sorted(plates):
        if not valid_key(plate):
            if plate not in known:
                context.log.warning(f"plate folder {plate!r} cannot be a partition key; ignored")
            continue
        catalogued = catalogued_folders(context.instance, plate) if plate in known else None
        try:
            seen_now = _observe(project, plates[plate], catalogued)
        except UserError as exc:
            context.log.warning(f"plate {plate}: cannot list it: {exc}")
            continue
        if seen_now is None or requested.get(plate) == _digest(seen_now.content):
            continue  # nothing new, or already requested for these files
        seen[plate] = seen_now.sig
        contents[plate] = _digest(seen_now.content)
        quiet = now - seen_now.newest >= project.stable_seconds
        unchanged = previous.get(plate, seen_now.sig) == seen_now.sig
        if seen_now.has_files and quiet and unchanged:
            if plate in known:
                grown[plate] = seen_now.what
            else:
                new.append(plate)
        else:
            waiting.append(plate)
    run_requests = []
    creating = not _experiment_exists(context.instance)
    first = True
    for plate in sorted([*new, *grown]):
        never = plate in new or catalogued_folders(context.instance, plate) is None
        changed = grown[plate] if plate in grown and not never else None
        run_requests.append(
            _plate_request(context, plate, contents[plate], changed, creating, first)
        )
        if changed is None and creating:
            first = False
        requested[plate] = contents[plate]
    run_requests += _gate_requests(context, project, known, gate_seen)
    if waiting:
        context.log.info(f"plates still being written (or empty): {waiting}")
    started = {*new, *grown}
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[plate_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(
            {
                "waiting": {p: s for p, s in seen.items() if p not in started},
                "requested": requested,
                "gates": gate_seen,
            }
        ),
    )


#: Default seconds between two ticks of the sensors in a daemon.
TICK_SECONDS = 30


def make_new_plate_sensor(tick_seconds: int = TICK_SECONDS) -> dg.SensorDefinition:
    """The new-plate sensor, ticking at most every ``tick_seconds`` in a daemon."""

    @dg.sensor(
        name="new_plate_sensor",
        asset_selection=dg.AssetSelection.assets(*PLATE_ASSETS, EXPERIMENT)
        | dg.AssetSelection.checks(*GATE_CHECKS.values()),
        minimum_interval_seconds=tick_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a plate partition for each new, stable plate folder of the dataset "
        "and requests its catalog and illumination run; catalogs a known plate again when "
        "an acquisition folder (an SBS cycle) or files (new wells) were added to it; "
        "checks a plate's QC gate again when a reviewer approved or closed it.",
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
