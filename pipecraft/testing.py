"""Small importable helpers to exercise backends (tests, benchmarks, smoke checks).

Functions here are referenced by ``PyFunction`` nodes, and ``python -m pipecraft.testing``
offers the same operations to ``Command`` nodes, so they run in any process a backend
starts. :func:`demo_pipeline` is the fan-out/fan-in pipeline with a failing branch that
every backend is checked against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipecraft.node import Command
from pipecraft.pipeline import Parallel, Pipeline, Scatter, Seq

#: Node states every backend must report for :func:`demo_pipeline` (values of NodeState).
DEMO_EXPECTED = {
    "prepare": "succeeded",
    "work-a": "succeeded",
    "work-b": "succeeded",
    "work-c": "succeeded",
    "gather": "succeeded",
    "doomed": "failed",
    "after-doomed": "upstream_failed",
}


def noop() -> None:
    """Do nothing (scheduling benchmarks)."""


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating parent folders."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    print(f"wrote {path}")


def concat(out: str, inputs: list[str]) -> None:
    """Write the concatenation of ``inputs`` to ``out``."""
    write_text(out, "".join(Path(p).read_text() for p in inputs))


def fail(message: str = "failing on purpose") -> None:
    """Raise RuntimeError with ``message``."""
    print(f"about to fail: {message}")
    raise RuntimeError(message)


def _cli(argv: list[str]) -> int:
    op, *args = argv
    if op == "write":
        write_text(args[0], args[1])
    elif op == "concat":
        concat(args[0], args[1:])
    elif op == "fail":
        print(f"failing with exit code {args[0]}: {' '.join(args[1:])}")
        return int(args[0])
    elif op == "echo-args":
        for a in args:
            print(repr(a))
    else:
        print(f"unknown operation {op!r}", file=sys.stderr)
        return 2
    return 0


def demo_pipeline(
    root: str | os.PathLike[str],
    items: tuple[str, ...] = ("a", "b", "c"),
    python: str = sys.executable,
) -> Pipeline:
    """The cross-backend test pipeline: fan-out/fan-in plus a branch that fails.

    ``prepare`` writes ``prepared.txt``; one ``work-<item>`` per item copies it into
    ``work/<item>.txt`` (with the item appended); ``gather`` concatenates them into
    ``gathered.txt``. Independently ``doomed`` exits with code 3, so ``after-doomed`` is
    never run. Expected: ``doomed`` failed, ``after-doomed`` upstream-failed, the rest
    succeeded.
    """
    r = Path(root)
    tool = (python, "-m", "pipecraft.testing")
    prepared = str(r / "prepared.txt")

    def work(item: str) -> Command:
        return Command(
            name=f"work-{item}",
            argv=(*tool, "write", str(r / "work" / f"{item}.txt"), f"prepared+{item}\n"),
            inputs=(prepared,),
            outputs=(str(r / "work" / f"{item}.txt"),),
        )

    parts = tuple(str(r / "work" / f"{i}.txt") for i in items)
    return Pipeline(
        "demo",
        Parallel(
            Seq(
                Command(
                    name="prepare",
                    argv=(*tool, "write", prepared, "prepared\n"),
                    outputs=(prepared,),
                ),
                Scatter("work", items, work),
                Command(
                    name="gather",
                    argv=(*tool, "concat", str(r / "gathered.txt"), *parts),
                    inputs=parts,
                    outputs=(str(r / "gathered.txt"),),
                ),
            ),
            Seq(
                Command(name="doomed", argv=(*tool, "fail", "3", "doomed on purpose")),
                Command(
                    name="after-doomed", argv=(*tool, "write", str(r / "never.txt"), "never\n")
                ),
            ),
        ),
    )


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
