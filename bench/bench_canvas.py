"""Canvas page render times for a 20-plate project (384 wells each).

Seeds a SQLite Conductor database and workspace with one project of 20 plates x 384
wells x 4 sites (CP + 3 SBS cycles: 122,880 indexed images), the real asset graph's
Dagster instance with dynamic partitions and materialisations (every per-plate asset,
``corrected_cp`` for one well in eight), 40 finished runs and 80 illumination heat-maps.
Then times each Canvas page through the app in-process (TestClient), first request
(cold caches) and the median of repeated ones, and prints each with its ratio against
the ``/api/v1`` JSON call for the same data measured in the same run. Target: every
page under ~300 ms. Last, a new server process on the same data (as after a restart)
times its very first request of the heaviest pages: at once, and after the background
warm-up that loads Dagster and the code location.

Usage: ``.venv/bin/python bench/bench_canvas.py [--plates 20] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token-0123456789abcdef"
MODULE = "dagster_defs.definitions"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a1b1c5d80000000049454e44ae426082"
)


COLD_PAGES = ("plate map, 20 plates", "well detail", "compare")


def wells384() -> list[str]:
    return [f"{r}{c}" for r in string.ascii_uppercase[:16] for c in range(1, 25)]


def write_index(ws: Path, dataset: Path, plates: list[str], sites: int) -> int:
    from starrynight import index

    rows: dict[str, list] = {f.name: [] for f in index.INDEX_SCHEMA}
    arms = [("cp", 0, ["PhalloAF750", "ZO1-AF488", "DAPI"])]
    arms += [("sbs", k, ["C", "A", "T", "G", "DAPI"]) for k in (1, 2, 3)]
    for plate in plates:
        for well in wells384():
            for site in range(sites):
                for arm, cycle, channels in arms:
                    folder = f"20X_CP_{plate}" if arm == "cp" else f"10X_c{cycle}_SBS-{cycle}"
                    name = f"Well{well}_Point{well}_{site:04d}_Channel{','.join(channels)}"
                    values = {
                        "dataset": "sample", "source": "source_1", "batch": "Batch1",
                        "plate": plate, "arm": arm, "cycle": cycle,
                        "magnification": "20X" if arm == "cp" else "10X",
                        "plate_folder": folder, "well": well, "site": site,
                        "channels": channels, "extension": ".ome.tiff",
                        "key": f"source_1/Batch1/images/{plate}/{folder}/{name}_Seq0001.ome.tiff",
                    }  # fmt: skip
                    for k in rows:
                        rows[k].append(values[k])
    meta = {index.ROOT_KEY: str(dataset).encode(), index.GRAMMAR_KEY: b"cell-painting-gallery"}
    table = pa.table(rows, schema=index.INDEX_SCHEMA).replace_schema_metadata(meta)
    (ws / "index").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, ws / "index" / "index.parquet")
    rejects = index.REJECTS_SCHEMA.empty_table().replace_schema_metadata(meta)
    pq.write_table(rejects, ws / "index" / "rejects.parquet")
    return table.num_rows


def seed_dagster(settings, project_id: int, plates: list[str]) -> int:
    import dagster as dg

    from conductor import runs

    inst = runs.instance(settings, project_id)
    wells = wells384()
    inst.add_dynamic_partitions("plate", plates)
    inst.add_dynamic_partitions("well", wells)
    n = 0
    for asset in ("inventory", "index", "illum_cp", "illum_sbs"):
        for plate in plates:
            inst.report_runless_asset_event(dg.AssetMaterialization(asset, partition=plate))
            n += 1
    inst.report_runless_asset_event(dg.AssetMaterialization("experiment"))
    for plate in plates:
        for well in wells[::8]:
            key = dg.MultiPartitionKey({"plate": plate, "well": well})
            inst.report_runless_asset_event(dg.AssetMaterialization("corrected_cp", partition=key))
            n += 1
    return n


def seed_runs(settings, project_id: int, plates: list[str], count: int) -> list[int]:
    from conductor import db
    from conductor.models import Run

    maker = db.make_sessionmaker(db.make_engine(settings.database_url))
    ids = []
    with maker() as session:
        start = datetime.now(UTC) - timedelta(days=1)
        for i in range(count):
            plan = [
                {"run_id": str(uuid.uuid4()), "assets": ["corrected_cp"],
                 "partition": f"{plates[i % len(plates)]}|{w}",
                 "values": {"plate": plates[i % len(plates)], "well": w}}
                for w in wells384()[:24]
            ]  # fmt: skip
            run = Run(project_id=project_id, selection={"assets": ["corrected_cp"],
                      "plates": [plates[i % len(plates)]], "wells": [], "stale_only": False},
                      plan=plan, status="SUCCESS", created_by="bench",
                      created_at=start + timedelta(minutes=i),
                      finished_at=start + timedelta(minutes=i, seconds=30))  # fmt: skip
            session.add(run)
            session.flush()
            ids.append(run.id)
        session.commit()
    return ids


def seed_qc(ws: Path, plates: list[str]) -> None:
    for plate in plates:
        folder = ws / "illum" / plate
        folder.mkdir(parents=True, exist_ok=True)
        channels = []
        for ch in ("PhalloAF750", "ZO1-AF488", "DAPI", "Mito"):
            (folder / f"{plate}_Illum{ch}.png").write_bytes(PNG)
            channels.append({"channel": ch, "file": f"{plate}_Illum{ch}.npy", "dark_level": 100})
        stats = {"n_images": 1536, "channels": channels}
        (folder / f"{plate}_IllumStats.json").write_text(json.dumps(stats))


def timed(client, url: str, repeat: int) -> tuple[float, float]:
    """(first, median of ``repeat``) milliseconds; fails loudly on a non-200."""
    out = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return out[0], statistics.median(out[1:])


def make_settings(url: str, data_dir: Path):
    from conductor.settings import Settings, parse_tokens

    return Settings(database_url=url, data_dir=data_dir,
                    tokens=parse_tokens(f"bench:{TOKEN}:rw", "bench"),
                    dagster_module=MODULE)  # fmt: skip


def cold_child(spec: dict) -> None:
    """In a fresh process: build the app, time the first request of each page (JSON out)."""
    from fastapi.testclient import TestClient

    from conductor.app import create_app

    t = time.perf_counter()
    app = create_app(make_settings(spec["url"], Path(spec["data_dir"])))
    out = {"build": (time.perf_counter() - t) * 1000}
    if spec["warm"]:
        for thread in threading.enumerate():
            if thread.name == "canvas-warm-up":
                thread.join()
        out["warm-up"] = (time.perf_counter() - t) * 1000
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for name, page in spec["pages"]:
            t = time.perf_counter()
            r = client.get(page)
            out[name] = (time.perf_counter() - t) * 1000
            if r.status_code != 200:
                raise SystemExit(f"{page}: HTTP {r.status_code}: {r.text[:300]}")
    print(json.dumps(out))


def cold_process(url: str, data_dir: Path, pages: list[tuple[str, str]], warm: bool) -> dict:
    """First-request milliseconds of ``pages`` in a new process (``warm``: after warm-up)."""
    spec = {"url": url, "data_dir": str(data_dir), "pages": pages, "warm": warm}
    env = {**os.environ, "BENCH_CANVAS_CHILD": json.dumps(spec)}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cold process failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if "BENCH_CANVAS_CHILD" in os.environ:
        cold_child(json.loads(os.environ["BENCH_CANVAS_CHILD"]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=20, help="Plates of the project.")
    parser.add_argument("--sites", type=int, default=4, help="Sites per well.")
    parser.add_argument("--repeat", type=int, default=5, help="Timed requests per page.")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from conductor import db
    from conductor.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="bench_canvas_"))
    dataset, ws = tmp / "dataset", tmp / "ws"
    dataset.mkdir()
    url = f"sqlite:///{tmp / 'conductor.db'}"
    db.upgrade(url)
    settings = make_settings(url, tmp / "conductor")
    plates = [f"Plate{i:02d}" for i in range(1, args.plates + 1)]
    t0 = time.perf_counter()
    images = write_index(ws, dataset, plates, args.sites)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings), headers=headers) as client:
        body = {"name": "bench", "dataset_uri": str(dataset), "workspace_uri": str(ws)}
        pid = client.post("/api/v1/projects", json=body).json()["id"]
        from conductor.models import Project

        maker = db.make_sessionmaker(db.make_engine(url))
        with maker() as s:
            s.get(Project, pid).configured_at = datetime.now(UTC)
            s.commit()
        events = seed_dagster(settings, pid, plates)
        run_ids = seed_runs(settings, pid, plates, 40)
        seed_qc(ws, plates)
        took = time.perf_counter() - t0
        print(f"seeded {args.plates} plates x 384 wells, {images} images, {events} "
              f"materialisations, {len(run_ids)} runs in {took:.1f} s")  # fmt: skip
        api = "/api/v1"
        a, b = run_ids[-2], run_ids[-1]
        cases = [
            ("projects", "/ui/projects", f"{api}/projects"),
            ("configure", f"/ui/projects/{pid}", f"{api}/projects/{pid}/experiment/template"),
            ("plate map, 20 plates", f"/ui/projects/{pid}/plates?asset=corrected_cp&plate=all",
             f"{api}/projects/{pid}/partitions"),
            ("plate map, 1 plate", f"/ui/projects/{pid}/plates?asset=corrected_cp&plate=Plate01",
             f"{api}/projects/{pid}/partitions"),
            ("well detail", f"/ui/projects/{pid}/plates/Plate01/wells/A1",
             f"{api}/projects/{pid}/partitions"),
            ("runs", f"/ui/projects/{pid}/runs", f"{api}/projects/{pid}/runs?limit=25"),
            ("run detail", f"/ui/runs/{b}", f"{api}/runs/{b}"),
            ("compare", f"/ui/projects/{pid}/compare?a={a}&b={b}", f"{api}/runs/{b}"),
            ("QC gallery (illum)", f"/ui/projects/{pid}/qc?kind=illum",
             f"{api}/projects/{pid}/files?prefix=illum"),
        ]  # fmt: skip
        print(f"{'page':24} {'first ms':>9} {'median ms':>10} {'API ms':>8} {'page/API':>9}")
        worst = 0.0
        for name, page, baseline in cases:
            first, median = timed(client, page, args.repeat)
            _, api_ms = timed(client, baseline, args.repeat)
            worst = max(worst, median)
            print(f"{name:24} {first:9.1f} {median:10.1f} {api_ms:8.1f} {median / api_ms:9.2f}x")
        verdict = "OK" if worst <= 300 else "OVER"
        print(f"slowest page median {worst:.1f} ms (target <= 300 ms: {verdict})")
    heavy = [(name, page) for name, page, _ in cases if name in COLD_PAGES]
    for warm in (False, True):
        got = cold_process(url, settings.data_dir, heavy, warm)
        when = f"after the {got['warm-up']:.0f} ms warm-up" if warm else "at once"
        times = ", ".join(f"{name} {got[name]:.0f} ms" for name, _ in heavy)
        print(f"new process, first requests {when}: {times}")


if __name__ == "__main__":
    main()
