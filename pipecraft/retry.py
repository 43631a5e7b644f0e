"""How much memory a retry asks for: the one policy every backend follows.

A node's ``retries`` count covers every failure. A failure for memory (killed by the
kernel's or the cgroup's OOM killer: exit 137 locally, ``OUT_OF_MEMORY`` on Slurm,
``OutOfMemoryError`` on AWS Batch) retries with ``memory_mb x attempt`` — the attempt
about to run, so 2 GB, 4 GB, 6 GB... — capped at ``max_memory_mb`` and at the backend's
own cap, as nf-pooled-cellpainting does. Any other failure retries with the same request
as the attempt that failed. A node that ran out of memory at the cap is not retried:
the same request would fail the same way.
"""

from __future__ import annotations

from pipecraft.node import Resources

#: Exit statuses of a process killed with SIGKILL, what the OOM killer sends (137 from a
#: shell or a container runtime, -9 from :class:`subprocess.Popen`).
OOM_EXIT_CODES = frozenset({137, -9})


def memory_cap(resources: Resources, backend_cap: int | None = None) -> int | None:
    """The most memory any attempt of a node may ask for (None: no cap)."""
    caps = [c for c in (resources.max_memory_mb, backend_cap) if c is not None]
    return min(caps) if caps else None


def next_memory(
    resources: Resources,
    failed_attempt: int,
    failed_memory_mb: int,
    out_of_memory: bool,
    backend_cap: int | None = None,
) -> int | None:
    """Memory (MiB) for the attempt after ``failed_attempt``, or None if retrying is pointless.

    Parameters
    ----------
    resources : Resources
        The node's resource hints (``memory_mb`` is the first attempt's request).
    failed_attempt : int
        The 1-based number of the attempt that failed.
    failed_memory_mb : int
        What that attempt asked for.
    out_of_memory : bool
        Whether it failed for memory.
    backend_cap : int, optional
        The backend's own limit (largest node or instance the queue can start).

    Returns
    -------
    int or None
        ``memory_mb x (failed_attempt + 1)`` capped, after an out-of-memory failure;
        ``failed_memory_mb`` after any other failure; None when the attempt ran out of
        memory already at the cap.
    """
    if not out_of_memory:
        return failed_memory_mb
    cap = memory_cap(resources, backend_cap)
    grown = resources.memory_mb * (failed_attempt + 1)
    if cap is not None:
        if failed_memory_mb >= cap:
            return None
        grown = min(grown, cap)
    return max(grown, failed_memory_mb)


def describe_oom(memory_mb: int, cap: int | None) -> str:
    """The reason text of a final out-of-memory failure."""
    at_cap = f" (the cap, {cap} MB)" if cap is not None and memory_mb >= cap else ""
    return f"out of memory with {memory_mb} MB{at_cap}"
