"""Slurm backend: submission overhead and per-job latency on the local cluster (issue 19).

Run: ``.venv/bin/python bench/bench_slurm.py [--fan N] [--chain N]`` (``make slurm`` first)

Prints
- submission overhead: wall time of ``SlurmBackend.run()`` for a fan-out of N independent
  ``true`` nodes, per node, against a baseline measured here: starting the same number of
  ``true`` processes (what any submitting tool pays at least once per job);
- per-job latency: wall time for a chain of N dependent ``true`` nodes to finish, per
  job (scheduling, dependency release, job start and end), against the same chain on the
  local backend;
- with ``--snakemake``, the same chain through Snakemake's Slurm executor plugin when
  it is installed (``pip install snakemake-executor-plugin-slurm``; polled with
  ``squeue`` here, so no slurmdbd is needed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipecraft import Command, LocalBackend, Pipeline, RunStatus, Scatter, Seq
from pipecraft.backends.slurm import SlurmBackend


def fan(n: int) -> Pipeline:
    return Pipeline("fan", Scatter("job", range(n), lambda i: Command(name=f"t{i}", argv=["true"])))


def chain(n: int) -> Pipeline:
    return Pipeline("chain", Seq(*(Command(name=f"c{i}", argv=["true"]) for i in range(n))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fan", type=int, default=100, help="independent jobs to submit")
    ap.add_argument("--chain", type=int, default=10, help="length of the dependent chain")
    ap.add_argument("--snakemake", action="store_true", help="also time Snakemake's plugin")
    ap.add_argument("--partition", default="debug", help="partition for the plugin's jobs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for _ in range(args.fan):
            subprocess.run(["true"], check=True)
        spawn = (time.perf_counter() - t0) / args.fan

        backend = SlurmBackend(Path(tmp, "fan"), poll_first=0.1, poll_max=0.5)
        t0 = time.perf_counter()
        h = backend.run(fan(args.fan))
        submit = (time.perf_counter() - t0) / args.fan
        assert h.wait(600) is RunStatus.SUCCEEDED
        drained = time.perf_counter() - t0
        print(
            f"submission, {args.fan} independent jobs: {submit * 1000:.1f} ms per job "
            f"(baseline: starting `true` {spawn * 1000:.1f} ms; ratio {submit / spawn:.1f}x); "
            f"all done after {drained:.1f} s"
        )

        t0 = time.perf_counter()
        h = LocalBackend(Path(tmp, "local")).run(chain(args.chain))
        assert h.wait(600) is RunStatus.SUCCEEDED
        local = (time.perf_counter() - t0) / args.chain
        backend = SlurmBackend(Path(tmp, "chain"), poll_first=0.1, poll_max=0.5)
        t0 = time.perf_counter()
        h = backend.run(chain(args.chain))
        assert h.wait(600) is RunStatus.SUCCEEDED
        slurm = (time.perf_counter() - t0) / args.chain
        print(
            f"latency, chain of {args.chain} dependent jobs: {slurm:.2f} s per job "
            f"(baseline: local backend {local * 1000:.0f} ms per node; ratio "
            f"{slurm / local:.0f}x)"
        )

        if args.snakemake:
            from pipecraft.backends.snakemake import SnakemakeBackend

            # squeue for status (no slurmdbd here) and the first poll after 1 s, the
            # plugin's fastest settings
            extra = [
                "--slurm-status-command",
                "squeue",
                "--slurm-init-seconds-before-status-checks",
                "1",
                "--default-resources",
                f"slurm_partition={args.partition}",
            ]
            sm = SnakemakeBackend(Path(tmp, "smk"), executor="slurm", jobs=100, extra_args=extra)
            t0 = time.perf_counter()
            h = sm.run(chain(args.chain))
            status = h.wait(1800)
            took = (time.perf_counter() - t0) / args.chain
            print(
                f"latency, same chain via snakemake-executor-plugin-slurm: {took:.2f} s per "
                f"job ({status.value}; ratio to pipecraft's sbatch {took / slurm:.1f}x)"
            )


if __name__ == "__main__":
    sys.exit(main())
