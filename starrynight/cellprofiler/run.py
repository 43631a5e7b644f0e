"""``cp run``: a lab's ``.cppipe`` over the LoadData CSVs of a step, one node per CSV.

Each CSV (unit of work) becomes a pipecraft :class:`~pipecraft.Command` running

    cellprofiler -c -r -p PIPE --data-file CSV -i IN -o OUT [--plugins-directory DIR]

inside a :class:`~pipecraft.Scatter`, so the same run goes to local processes, Snakemake
or AWS Batch (with a CellProfiler container image). ``OUT`` is
``WORKSPACE/cellprofiler/<step>/<unit>``. ``IN``, CellProfiler's Default Input Folder, is
``WORKSPACE/cellprofiler/<step>/_input``, holding the files the pipeline's modules read
from there (``Barcodes.csv``, the experiment's barcode table, for CallBarcodes in PCPIP 7
and 9), or the user's own ``--input-folder``. Units fail on their own; the backend's
completion records make a re-run skip the units that succeeded and redo the others, and a
failed unit's reason is CellProfiler's own error (module and exception), read from its log.

Everything that can be checked is checked before any process starts: the pipeline is a
CellProfiler pipeline with a LoadData module, every module is stock CellProfiler 4.2.8 or
in the plugins folder, the files it reads from the Default Input Folder exist, every CSV
is a LoadData CSV and names only files that exist.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipecraft import (
    AwsBatchBackend,
    Command,
    LocalBackend,
    NodeState,
    Pipeline,
    Resources,
    RunStatus,
    Scatter,
    SnakemakeBackend,
)
from pipecraft.errors import PipecraftError
from starrynight import storage, workspace
from starrynight.cellprofiler.cppipe import (
    PipelineInfo,
    check_loads,
    check_modules,
    check_pipeline,
)
from starrynight.cellprofiler.loaddata import STEPS, list_csvs, missing_files
from starrynight.errors import UserError
from starrynight.experiment import load_experiment

BACKENDS = ("local", "snakemake", "aws_batch")
_IMAGE_COLUMN = re.compile(r"^(FileName|PathName|URL|Frame|Series)_(\w+)$")
#: The file CallBarcodes (CellProfiler-plugins) reads the barcode table from.
BARCODES_FILE = "Barcodes.csv"
_RUN_ERROR = re.compile(r"^Error detected during run of module (\w+)(?:#(\d+))?")
_LOAD_ERROR = re.compile(r"^Failed to load pipeline")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning): ")
_EXIT = re.compile(r"^exit code (-?\d+)")
_CHAINED = ("During handling", "The above exception")


@dataclass
class CPUnit:
    """One unit of work: its CSV and where CellProfiler writes."""

    unit: str
    csv: str
    output: str
    rows: int


@dataclass
class CPRunReport:
    """Outcome of :func:`run_pipeline`: node state and log of every unit."""

    step: str
    status: RunStatus
    states: dict[str, NodeState] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    units: list[CPUnit] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    input_folder: str | None = None

    def line(self) -> str:
        """One line: how many units ran, were skipped, failed."""
        counts: dict[str, int] = {}
        for s in self.states.values():
            counts[s.value] = counts.get(s.value, 0) + 1
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"cp run {self.step}: {self.status.value} ({len(self.units)} unit(s): {parts})"


def check_csv(uri: str, check_files: bool = True) -> int:
    """Check a LoadData CSV: image columns come in FileName/PathName pairs, rows exist,
    and (``check_files``) every file it names exists. Returns the number of rows.

    Raises
    ------
    UserError
        One line naming the CSV and the column, row or missing file.
    """
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{uri}: not a LoadData CSV (not UTF-8 text)") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    images: dict[str, set[str]] = {}
    for col in header:
        m = _IMAGE_COLUMN.match(col)
        if m:
            images.setdefault(m.group(2), set()).add(m.group(1))
    if not images:
        raise UserError(
            f"{uri}: not a LoadData CSV (no FileName_<Name>/PathName_<Name> columns; "
            f"header starts {', '.join(header[:4])})"
        )
    for name, kinds in sorted(images.items()):
        if "URL" not in kinds and not {"FileName", "PathName"} <= kinds:
            lacking = "PathName" if "FileName" in kinds else "FileName"
            raise UserError(f"{uri}: image {name} has no {lacking}_{name} column")
    rows = list(reader)
    if not rows:
        raise UserError(f"{uri}: LoadData CSV has a header but no rows")
    if check_files:
        wanted: set[str] = set()
        for i, row in enumerate(rows, start=2):
            for name, kinds in images.items():
                if "URL" in kinds:
                    continue
                path, file = row.get(f"PathName_{name}"), row.get(f"FileName_{name}")
                if not path or not file:
                    raise UserError(f"{uri}: line {i}: empty PathName_{name} or FileName_{name}")
                wanted.add(storage.join(path, file))
        missing = missing_files(wanted)
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{uri}: names {len(missing)} missing file(s), e.g. {missing[0]}{more}")
    return len(rows)


def plan_units(
    ws: str, step: str, plates: Sequence[str] = (), check_files: bool = True
) -> list[CPUnit]:
    """The units of a step's ``cp run``: its CSVs, checked, with their output folders.

    Raises
    ------
    UserError
        Unknown step, no CSVs (``cp loaddata`` not run), or a CSV that fails
        :func:`check_csv`.
    """
    if step not in STEPS:
        raise UserError(f"step {step!r} is unknown: expected one of {', '.join(STEPS)}")
    found = list_csvs(ws, step, plates)
    if not found:
        where = f" for plate(s) {', '.join(plates)}" if plates else ""
        raise UserError(
            f"{workspace.loaddata_dir(ws, step)}: no LoadData CSVs{where}; run "
            f"'starrynight cp loaddata -w {ws} --step {step}' first"
        )
    return [
        CPUnit(
            unit,
            uri,
            workspace.cellprofiler_output_dir(ws, step, unit),
            check_csv(uri, check_files),
        )
        for unit, uri in found
    ]


def cellprofiler_argv(
    cellprofiler: str, pipeline: str, csv_uri: str, output: str, plugins: str | None = None,
    input_folder: str | None = None,
) -> list[str]:  # fmt: skip
    """The headless CellProfiler command line of one unit."""
    argv = [cellprofiler, "-c", "-r", "-p", pipeline, "--data-file", csv_uri]
    if input_folder:
        argv += ["-i", input_folder]
    argv += ["-o", output]
    if plugins:
        argv += ["--plugins-directory", plugins]
    return argv


def build_pipeline(
    step: str,
    units: Sequence[CPUnit],
    pipeline: str,
    cellprofiler: str = "cellprofiler",
    plugins: str | None = None,
    image: str | None = None,
    memory_mb: int = 4096,
    input_folder: str | None = None,
    input_files: Sequence[str] = (),
) -> Pipeline:
    """A pipecraft pipeline: a scatter of one CellProfiler Command per unit."""

    def body(u: CPUnit) -> Command:
        argv = cellprofiler_argv(cellprofiler, pipeline, u.csv, u.output, plugins, input_folder)
        return Command(
            name=f"cp-{step}-{u.unit}",
            argv=tuple(argv),
            inputs=(u.csv, pipeline, *input_files),
            outputs=(u.output,),
            image=image,
            resources=Resources(cpus=1, memory_mb=memory_mb),
        )

    return Pipeline(f"cp-{step}", Scatter(f"cp-{step}", units, body), check_inputs=True)


def _resolve_executable(cellprofiler: str, backend: str) -> str:
    if backend == "aws_batch" or os.sep in cellprofiler:
        if backend != "aws_batch" and not os.access(cellprofiler, os.X_OK):
            raise UserError(f"--cellprofiler {cellprofiler}: not an executable file")
        return cellprofiler
    found = shutil.which(cellprofiler)
    if found is None:
        raise UserError(
            f"--cellprofiler {cellprofiler!r}: not found on PATH; install CellProfiler 4.2.8 "
            "in its own environment and pass its path (e.g. /opt/cp-venv/bin/cellprofiler)"
        )
    return found


def stage_inputs(
    ws: str, step: str, info: PipelineInfo, input_folder: str | None = None
) -> tuple[str, list[str]]:
    """The Default Input Folder of a step's units, holding what the pipeline reads there.

    Parameters
    ----------
    ws : str
        Workspace (its experiment names the barcode table).
    step : str
        The step (its folder is ``cellprofiler/<step>/_input``).
    info : PipelineInfo
        The pipeline; :meth:`PipelineInfo.default_input_files` says what it reads.
    input_folder : str, optional
        The user's own Default Input Folder: checked to hold those files, used as is.

    Returns
    -------
    str, list of str
        The folder for ``-i`` and the files in it the pipeline reads.

    Raises
    ------
    UserError
        A file the pipeline reads is missing from ``input_folder``, or is one starrynight
        cannot provide (anything but ``Barcodes.csv``), or the experiment has no barcode
        table.
    """
    wanted = info.default_input_files()
    if input_folder is not None:
        if not storage.exists(input_folder) or not storage.is_dir(input_folder):
            raise UserError(f"--input-folder {input_folder}: no such folder")
        for module, name in wanted:
            if not storage.exists(storage.join(input_folder, name)):
                raise UserError(
                    f"{info.uri}: module {module.number} {module.name} reads {name} from the "
                    f"Default Input Folder, but --input-folder {input_folder} has no {name}"
                )
        return input_folder, [storage.join(input_folder, n) for _, n in wanted]
    folder = storage.join(workspace.cellprofiler_dir(ws, step), "_input")
    storage.makedirs(folder)
    staged = []
    for module, name in wanted:
        if name != BARCODES_FILE:
            raise UserError(
                f"{info.uri}: module {module.number} {module.name} reads {name} from the "
                f"Default Input Folder; starrynight provides only {BARCODES_FILE} (the "
                "experiment's barcode table) there: put the file in a folder and pass "
                "--input-folder FOLDER"
            )
        source = load_experiment(ws).barcodes
        if not source:
            raise UserError(
                f"{info.uri}: module {module.number} {module.name} reads {name} from the "
                "Default Input Folder but the experiment names no barcode table; set "
                "'barcodes' in the experiment (exp new) or pass --input-folder FOLDER"
            )
        if not storage.exists(source):
            raise UserError(f"experiment barcodes: {source} does not exist")
        target = storage.join(folder, name)
        data = storage.read_bytes(source)
        if not storage.exists(target) or storage.read_bytes(target) != data:
            storage.write_bytes(target, data)
        staged.append(target)
    return folder, staged


def cellprofiler_error(log: str) -> str | None:
    """CellProfiler's own error in a headless run's log: the module and the exception.

    CellProfiler logs ``Error detected during run of module <Name>[#<n>]`` and the
    traceback when a module raises; ``Failed to load pipeline`` and the traceback when a
    module cannot be loaded (it then runs without that module). Returns e.g.
    ``"module MeasureImageIntensity: ValueError: The CorrDNA image is missing from the
    pipeline."``, or ``None`` when the log holds neither.
    """
    lines = log.splitlines()
    load_errors: list[str] = []
    run_error: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        run = _RUN_ERROR.match(line)
        if run or _LOAD_ERROR.match(line):
            exc = _exception_after(lines, i + 1)
            if run:
                module = run.group(1) + (f" #{run.group(2)}" if run.group(2) else "")
                run_error = f"module {module}: {exc or 'failed'}"
            elif exc:
                load_errors.append(exc)
        i += 1
    parts = [f"could not load the pipeline ({e})" for e in dict.fromkeys(load_errors)]
    if run_error:
        parts.append(run_error)
    return "; ".join(parts) or None


def _exception_after(lines: list[str], start: int) -> str | None:
    # The last exception line of the traceback(s) that follow, before the next record.
    found = None
    for line in lines[start:]:
        if _RUN_ERROR.match(line.strip()) or _LOAD_ERROR.match(line.strip()):
            break
        if _EXCEPTION.match(line):
            found = line.strip()
        elif found and line and not line.startswith((" ", "Traceback", *_CHAINED)):
            break
    return found


def _explain(reason: str, log: str) -> str:
    error = cellprofiler_error(log)
    if error is None:
        return reason
    code = _EXIT.match(reason)
    return f"{code.group(0) + ': ' if code else ''}CellProfiler {error}"


def make_backend(
    backend: str,
    workdir: str,
    workers: int = 1,
    job_queue: str | None = None,
    image: str | None = None,
):
    """The pipecraft backend named by ``backend`` (see :data:`BACKENDS`)."""
    if backend == "local":
        return LocalBackend(workdir, max_workers=workers)
    if backend == "snakemake":
        return SnakemakeBackend(workdir, cores=workers)
    if backend == "aws_batch":
        if not job_queue or not image:
            raise UserError(
                "--backend aws_batch needs --job-queue and --image (a CellProfiler container)"
            )
        return AwsBatchBackend(job_queue, image=image)
    raise UserError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def run_pipeline(
    ws: str,
    step: str,
    pipeline: str,
    plates: Sequence[str] = (),
    backend: str = "local",
    cellprofiler: str = "cellprofiler",
    plugins: str | None = None,
    workers: int = 1,
    workdir: str | None = None,
    job_queue: str | None = None,
    image: str | None = None,
    check_files: bool = True,
    wait: bool = True,
    input_folder: str | None = None,
    check_load: bool = True,
) -> CPRunReport:
    """Run ``pipeline`` over every LoadData CSV of ``step`` (see module docstring).

    Parameters
    ----------
    ws : str
        Workspace; CSVs are read from ``loaddata/<step>``, outputs go to
        ``cellprofiler/<step>/<unit>``.
    step : str
        Step whose CSVs to run.
    pipeline : str
        The lab's ``.cppipe``.
    plates : sequence of str
        Only these plates' units (default: all).
    backend : str
        ``local`` (default), ``snakemake`` or ``aws_batch``.
    cellprofiler : str
        CellProfiler executable (name on PATH or path; inside the image on AWS Batch).
    plugins : str, optional
        CellProfiler plugins folder (``--plugins-directory``): the CellProfiler-plugins
        modules a pipeline uses (CompensateColors, CallBarcodes in PCPIP 7 and 9) as
        ``.py`` files; they are not on PyPI, the user brings them.
    workers : int
        Units run at once (local, Snakemake).
    workdir : str, optional
        Where the backend keeps logs and completion records (default
        ``WORKSPACE/cellprofiler/<step>/_pipecraft``; must be local).
    job_queue, image : str, optional
        AWS Batch queue and CellProfiler container image.
    check_files : bool
        Check that every file the CSVs name exists (turn off for CSVs written with a
        ``--path-mask`` this machine cannot see).
    wait : bool
        Wait for the run to finish.
    input_folder : str, optional
        CellProfiler's Default Input Folder (``-i``) instead of the staged
        ``cellprofiler/<step>/_input`` (see :func:`stage_inputs`).
    check_load : bool
        Load the pipeline once with CellProfiler's own interpreter before the run
        (local backends; see :func:`~starrynight.cellprofiler.cppipe.check_loads`).

    Raises
    ------
    UserError
        Any problem found before the run starts: pipeline, a module not installed,
        inputs of the Default Input Folder, CSVs, executable, backend.
    """
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    remote = backend == "aws_batch"
    if not remote and storage.is_s3(ws):
        raise UserError(
            f"--workspace {ws}: the {backend} backend runs CellProfiler on this machine, "
            "which writes to local folders; use a local workspace or --backend aws_batch"
        )
    if not remote:
        ws = os.path.abspath(ws)
        pipeline = os.path.abspath(pipeline) if not storage.is_s3(pipeline) else pipeline
        if plugins and not os.path.isdir(plugins):
            raise UserError(f"--plugins-directory {plugins}: no such folder")
        plugins = os.path.abspath(plugins) if plugins else None
    info = check_pipeline(pipeline)
    check_modules(info, plugins)
    units = plan_units(ws, step, plates, check_files)
    in_folder, in_files = stage_inputs(ws, step, info, input_folder)
    exe = _resolve_executable(cellprofiler, backend)
    if check_load and not remote:
        check_loads(info, exe, plugins)
    if workdir is None:
        if storage.is_s3(ws):
            raise UserError("--workdir is required (a local folder) when the workspace is on S3")
        workdir = os.path.join(workspace.cellprofiler_dir(ws, step), "_pipecraft")
    if not remote:
        for u in units:
            storage.makedirs(u.output)
    try:
        pipe = build_pipeline(
            step, units, pipeline, exe, plugins, image, input_folder=in_folder,
            input_files=in_files,
        )  # fmt: skip
        runner = make_backend(backend, workdir, workers, job_queue, image)
        handle = runner.run(pipe)
    except PipecraftError as exc:
        raise UserError(f"cp run {step}: {exc}") from exc
    status = handle.wait() if wait else handle.status()
    failures = {n: _explain(r, _logs(handle, n)) for n, r in handle.failures().items()}
    return CPRunReport(
        step, status, handle.node_states(), failures, units, list(info.warnings), in_folder
    )


def _logs(handle, node: str) -> str:
    try:
        return handle.logs(node)
    except (OSError, PipecraftError):
        return ""
