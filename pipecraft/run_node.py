"""Run one pipecraft node in this process: ``python -m pipecraft.run_node SPEC``.

``SPEC`` is the node's JSON (see :meth:`pipecraft.Node.to_dict`). With ``--array SPEC``,
SPEC is a JSON list of nodes (inline, or an ``s3://`` / local path to such a file) and
the node at index ``$AWS_BATCH_JOB_ARRAY_INDEX`` runs: this is how a scatter becomes one
AWS Batch array job. Exit status is the node's (1 for a failed Python function).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

from pipecraft.errors import PipecraftError
from pipecraft.node import Command, Node, PyFunction, node_from_dict


def run_node(node: Node) -> int:
    """Run ``node`` with the current stdout/stderr; return its exit status."""
    if isinstance(node, Command):
        env = {**os.environ, **node.env}
        try:
            return subprocess.call(list(node.argv), env=env)
        except OSError as exc:
            print(f"pipecraft: cannot start {node.argv[0]!r}: {exc}", file=sys.stderr)
            return 127
    if isinstance(node, PyFunction):
        os.environ.update(node.env)
        try:
            node.call()
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    print(f"pipecraft: node kind {node.kind!r} cannot run", file=sys.stderr)
    return 2


def _load_text(spec: str) -> str:
    if spec.lstrip().startswith(("{", "[")):
        return spec
    if spec.startswith("s3://"):
        import boto3

        bucket, _, key = spec[5:].partition("/")
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    with open(spec) as f:
        return f.read()


def select_array_item(spec: str, index: int) -> Node:
    """The node at ``index`` of an array spec (inline JSON list, local path or s3 URI)."""
    items = json.loads(_load_text(spec))
    if not isinstance(items, list) or not 0 <= index < len(items):
        raise PipecraftError(f"array index {index} is outside the {len(items)} nodes of {spec!r}")
    return node_from_dict(items[index])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 2 and args[0] == "--array":
            raw = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX")
            if raw is None or not raw.isdigit():
                raise PipecraftError(
                    f"AWS_BATCH_JOB_ARRAY_INDEX={raw!r}: expected the array index of this job"
                )
            node = select_array_item(args[1], int(raw))
        elif len(args) == 1:
            node = node_from_dict(json.loads(_load_text(args[0])))
        else:
            print("usage: python -m pipecraft.run_node [--array] SPEC", file=sys.stderr)
            return 2
    except (PipecraftError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_node(node)


if __name__ == "__main__":
    sys.exit(main())
