"""Load on ``conductor serve`` with Postgres and 1,000 projects: list and get.

Starts ``conductor serve`` against a fresh Postgres database filled with 1,000 projects,
then drives a bounded load from a second process on 127.0.0.1: ``wrk`` (Debian package
``wrk``; a C load generator, so the client does not take the server's CPU) for a fixed
duration over a few keep-alive connections, or, when wrk is missing, a Python/httpx
driver sending a fixed number of requests (which itself needs about a core).
Prints requests/s and p50/p99 latency for list and get, each with its ratio
against the trivial ``/health/live`` endpoint measured in the same run (the baseline:
what the server stack alone costs). Target: >= 300 req/s with p99 < 100 ms.

Usage: ``.venv/bin/python bench/bench_conductor.py [--workers 2] [--concurrency 8]
[--duration 10] [--driver auto|wrk|httpx]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TOKEN = "bench-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(base: str, path_template: str, n: int, concurrency: int, cap_s: float) -> dict:
    """Send ``n`` GETs over ``concurrency`` keep-alive connections; latency stats."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n))
    deadline = time.monotonic() + cap_s

    def worker() -> None:
        nonlocal errors
        rng = random.Random(threading.get_ident())
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            for _ in counter:
                if time.monotonic() > deadline:
                    return
                path = path_template.format(id=rng.randint(1, 1000))
                start = time.perf_counter()
                response = client.get(path)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        errors += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


_WRK_GET_SCRIPT = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/v1/projects/" .. math.random(1, 1000))
end
"""


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def drive_wrk(base: str, path: str, duration: float, concurrency: int) -> dict:
    """``wrk`` for ``duration`` seconds over ``concurrency`` connections; latency stats."""
    cmd = ["wrk", "-t2", f"-c{concurrency}", f"-d{duration:g}s", "--latency",
           "-H", f"Authorization: Bearer {TOKEN}"]  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if "{id}" in path:
            script.write(_WRK_GET_SCRIPT)
            script.flush()
            cmd += ["-s", script.name]
            path = path.replace("{id}", "1")
        out = subprocess.run([*cmd, base + path], capture_output=True, text=True, check=True)
    text = out.stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return {
        "requests": requests,
        "errors": (int(bad.group(1)) if bad else 0) + (1 if socket_errors else 0),
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1)),
        "p50_ms": _wrk_ms(pct["50"]),
        "p99_ms": _wrk_ms(pct["99"]),
    }


ENDPOINTS = (
    ("health", "/api/v1/health/live"),
    ("list", "/api/v1/projects?limit=50&offset=500"),
    ("get", "/api/v1/projects/{id}"),
)


def _driver_main(args: argparse.Namespace) -> None:
    out = {}
    for name, path in ENDPOINTS:
        drive(args.base, path, 200, args.concurrency, 30)  # warm-up
        out[name] = drive(args.base, path, args.requests, args.concurrency, args.cap)
    print(json.dumps(out))


def _fill(url: str, n: int) -> None:
    from sqlalchemy import create_engine, insert

    from conductor.models import Project, utcnow

    engine = create_engine(url)
    now = utcnow()
    rows = [
        {
            "name": f"project{i:04d}",
            "dataset_uri": f"/data/screens/screen{i:04d}",
            "workspace_uri": f"/data/workspaces/screen{i:04d}",
            "experiment_type": "ops",
            "grammar": None,
            "backend": "local",
            "backend_options": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Project), rows)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="Requests per endpoint.")
    parser.add_argument("--concurrency", type=int, default=8, help="Keep-alive connections.")
    parser.add_argument("--cap", type=float, default=60.0, help="Time cap per endpoint (s).")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers.")
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per endpoint.")
    parser.add_argument("--driver", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--log-level", default="info", help="Server log level.")
    parser.add_argument("--drive", dest="base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base:
        _driver_main(args)
        return

    import psycopg

    sys.path.insert(0, str(ROOT))
    from conductor import db

    name = f"conductor_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    server = None
    try:
        db.upgrade(url)
        _fill(url, 1000)
        port = _free_port()
        data = tempfile.mkdtemp(prefix="conductor_bench_")
        env = dict(os.environ)
        env.update(
            STARRYNIGHT_DATABASE_URL=url,
            STARRYNIGHT_DATA_DIR=data,
            CONDUCTOR_TOKENS=f"bench:{TOKEN}:ro",
        )
        conductor = str(Path(sys.executable).with_name("conductor"))
        server = subprocess.Popen(
            [conductor, "serve", "--port", str(port), "--workers", str(args.workers),
             "--log-level", args.log_level],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        import httpx

        for _ in range(200):
            try:
                if httpx.get(f"{base}/api/v1/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        if args.driver == "auto":
            args.driver = "wrk" if shutil.which("wrk") else "httpx"
        if args.driver == "wrk":
            result = {}
            for key, path in ENDPOINTS:
                drive_wrk(base, path, 2, args.concurrency)  # warm-up
                result[key] = drive_wrk(base, path, args.duration, args.concurrency)
        else:
            driver = subprocess.run(
                [sys.executable, __file__, "--drive", base, "--requests", str(args.requests),
                 "--concurrency", str(args.concurrency), "--cap", str(args.cap)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(driver.stdout)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

    base_line = result["health"]
    print(
        f"conductor serve (Postgres, 1,000 projects, {args.workers} worker(s), "
        f"log level {args.log_level}); load from a second process ({args.driver}): "
        + (f"{args.duration:g} s" if args.driver == "wrk" else f"{args.requests} GETs")
        + f" per endpoint over {args.concurrency} keep-alive connections"
    )
    print(f"{'endpoint':<34}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  vs baseline")
    for key, label in (
        ("health", "GET /health/live (baseline)"),
        ("list", "GET /projects?limit=50&offset=500"),
        ("get", "GET /projects/{id}"),
    ):
        r = result[key]
        ratio = (
            f"{r['rps'] / base_line['rps']:.2f}x req/s, "
            f"{r['p99_ms'] / base_line['p99_ms']:.2f}x p99"
        )
        print(
            f"{label:<34}{r['rps']:>8.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['errors']:>8}  {ratio}"
        )
    ok = all(result[k]["rps"] >= 300 and result[k]["p99_ms"] < 100 for k in ("list", "get"))
    print(f"target >= 300 req/s and p99 < 100 ms for list and get: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
