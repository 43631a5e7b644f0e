"""The one site runner of every per-well step.

A per-well step is a function of one site (:class:`SiteTask`: the site, the files it
reads, the files it writes) run over every site the well should have, as known from the
index and the experiment, never from whatever files happen to be there. The runner:

- refuses to start when a site's inputs are missing (the upstream step is incomplete,
  killed or still running), naming the missing files and how many sites lack them;
- skips a site whose outputs all exist and whose inputs are the ones they were made
  from: a per-well manifest records a fingerprint (size and modification time) of each
  computed site's inputs, so a site whose inputs appeared or changed is recomputed;
- runs the others on threads or processes (``workers``), one site per task;
- with ``skip_bad``, leaves out sites whose input cannot be read and lists them; without,
  stops at the first bad input (the first in site order, whatever the thread timing),
  removes what this run wrote and re-raises;
- removes temporary files that killed writers left in the output folders;
- shows a progress line on a terminal (sites done / total, rate, time left).

Each output is written atomically by the site function itself
(:func:`storage.atomic_local_path`); the manifest is rewritten atomically as sites
finish, so a killed run loses at most the sites since the last rewrite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from typing import Any, Generic, TextIO, TypeVar

from starrynight import storage
from starrynight.errors import InputFileError, UserError

R = TypeVar("R")

#: Seconds between manifest rewrites while sites finish.
MANIFEST_EVERY = 5.0


@dataclass(frozen=True)
class SiteTask:
    """One site of a per-well step.

    Attributes
    ----------
    site : int
        Site number, as in the index.
    inputs : tuple of str
        URIs the site reads; all must exist before the step starts, and their
        fingerprint decides whether existing outputs are current.
    outputs : tuple of str
        URIs the site writes; the site is complete when all exist (and are current).
    args : tuple
        What the site function needs besides the task (picklable for processes).
    settings : str
        The step's options that shape the outputs (e.g. ``repr`` of its parameters):
        part of the fingerprint, so outputs made with other options are stale.
    current : bool
        Set by the runner: the outputs exist and were made from these inputs, so the
        site function may read them back instead of recomputing (when no ``load`` is
        given to :func:`run_sites`).
    """

    site: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    args: tuple[Any, ...] = ()
    current: bool = False
    settings: str = ""


@dataclass
class SiteRun(Generic[R]):
    """What :func:`run_sites` did.

    Attributes
    ----------
    results : dict of int to R
        Site -> the site function's result (computed) or the loader's (current).
    computed : list of int
        Sites computed by this run.
    current : list of int
        Sites whose outputs were current and were loaded instead.
    bad : list of InputFileError
        Sites left out with ``skip_bad`` (their bad input and why).
    """

    results: dict[int, R] = field(default_factory=dict)
    computed: list[int] = field(default_factory=list)
    current: list[int] = field(default_factory=list)
    bad: list[InputFileError] = field(default_factory=list)

    def ordered(self) -> list[R]:
        """Results in site order."""
        return [self.results[s] for s in sorted(self.results)]

    @property
    def bad_files(self) -> list[tuple[str, str]]:
        """``(path, problem)`` of every input left out."""
        return [(e.path, e.problem) for e in self.bad]


def fingerprint(uris: Sequence[str]) -> tuple[str, list[str]]:
    """A fingerprint of files' sizes and modification times, and the files missing.

    Returns
    -------
    tuple
        ``(hex digest, missing URIs)``; the digest is meaningless when files are missing.
    """
    h = hashlib.sha1()
    missing = []
    for uri, info in zip(uris, storage.stat_many(uris), strict=True):
        if info is None:
            missing.append(uri)
            continue
        h.update(f"{uri}\0{info[0]}\0{info[1]}\0".encode())
    return h.hexdigest(), missing


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest at ``uri`` (``{"sites": {site: fingerprint}}``), empty when absent."""
    if not storage.exists(uri):
        return {"sites": {}}
    try:
        data = json.loads(storage.read_bytes(uri))
        return data if isinstance(data.get("sites"), dict) else {"sites": {}}
    except (ValueError, AttributeError):
        # A manifest we cannot read only costs a recomputation.
        return {"sites": {}}


def run_sites(
    step: str,
    fn: Callable[[SiteTask], R],
    tasks: Sequence[SiteTask],
    *,
    manifest: str,
    load: Callable[[SiteTask], R] | None = None,
    workers: int = 2,
    processes: bool = False,
    force: bool = False,
    skip_bad: bool = False,
    progress: bool | None = None,
    missing_hint: str = "",
) -> SiteRun[R]:
    """Run ``fn`` over every site of a well that is not current.

    Parameters
    ----------
    step : str
        Step name (messages, progress line, manifest).
    fn : callable
        ``fn(task)`` computes and writes one site and returns its result. With
        ``processes`` it must be a module-level function.
    tasks : sequence of SiteTask
        Every site the well should have.
    manifest : str
        URI of the well's manifest for this step.
    load : callable, optional
        ``load(task)`` returns the result of a current site from its outputs. Without
        it every site goes to ``fn``, with ``task.current`` saying whether it may read
        its outputs back (a site function that also returns tables does that in the
        pool).
    workers : int
        Sites processed in parallel.
    processes : bool
        Processes instead of threads (for steps that hold the GIL).
    force : bool
        Recompute current sites too.
    skip_bad : bool
        Leave out sites whose input cannot be read (listed in the result).
    progress : bool, optional
        Show a progress line (default: when stderr is a terminal).
    missing_hint : str
        Appended to the missing-inputs error, e.g. which command makes them.

    Returns
    -------
    SiteRun

    Raises
    ------
    UserError
        When inputs of some sites are missing (nothing is run), or, without
        ``skip_bad``, the first bad input in site order.
    """
    tasks = sorted(tasks, key=lambda t: t.site)
    prints = {t.site: _task_print(t) for t in tasks}
    _refuse_missing(step, tasks, prints, missing_hint)
    recorded = {} if force else read_manifest(manifest)["sites"]
    run: SiteRun[R] = SiteRun()
    todo = _plan(tasks, prints, recorded, load, run)
    for folder in sorted({o.rsplit("/", 1)[0] for t in todo for o in t.outputs}):
        storage.clean_temporary(folder)
    done = {str(s): prints[s][0] for s in run.current}
    bar = _Progress(step, len(tasks), len(run.current), progress)
    with _executor(processes, workers, len(todo), skip_bad) as pool:
        errors = _collect(
            pool, fn, todo, run, done, prints, bar, skip_bad,
            save=lambda: _write_manifest(manifest, step, done),
        )  # fmt: skip
    bar.close()
    _remove_failed_outputs(tasks, errors, run, skip_bad)
    run.bad = [errors[s] for s in sorted(errors)]
    run.computed.sort()
    run.current.sort()
    _write_manifest(manifest, step, done)
    return run


def _plan(
    tasks: Sequence[SiteTask],
    prints: dict[int, tuple[str, list[str]]],
    recorded: dict[str, str],
    load: Callable[[SiteTask], R] | None,
    run: SiteRun[R],
) -> list[SiteTask]:
    """The tasks to submit; current sites are loaded into ``run`` when ``load`` is given.

    A site is current when the manifest recorded its inputs' fingerprint and every
    output exists. Without ``load`` a current site is still submitted, marked current.
    """
    todo = []
    for task in tasks:
        fp = prints[task.site][0]
        up_to_date = recorded.get(str(task.site)) == fp and all(
            storage.exists(o) for o in task.outputs
        )
        if up_to_date and load is not None:
            run.results[task.site] = load(task)
            run.current.append(task.site)
        elif up_to_date:
            todo.append(dataclasses.replace(task, current=True))
        else:
            todo.append(task)
    return todo


def _collect(
    pool: Executor,
    fn: Callable[[SiteTask], R],
    todo: Sequence[SiteTask],
    run: SiteRun[R],
    done: dict[str, str],
    prints: dict[int, tuple[str, list[str]]],
    bar: _Progress,
    skip_bad: bool,
    save: Callable[[], None],
) -> dict[int, InputFileError]:
    """Submit ``todo`` to ``pool`` and record each finished site in ``run`` and ``done``.

    Returns the sites whose input could not be read. Without ``skip_bad`` the first one
    cancels the sites not started yet. ``save`` rewrites the manifest every
    :data:`MANIFEST_EVERY` seconds, but not once the run is failing.
    """
    errors: dict[int, InputFileError] = {}
    last_write = time.monotonic()
    futures: dict[Future, SiteTask] = {pool.submit(fn, t): t for t in todo}
    pending = set(futures)
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in sorted(finished, key=lambda f: futures[f].site):
            task = futures[fut]
            if fut.cancelled():
                continue
            try:
                run.results[task.site] = fut.result()
            except InputFileError as exc:
                errors[task.site] = exc
                if not skip_bad:
                    for other in pending:
                        other.cancel()
                continue
            (run.current if task.current else run.computed).append(task.site)
            done[str(task.site)] = prints[task.site][0]
            bar.advance()
        if time.monotonic() - last_write > MANIFEST_EVERY and not (errors and not skip_bad):
            save()
            last_write = time.monotonic()
    return errors


def _remove_failed_outputs(
    tasks: Sequence[SiteTask], errors: dict[int, InputFileError], run: SiteRun, skip_bad: bool
) -> None:
    """Remove what failed sites wrote; without ``skip_bad``, all this run wrote, and raise.

    Raises
    ------
    InputFileError
        Without ``skip_bad``, the first bad site's error in site order.
    """
    by_site = {t.site: t for t in tasks}
    for site in errors:  # whatever a failed site wrote before it failed is not an output
        for uri in by_site[site].outputs:
            storage.remove(uri)
    if errors and not skip_bad:
        # A failed run leaves nothing of its own behind: the first bad site in site
        # order decides the message, whatever the order the threads met them in.
        for site in run.computed:
            for uri in by_site[site].outputs:
                storage.remove(uri)
        raise errors[min(errors)]


def _well_print(tasks: Sequence[SiteTask]) -> str:
    h = hashlib.sha1()
    for task in sorted(tasks, key=lambda t: t.site):
        h.update(f"{task.site}\0{_task_print(task)[0]}\0".encode())
    return h.hexdigest()


def well_current(
    manifest: str, tasks: Sequence[SiteTask], outputs: Sequence[str], force: bool = False
) -> bool:
    """Whether a well's step is complete for exactly these sites and inputs.

    True when not ``force``, every well output exists and :func:`mark_well_done`
    recorded the same sites with the same input fingerprints. A well whose sites or
    inputs changed since (an upstream step completed more sites, an image was
    replaced) is not current.
    """
    if force or not tasks or not all(storage.exists(o) for o in outputs):
        return False
    recorded = read_manifest(manifest).get("well")
    return recorded == _well_print(tasks)


def mark_well_done(manifest: str, tasks: Sequence[SiteTask]) -> None:
    """Record that the well's outputs were written from these sites and inputs.

    Call after the well tables are written; :func:`run_sites` clears the mark when it
    starts computing, so a run killed in between is not taken for complete.
    """
    data = read_manifest(manifest)
    data["well"] = _well_print(tasks)
    storage.write_bytes(manifest, (json.dumps(data, indent=0) + "\n").encode())


def _task_print(task: SiteTask) -> tuple[str, list[str]]:
    """:func:`fingerprint` of a task's inputs, with its settings mixed in."""
    digest, missing = fingerprint(task.inputs)
    if task.settings:
        digest = hashlib.sha1(f"{digest}\0{task.settings}".encode()).hexdigest()
    return digest, missing


def require_inputs(step: str, tasks: Sequence[SiteTask], hint: str = "") -> None:
    """Refuse (as :func:`run_sites` would) when inputs of some sites are missing.

    For steps that read inputs before running the sites (e.g. to estimate a scale).

    Raises
    ------
    UserError
        Naming how many sites lack inputs, which, and one missing file.
    """
    _refuse_missing(step, tasks, {t.site: fingerprint(t.inputs) for t in tasks}, hint)


def _refuse_missing(
    step: str, tasks: Sequence[SiteTask], prints: dict[int, tuple[str, list[str]]], hint: str
) -> None:
    lacking = [t.site for t in tasks if prints[t.site][1]]
    if not lacking:
        return
    first = prints[lacking[0]][1]
    sites = ", ".join(map(str, lacking[:10])) + (" ..." if len(lacking) > 10 else "")
    raise UserError(
        f"{step}: inputs missing for {len(lacking)} of {len(tasks)} site(s) ({sites}), "
        f"e.g. {first[0]}" + (f"; {hint}" if hint else "")
    )


def _write_manifest(uri: str, step: str, sites: dict[str, str]) -> None:
    body = {"step": step, "sites": dict(sorted(sites.items(), key=lambda kv: int(kv[0])))}
    storage.write_bytes(uri, (json.dumps(body, indent=0) + "\n").encode())


def _one_blas_thread() -> None:
    """Worker initialiser: one BLAS thread per worker process.

    Sites are the unit of parallelism; BLAS threads on top of ``workers`` processes
    would oversubscribe the cores (OpenBLAS threads spin while they wait).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


class _InlineExecutor(Executor):
    """Runs each task when submitted (one worker: no pool start-up, same code path).

    After a task raised an :class:`InputFileError`, later tasks are cancelled unless
    ``keep_going`` (``skip_bad``), as a pool's pending tasks are.
    """

    def __init__(self, keep_going: bool) -> None:
        self.keep_going = keep_going
        self.failed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        if self.failed and not self.keep_going:
            fut.cancel()
            return fut
        try:
            fut.set_result(fn(*args, **kwargs))
        except InputFileError as exc:
            self.failed = True
            fut.set_exception(exc)
        except BaseException as exc:  # delivered through the future, as a pool would
            fut.set_exception(exc)
        return fut


@contextlib.contextmanager
def _executor(processes: bool, workers: int, n: int, keep_going: bool):
    workers = max(1, min(workers, n))
    if workers == 1:
        yield _InlineExecutor(keep_going)
    elif processes:
        with ProcessPoolExecutor(max_workers=workers, initializer=_one_blas_thread) as pool:
            yield pool
    else:
        from threadpoolctl import threadpool_limits

        # Sites already run in parallel; oversubscribed BLAS threads slow small products.
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            yield pool


class _Progress:
    """``step: 12/40 sites, 3.1 sites/s, 9 s left`` on a terminal, rewritten in place."""

    def __init__(
        self, step: str, total: int, done: int, show: bool | None, out: TextIO | None = None
    ) -> None:
        self.out = out or sys.stderr
        self.show = self.out.isatty() if show is None else show
        self.step, self.total, self.done = step, total, done
        self.start_done, self.start = done, time.monotonic()
        self.lock = threading.Lock()
        self._draw()

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            self._draw()

    def _draw(self) -> None:
        if not self.show or not self.total:
            return
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f", {left:.0f} s left" if left == left else ""
        self.out.write(f"\r{self.step}: {self.done}/{self.total} sites, {rate:.1f} sites/s{eta}")
        self.out.flush()

    def close(self) -> None:
        if self.show and self.total:
            self.out.write("\n")
            self.out.flush()
