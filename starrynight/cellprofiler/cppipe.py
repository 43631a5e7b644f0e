"""Checks that a file is a CellProfiler pipeline that ``cp run`` can drive.

A ``.cppipe`` is text: a header (``CellProfiler Pipeline: http://www.cellprofiler.org``,
``Version:``, ``DateRevision:``, ``ModuleCount:``...) and one block per module starting
``ModuleName:[module_num:N|...]`` followed by its settings, one ``    Text:value`` line
each. ``cp run`` passes each unit's CSV with ``--data-file``, which only replaces the file
of a LoadData module: a pipeline without an enabled LoadData module would silently ignore
it, so that is an error here.

Only what CellProfiler itself cannot load, or would load as another pipeline, is
refused. CellProfiler reads up to ``ModuleCount`` module blocks: a count larger than the
modules that follow is a warning (it runs them all; several of the Broad's own pipelines
are like that), a smaller one an error (it would silently drop the last modules). A
module that
is neither part of CellProfiler 4.2.8 nor defined by a file of the plugins folder is an
error (CellProfiler would stop with "Could not find the ... module").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass

from starrynight import storage
from starrynight.errors import UserError

HEADER = "CellProfiler Pipeline: http://www.cellprofiler.org"
_MODULE = re.compile(r"^(\w+):\[module_num:(\d+)\|(.*)\]\s*$")
_ENABLED = re.compile(r"\|enabled:(True|False)\|")
_SETTING = re.compile(r"^    ([^:]*):(.*)$")
# A plugin file declares the name pipelines use for its module class.
_PLUGIN_NAME = re.compile(r"""^\s*module_name\s*=\s*['"](\w+)['"]""", re.MULTILINE)
_DEFAULT_INPUT = "Default Input Folder"
# .cpproj project files are HDF5; their first bytes are this signature.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


#: Modules of stock CellProfiler 4.2.8 (``cellprofiler`` and ``cellprofiler_core``), as
#: ``get_module_names()`` lists them; anything else must come from a plugins folder.
BUILTIN_MODULES = frozenset(
    """
    Align CalculateMath CalculateStatistics ClassifyObjects Closing ColorToGray
    CombineObjects ConvertImageToObjects ConvertObjectsToImage CorrectIlluminationApply
    CorrectIlluminationCalculate CreateBatchFiles Crop DefineGrid DilateImage DilateObjects
    DisplayDataOnImage DisplayDensityPlot DisplayHistogram DisplayPlatemap
    DisplayScatterPlot EditObjectsManually EnhanceEdges EnhanceOrSuppressFeatures ErodeImage
    ErodeObjects ExpandOrShrinkObjects ExportToDatabase ExportToSpreadsheet FillObjects
    FilterObjects FindMaxima FlagImage FlipAndRotate GaussianFilter GrayToColor Groups
    IdentifyDeadWorms IdentifyObjectsInGrid IdentifyObjectsManually IdentifyPrimaryObjects
    IdentifySecondaryObjects IdentifyTertiaryObjects ImageMath Images InvertForPrinting
    LabelImages LoadData MakeProjection MaskImage MaskObjects MatchTemplate
    MeasureColocalization MeasureGranularity MeasureImageAreaOccupied MeasureImageIntensity
    MeasureImageOverlap MeasureImageQuality MeasureImageSkeleton MeasureObjectIntensity
    MeasureObjectIntensityDistribution MeasureObjectNeighbors MeasureObjectOverlap
    MeasureObjectSizeShape MeasureObjectSkeleton MeasureTexture MedialAxis MedianFilter
    Metadata Morph MorphologicalSkeleton NamesAndTypes Opening OverlayObjects
    OverlayOutlines ReduceNoise RelateObjects RemoveHoles RescaleIntensity Resize
    ResizeObjects RunImageJMacro SaveCroppedObjects SaveImages ShrinkToObjectCenters Smooth
    SplitOrMergeObjects StraightenWorms Threshold Tile TrackObjects UnmixColors
    UntangleWorms Watershed
    """.split()  # noqa: SIM905 - one word per module, wrapped
)
#: Where the CellProfiler-plugins modules the PCPIP pipelines use come from.
PLUGINS_URL = "https://github.com/CellProfiler/CellProfiler-plugins"


@dataclass(frozen=True)
class Module:
    """One module block: its name, number, whether enabled, and its settings in order."""

    name: str
    number: int
    enabled: bool
    settings: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PipelineInfo:
    """What :func:`check_pipeline` read from a ``.cppipe``."""

    uri: str
    version: int
    date_revision: int | None
    modules: tuple[str, ...]
    enabled: tuple[bool, ...]
    blocks: tuple[Module, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def has_loaddata(self) -> bool:
        """Whether an enabled LoadData module is there to receive ``--data-file``."""
        return any(m == "LoadData" and e for m, e in zip(self.modules, self.enabled, strict=True))

    def default_input_files(self) -> list[tuple[Module, str]]:
        """Files enabled modules other than LoadData read from the Default Input Folder.

        A module names such a file with a ``... location`` setting whose value starts
        ``Default Input Folder`` followed by a file-name setting (CallBarcodes:
        ``Input data file location:Default Input Folder|...`` then ``Name of the
        file:Barcodes.csv``). LoadData's own CSV is replaced by ``--data-file``.
        """
        out = []
        for block in self.blocks:
            if not block.enabled or block.name == "LoadData":
                continue
            for (key, value), (next_key, next_value) in zip(
                block.settings, block.settings[1:], strict=False
            ):
                if (
                    key.lower().endswith("location")
                    and value.startswith(_DEFAULT_INPUT)
                    and "file" in next_key.lower()
                    and "name" in next_key.lower()
                    and next_value.strip()
                ):
                    out.append((block, next_value.strip()))
        return out


def parse_pipeline(text: str, where: str) -> PipelineInfo:
    """Parse a ``.cppipe`` text's header and module list.

    Raises
    ------
    UserError
        One line naming ``where`` and what is wrong (header, version, module count).
    """
    lines = text.splitlines()
    header = _header(lines, where)
    version = header.get("Version", "")
    if not version.isdigit():
        raise UserError(
            f"{where}: header line 'Version:' is {version!r}, expected a number "
            "(a pipeline saved by CellProfiler 3 or 4 says Version:5)"
        )
    revision = header.get("DateRevision", "")
    blocks = _module_blocks(lines)
    if not blocks:
        raise UserError(f"{where}: the pipeline has no modules")
    warnings = _check_module_count(header.get("ModuleCount"), blocks, where)
    return PipelineInfo(
        where, int(version), int(revision) if revision.isdigit() else None,
        tuple(b.name for b in blocks), tuple(b.enabled for b in blocks), tuple(blocks),
        tuple(warnings),
    )  # fmt: skip


def _header(lines: list[str], where: str) -> dict[str, str]:
    """The ``Key:value`` lines after the first line, up to the first blank one.

    Raises
    ------
    UserError
        When the first line is not CellProfiler's pipeline header.
    """
    first = lines[0].strip() if lines else ""
    if first != HEADER:
        shown = first[:60] + ("..." if len(first) > 60 else "")
        raise UserError(
            f"{where}: not a CellProfiler pipeline (first line {shown!r}, expected {HEADER!r})"
        )
    header: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header


def _module_blocks(lines: list[str]) -> list[Module]:
    """Every ``ModuleName:[module_num:N|...]`` block with the setting lines under it."""
    blocks: list[Module] = []
    settings: list[tuple[str, str]] = []
    head: tuple[str, int, bool] | None = None
    for line in lines:
        m = _MODULE.match(line)
        if m:
            if head is not None:
                blocks.append(Module(*head, tuple(settings)))
            flag = _ENABLED.search(f"|{m.group(3)}|")
            head = (m.group(1), int(m.group(2)), flag is None or flag.group(1) == "True")
            settings = []
        elif head is not None:
            s = _SETTING.match(line)
            if s:
                settings.append((s.group(1), s.group(2)))
    if head is not None:
        blocks.append(Module(*head, tuple(settings)))
    return blocks


def _check_module_count(count: str | None, blocks: list[Module], where: str) -> list[str]:
    """Warnings about the header's ``ModuleCount`` (none when absent).

    Raises
    ------
    UserError
        When it is not a number, or is smaller than the modules that follow.
    """
    if count is None:
        return []
    if not count.isdigit():
        raise UserError(f"{where}: header line 'ModuleCount:' is {count!r}, expected a number")
    if int(count) > len(blocks):
        # CellProfiler reads up to ModuleCount blocks and stops at the end of the file.
        return [
            f"{where}: header says ModuleCount:{count} but {len(blocks)} module(s) follow; "
            "CellProfiler runs the modules that are there"
        ]
    if int(count) < len(blocks):
        # CellProfiler would read only the first ModuleCount blocks and drop the rest
        # without a word: the run would not be the pipeline the file shows.
        dropped = ", ".join(f"{b.number} {b.name}" for b in blocks[int(count) :][:3])
        raise UserError(
            f"{where}: header says ModuleCount:{count} but {len(blocks)} modules follow; "
            f"CellProfiler would silently skip module(s) {dropped}"
            f"{', ...' if len(blocks) - int(count) > 3 else ''}: set ModuleCount:{len(blocks)}"
        )
    return []


def plugin_modules(plugins: str | None) -> dict[str, str]:
    """Module name -> plugin file, for every ``*.py`` of a CellProfiler plugins folder.

    CellProfiler imports each ``.py`` file of ``--plugins-directory`` and registers its
    module classes under their ``module_name``; this reads the same declarations
    without importing (the plugins need CellProfiler's own interpreter).
    """
    if not plugins or not os.path.isdir(plugins):
        return {}
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(plugins), key=lambda e: e.name):
        if not (entry.is_file() and entry.name.endswith(".py")):
            continue
        with open(entry.path, encoding="utf-8", errors="replace") as f:
            for name in _PLUGIN_NAME.findall(f.read()):
                found.setdefault(name, entry.path)
    return found


def check_modules(info: PipelineInfo, plugins: str | None = None) -> None:
    """Every enabled module is stock CellProfiler 4.2.8 or defined in ``plugins``.

    Parameters
    ----------
    info : PipelineInfo
        The parsed pipeline.
    plugins : str, optional
        Local CellProfiler plugins folder (``--plugins-directory``); when it is not local
        (an S3 prefix, a path inside a container image) only the stock modules are known
        and unknown ones are left for CellProfiler to judge.

    Raises
    ------
    UserError
        One line naming the first module that is not installed and where it comes from.
    """
    if plugins and not os.path.isdir(plugins):
        return
    known = plugin_modules(plugins)
    for block in info.blocks:
        if block.name in BUILTIN_MODULES or block.name in known:
            continue
        where = (
            f"neither CellProfiler 4.2.8 nor --plugins-directory {plugins} has it"
            if plugins
            else "it is not part of CellProfiler 4.2.8 and no --plugins-directory was given"
        )
        raise UserError(
            f"{info.uri}: module {block.number} {block.name} is not installed: {where}; "
            f"if it is a CellProfiler plugin (from {PLUGINS_URL}), put its .py file in a "
            "folder and pass --plugins-directory FOLDER"
        )


def check_pipeline(uri: str, need_loaddata: bool = True) -> PipelineInfo:
    """Read and check a ``.cppipe`` before anything runs.

    Parameters
    ----------
    uri : str
        Local path or ``s3://`` URI of the pipeline.
    need_loaddata : bool
        Require an enabled LoadData module (``cp run`` feeds CSVs through it).

    Raises
    ------
    UserError
        The file does not exist, is a ``.cpproj`` project, is not a CellProfiler
        pipeline, or has no enabled LoadData module.
    """
    if not storage.exists(uri) or storage.is_dir(uri):
        raise UserError(f"{uri}: no such pipeline file (expected a CellProfiler .cppipe)")
    data = storage.read_bytes(uri)
    if data.startswith(_HDF5_MAGIC):
        raise UserError(
            f"{uri}: is a CellProfiler project (.cpproj), not a pipeline; export it with "
            "File > Export > Pipeline... as .cppipe"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{uri}: not a CellProfiler pipeline (not a text file)") from None
    info = parse_pipeline(text, uri)
    if need_loaddata and not info.has_loaddata:
        raise UserError(
            f"{uri}: has no enabled LoadData module, so CellProfiler would ignore the "
            "LoadData CSV; make LoadData the pipeline's first module (modules: "
            f"{', '.join(info.modules[:6])}{', ...' if len(info.modules) > 6 else ''})"
        )
    return info


# Run by CellProfiler's own interpreter: load the pipeline as ``cellprofiler -c`` would
# (headless, with the plugins folder) and print the modules it could not build.
_LOAD_SCRIPT = """
import json, sys
from cellprofiler_core.preferences import set_headless, set_plugin_directory
set_headless()
if sys.argv[2]:
    set_plugin_directory(sys.argv[2], globally=False)
import cellprofiler_core.utilities.core.modules as modules
from cellprofiler_core.pipeline import LoadException, Pipeline
modules.fill_modules()
errors = []
def listener(pipeline, event):
    if isinstance(event, LoadException):
        text = type(event.error).__name__
        if str(event.error):
            text += ": " + str(event.error)
        errors.append([event.module_name, text])
pipeline = Pipeline()
pipeline.add_listener(listener)
pipeline.load(sys.argv[1])
print(json.dumps(errors))
"""


def cellprofiler_python(cellprofiler: str) -> str | None:
    """CellProfiler's interpreter: ``python`` next to the ``cellprofiler`` executable of
    its environment, or ``None`` when there is none (a container, a bundled app)."""
    folder = os.path.dirname(cellprofiler)
    for name in ("python", "python3"):
        candidate = os.path.join(folder, name)
        if folder and os.access(candidate, os.X_OK):
            return candidate
    return None


def check_loads(
    info: PipelineInfo, cellprofiler: str, plugins: str | None = None, timeout: float = 300
) -> bool:
    """Load the pipeline with CellProfiler's own classes, as ``cellprofiler -c`` will.

    CellProfiler drops a module it cannot build (a plugin of another version whose
    settings it cannot read, a module whose settings are corrupt), logs "Failed to load
    pipeline" and runs the rest, exiting 0: a different pipeline than the file shows.
    This loads it first, once per run, and refuses instead.

    Parameters
    ----------
    info : PipelineInfo
        The checked pipeline (its ``uri`` must be a local file).
    cellprofiler : str
        Path of the ``cellprofiler`` executable; its environment's ``python`` loads.
    plugins : str, optional
        ``--plugins-directory``.
    timeout : float
        Seconds before giving up (then nothing is refused).

    Returns
    -------
    bool
        Whether the check ran (``False``: no CellProfiler interpreter next to the
        executable, or it did not answer).

    Raises
    ------
    UserError
        Naming the first module CellProfiler cannot load and its error.
    """
    python = cellprofiler_python(cellprofiler)
    if python is None:
        return False
    try:
        out = subprocess.run(
            [python, "-c", _LOAD_SCRIPT, info.uri, plugins or ""],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        errors = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, IndexError, ValueError):
        return False
    if errors:
        name, error = errors[0]
        numbers = [b.number for b in info.blocks if b.name == name]
        where = f"module {numbers[0]} {name}" if numbers else f"module {name}"
        hint = (
            f"; the {name} of --plugins-directory {plugins} does not read the settings this "
            "pipeline was saved with (a different version of the plugin?)"
            if name in plugin_modules(plugins)
            else ""
        )
        raise UserError(
            f"{info.uri}: CellProfiler 4.2.8 cannot load {where} ({error}) and would run "
            f"the pipeline without it{hint}"
        )
    return True
