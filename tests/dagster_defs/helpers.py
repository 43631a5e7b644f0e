"""Helpers for the Dagster tests: tiny sample datasets, project settings, `dagster dev`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from starrynight.sample import SampleSpec, generate

REPO = Path(__file__).resolve().parents[2]


def make_sample(
    out: Path,
    plates: tuple[str, ...],
    wells: tuple[str, ...] = ("A1", "A2"),
    size: int = 128,
    sites: int = 2,
    cycles: int = 3,
) -> Path:
    """Generate a small sample dataset and return its dataset root."""
    spec = SampleSpec(
        plates=plates, wells=wells, sites=sites, cycles=cycles, size=size, workers=1, seed=1
    )
    return Path(generate(spec, out).dataset_root)


def age(root: Path, seconds: float = 3600) -> None:
    """Make every file below ``root`` look written ``seconds`` ago."""
    import time

    t = time.time() - seconds
    for p in root.rglob("*"):
        os.utime(p, (t, t))


def settings(dataset: Path | str, ws: Path | str, **kw) -> dict:
    s = {
        "dataset_uri": str(dataset),
        "workspace_uri": str(ws),
        "backend": "local",
        "backend_options": {"max_workers": 2, "poll_seconds": 0.2},
        "stable_seconds": 60.0,
    }
    s.update(kw)
    return s


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_graphql(url: str, query: str) -> dict:
    """POST a GraphQL ``query`` to ``url`` and return the decoded JSON answer."""
    req = urllib.request.Request(
        url,
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@contextmanager
def dagster_dev(env: Mapping[str, str], log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``dagster dev`` on the repository's ``workspace.yaml`` on a free local port.

    Parameters
    ----------
    env : mapping
        The whole environment of the process (``DAGSTER_HOME`` and project settings).
    log : Path
        File that receives its stdout and stderr.

    Yields
    ------
    tuple of (subprocess.Popen, str)
        The process and its GraphQL URL. On exit the process group gets SIGTERM; one
        still running 60 s later is killed and the test fails.
    """
    port = free_port()
    dagster = str(Path(sys.executable).parent / "dagster")
    argv = [dagster, "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: dagster dev starts the webserver and daemon as
            # children, and all of them must stop with it.
            start_new_session=True,
        )
        try:
            yield proc, f"http://127.0.0.1:{port}/graphql"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                pytest.fail("dagster dev did not stop within 60 s of SIGTERM")
