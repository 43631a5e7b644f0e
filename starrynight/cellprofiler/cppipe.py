"""Checks that a file is a CellProfiler pipeline that ``cp run`` can drive.

A ``.cppipe`` is text: a header (``CellProfiler Pipeline: http://www.cellprofiler.org``,
``Version:``, ``DateRevision:``, ``ModuleCount:``...) and one block per module starting
``ModuleName:[module_num:N|...]``. ``cp run`` passes each unit's CSV with
``--data-file``, which only replaces the file of a LoadData module: a pipeline without
an enabled LoadData module would silently ignore it, so that is an error here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starrynight import storage
from starrynight.errors import UserError

HEADER = "CellProfiler Pipeline: http://www.cellprofiler.org"
_MODULE = re.compile(r"^(\w+):\[module_num:(\d+)\|(.*)\]\s*$")
_ENABLED = re.compile(r"\|enabled:(True|False)\|")
# .cpproj project files are HDF5; their first bytes are this signature.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class PipelineInfo:
    """What :func:`check_pipeline` read from a ``.cppipe``."""

    uri: str
    version: int
    date_revision: int | None
    modules: tuple[str, ...]
    enabled: tuple[bool, ...]

    @property
    def has_loaddata(self) -> bool:
        """Whether an enabled LoadData module is there to receive ``--data-file``."""
        return any(m == "LoadData" and e for m, e in zip(self.modules, self.enabled, strict=True))


def parse_pipeline(text: str, where: str) -> PipelineInfo:
    """Parse a ``.cppipe`` text's header and module list.

    Raises
    ------
    UserError
        One line naming ``where`` and what is wrong (header, version, module count).
    """
    lines = text.splitlines()
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
    version = header.get("Version", "")
    if not version.isdigit():
        raise UserError(
            f"{where}: header line 'Version:' is {version!r}, expected a number "
            "(a pipeline saved by CellProfiler 3 or 4 says Version:5)"
        )
    revision = header.get("DateRevision", "")
    modules, enabled = [], []
    for line in lines:
        m = _MODULE.match(line)
        if m:
            modules.append(m.group(1))
            flag = _ENABLED.search(f"|{m.group(3)}|")
            enabled.append(flag is None or flag.group(1) == "True")
    count = header.get("ModuleCount")
    if count is not None and (not count.isdigit() or int(count) != len(modules)):
        raise UserError(
            f"{where}: header says ModuleCount:{count} but {len(modules)} module(s) follow; "
            "the file is truncated or was edited by hand"
        )
    if not modules:
        raise UserError(f"{where}: the pipeline has no modules")
    return PipelineInfo(
        where, int(version), int(revision) if revision.isdigit() else None,
        tuple(modules), tuple(enabled),
    )  # fmt: skip


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
