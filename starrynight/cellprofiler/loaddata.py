"""LoadData CSVs for CellProfiler, from the index and the workspace, in PCPIP conventions.

A lab that keeps its own ``.cppipe`` pipelines (the Broad's pooled-cell-painting
image-processing pipelines, PCPIP, or its own) drives CellProfiler with LoadData CSVs.
This module writes one CSV per unit of work of a step under
``WORKSPACE/loaddata/<step>/<unit>.csv``, with the columns PCPIP's own CSV writers
(``lambda/lambda_functions/create_CSVs.py``'s ``create_CSV_pipeline<N>``) and
nf-pooled-cellpainting's ``generate_load_data_csv.py`` write for that step, so the
Broad's pipelines run on them unchanged. :data:`STEPS` is the table (see
:func:`column_table` and the README):

- metadata: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Well_Value`` (the bare
  well, which PCPIP's SaveImages modules put in file names as ``\\g<Well_Value>``),
  ``Metadata_Site``; ``Metadata_Series`` (the site again) where PCPIP writes it; and
  ``Metadata_SBSCycle`` and ``Metadata_Cycle`` (PCPIP and nf spellings) on per-image
  SBS rows;
- per image ``FileName_<Name>``, ``PathName_<Name>`` and, for the multi-channel raw
  files, ``Frame_<Name>``: the 0-based frame of that channel in the file.

Names come from the experiment's roles: CP nuclei/cell/mito/er/wga/rna are ``DNA``/
``Phalloidin``/``Mito``/``ER``/``WGA``/``RNA`` (other channels: their normalised name).
Each step prefixes them its own way: raw images ``Orig<Name>``, illumination functions
``Illum<Name>``, corrected images ``Corr<Name>``, except the segmentation check (PCPIP
3), which names corrected images bare (``DNA``, ``Phalloidin``). SBS steps that see every
cycle of a site at once use PCPIP's wide format, one row per site with
``Cycle<kk>_Orig<Base>`` / ``Cycle<kk>_Illum<Base>`` (raw) or ``Cycle<kk>_<Base>`` and
``Cycle01_DAPI`` (aligned); SBS illumination uses the narrow format, one row per image.

Every file a CSV names is checked to exist before anything is written, so a step whose
inputs are not materialised yet fails with one line that says which files and which
command makes them.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow.compute as pc

from starrynight import storage, workspace
from starrynight.errors import UserError
from starrynight.experiment import CPArm, Experiment, SBSArm, load_experiment
from starrynight.index import dataset_root, image_uri, load_index, normalise_channel

#: CellProfiler image names of the CP roles, as PCPIP pipelines spell them.
CP_ROLE_NAMES = {
    "nuclei": "DNA", "cell": "Phalloidin", "mito": "Mito", "er": "ER", "wga": "WGA", "rna": "RNA",
}  # fmt: skip
#: Name of the SBS nuclear channel on raw and illumination images (PCPIP 5/6).
SBS_NUCLEI_NAME = "DNA"
#: Name of the aligned cycle-1 nuclear image (PCPIP 7/9: ``Cycle01_DAPI``).
SBS_ALIGNED_NUCLEI_NAME = "DAPI"
#: What step ``analysis`` loads per row: tiles where cut, sites paired by number, or both.
GRIDS = ("auto", "tiles", "sites")
#: Grouping keys of a unit of work, in the order they appear in a unit's name.
GROUP_KEYS = ("plate", "well", "site", "cycle")

_NAME_OK = re.compile(r"^[A-Za-z0-9_]+$")
_UNIT_UNSAFE = re.compile(r"[^A-Za-z0-9_.=@+-]")

# What each kind of input is and which command materialises it, for error messages.
_PRODUCTS = {
    "raw": ("raw image(s)", "the index is stale: run 'starrynight inventory gen' and 'index gen'"),
    "illum": ("illumination function(s)", "run 'starrynight illum calc' first"),
    "corr": ("corrected image(s)", "run 'starrynight illum apply' first"),
    "aligned": ("aligned SBS image(s)", "run 'starrynight align' first"),
    "tiles": ("tile(s)", "run 'starrynight cp tiles' (with the same --name options) first"),
}


@dataclass(frozen=True)
class Step:
    """What one CellProfiler step loads, and how PCPIP's CSV writer names it.

    Attributes
    ----------
    arm : str
        ``cp``, ``sbs`` or ``both`` (CP sites joined with their SBS sites).
    per_image : bool
        One row per image file (narrow) instead of one row per site (wide).
    loads : tuple of str
        Kinds of images per row: ``orig``, ``illum``, ``corr``, ``aligned``.
    default_by : tuple of str
        Default unit of work (grouping keys).
    pcpip : str
        The PCPIP pipeline this step feeds, for the help text.
    metadata : tuple of str
        The ``Metadata_`` columns, in order.
    corr_prefix : str
        Prefix of corrected CP images (``Corr``; PCPIP 3 loads them bare).
    """

    arm: str
    per_image: bool
    loads: tuple[str, ...]
    default_by: tuple[str, ...]
    pcpip: str
    metadata: tuple[str, ...] = ("Plate", "Well", "Well_Value", "Site")
    corr_prefix: str = "Corr"


_SERIES = ("Plate", "Well", "Well_Value", "Site", "Series")
_SBS_IMAGE = ("Plate", "Well", "Well_Value", "Site", "Cycle", "SBSCycle")
STEPS: dict[str, Step] = {
    "illum_calc_cp": Step("cp", True, ("orig",), ("plate",), "1_CP_Illum", _SERIES),
    "illum_apply_cp": Step(
        "cp", True, ("orig", "illum"), ("plate", "well"), "2_CP_Apply_Illum", _SERIES
    ),
    "segcheck_cp": Step(
        "cp", True, ("corr",), ("plate", "well"), "3_CP_SegmentationCheck", corr_prefix=""
    ),
    "illum_calc_sbs": Step("sbs", True, ("orig",), ("plate",), "5_BC_Illum", _SBS_IMAGE),
    "illum_apply_sbs": Step(
        "sbs", False, ("orig", "illum"), ("plate", "well"), "6_BC_Apply_Illum", _SERIES
    ),
    "preprocess_sbs": Step("sbs", False, ("aligned",), ("plate", "well"), "7_BC_Preprocess"),
    "analysis": Step("both", False, ("corr", "aligned"), ("plate", "well"), "9_Analysis"),
}


def image_columns(step_name: str) -> list[str]:
    """The image names a step's CSV holds, as patterns (for the README and help).

    ``<Name>`` stands for a channel's CellProfiler name (``DNA``, ``Phalloidin``...),
    ``<Base>`` for ``A``/``C``/``G``/``T``, ``<kk>`` for a two-digit cycle.
    """
    step = STEPS[step_name]
    out = []
    if step.arm in ("cp", "both"):
        if "orig" in step.loads:
            out.append("Orig<Name> (+Frame_)")
        if "illum" in step.loads:
            out.append("Illum<Name>")
        if "corr" in step.loads:
            out.append(f"{step.corr_prefix}<Name>")
    if step.arm == "sbs" and step.per_image:
        out.append(f"Orig<Base>, Orig{SBS_NUCLEI_NAME} (+Frame_)")
    elif step.arm in ("sbs", "both"):
        if "orig" in step.loads:
            out.append(f"Cycle<kk>_Orig<Base>, Cycle<kk>_Orig{SBS_NUCLEI_NAME} (+Frame_)")
            out.append(f"Cycle<kk>_Illum<Base>, Cycle<kk>_Illum{SBS_NUCLEI_NAME}")
        if "aligned" in step.loads:
            out += ["Cycle<kk>_<Base>", f"Cycle01_{SBS_ALIGNED_NUCLEI_NAME}"]
    return out


def column_table() -> str:
    """The per-step column table (Markdown), as the README shows it."""
    lines = [
        "| step | PCPIP pipeline | one row per | metadata columns | images |",
        "|---|---|---|---|---|",
    ]
    for name, step in STEPS.items():
        row = "image" if step.per_image else "site"
        meta = ", ".join(f"`Metadata_{m}`" for m in step.metadata)
        images = ", ".join(f"`{i}`" for i in image_columns(name))
        lines.append(f"| `{name}` | {step.pcpip} | {row} | {meta} | {images} |")
    return "\n".join(lines) + "\n"


@dataclass
class UnitCSV:
    """One written CSV: its unit name, URI and number of rows."""

    unit: str
    uri: str
    rows: int


@dataclass
class LoadDataResult:
    """What :func:`write_loaddata` did."""

    step: str
    csvs: list[UnitCSV] = field(default_factory=list)
    files_checked: int = 0
    removed: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the CLI."""
        rows = sum(c.rows for c in self.csvs)
        text = (
            f"{self.step}: wrote {len(self.csvs)} LoadData CSV(s), {rows} row(s); "
            f"all {self.files_checked} referenced file(s) exist"
        )
        if self.removed:
            text += f"; removed {len(self.removed)} stale CSV(s)"
        return text


# -- names ------------------------------------------------------------------------------


def parse_name_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["ZO1-AF488=ER", ...]`` -> ``{"ZO1-AF488": "ER"}`` (channel as written -> name).

    Raises
    ------
    UserError
        When an item is not ``CHANNEL=NAME`` or NAME is not letters, digits and ``_``.
    """
    out: dict[str, str] = {}
    for item in items:
        channel, sep, name = item.rpartition("=")
        if not sep or not channel or not _NAME_OK.match(name):
            raise UserError(
                f"--name {item!r}: expected CHANNEL=NAME with NAME made of letters, digits "
                "and _ (e.g. 'ZO1-AF488=ER')"
            )
        out[channel] = name
    return out


def _check_overrides(overrides: Mapping[str, str], channels: Iterable[str]) -> None:
    known = set(channels)
    unknown = [c for c in overrides if c not in known]
    if unknown:
        raise UserError(
            f"--name {unknown[0]!r}: not a channel of the experiment; channels: "
            f"{', '.join(sorted(known))}"
        )


def _unique(arm: str, names: dict[str, str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for channel, name in names.items():
        if name in seen:
            raise UserError(
                f"{arm} channels {seen[name]!r} and {channel!r} both get the CellProfiler "
                f"name {name!r}; give one another name with --name CHANNEL=NAME"
            )
        seen[name] = channel
    return names


def _arm_names(
    arm: str,
    part: CPArm | SBSArm,
    overrides: Mapping[str, str] | None,
    default: Callable[[str, str], str],
) -> dict[str, str]:
    """CellProfiler name of each channel of an arm, in the experiment's order.

    ``default(role, channel)`` names a channel (role ``""`` when it has none);
    ``overrides`` (channel -> name) win; no two channels may share a name.
    """
    overrides = overrides or {}
    role_of = {ch: role for role, ch in part.roles.items()}
    names = {ch: overrides.get(ch, default(role_of.get(ch, ""), ch)) for ch in part.channels}
    return _unique(arm, names)


def cp_names(exp: Experiment, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """CellProfiler name of each CP channel (as written), in the experiment's order.

    ``nuclei`` -> ``DNA``, ``cell`` -> ``Phalloidin``, ``mito`` -> ``Mito``; any other
    channel keeps its normalised name (``ZO1-AF488`` -> ``ZO1AF488``); ``overrides``
    (channel -> name) win.
    """
    if exp.cp is None:
        raise UserError("the experiment has no CP arm: this step needs Cell Painting images")
    return _arm_names(
        "CP", exp.cp, overrides, lambda role, ch: CP_ROLE_NAMES.get(role, normalise_channel(ch))
    )


def _sbs_default_name(role: str, channel: str) -> str:
    if role in ("A", "C", "G", "T"):
        return role
    if role == "nuclei":
        return SBS_NUCLEI_NAME
    return normalise_channel(channel)


def sbs_names(exp: Experiment, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """CellProfiler name of each SBS channel: bases ``A C G T``, nuclei ``DNA``, others
    their normalised name; ``overrides`` (channel -> name) win."""
    if exp.sbs is None:
        raise UserError("the experiment has no SBS arm: this step needs SBS images")
    return _arm_names("SBS", exp.sbs, overrides, _sbs_default_name)


@dataclass(frozen=True)
class AnalysisImage:
    """One image PCPIP's 9_Analysis loads per site or tile.

    Attributes
    ----------
    name : str
        CellProfiler image name: ``Corr<Name>`` (CP), ``Cycle<kk>_<Base>`` and
        ``Cycle<kk>_DAPI`` of the first cycle (SBS).
    arm : str
        ``cp`` or ``sbs``.
    channel : str
        The channel as written in file names.
    cycle : int or None
        SBS cycle (None for CP).
    """

    name: str
    arm: str
    channel: str
    cycle: int | None = None


def analysis_images(
    exp: Experiment, overrides: Mapping[str, str] | None = None
) -> list[AnalysisImage]:
    """Every image of an analysis row, in column order (see :data:`STEPS` ``analysis``).

    ``overrides`` (channel -> name) rename channels as ``--name`` does; the aligned
    first-cycle nuclei are ``Cycle01_DAPI`` unless the nuclei channel is renamed
    (``--name DAPI=DNA`` gives nf's ``Cycle01_DNA``).
    """
    overrides = overrides or {}
    channels = [*(exp.cp.channels if exp.cp else []), *(exp.sbs.channels if exp.sbs else [])]
    _check_overrides(overrides, channels)
    step = STEPS["analysis"]
    out = [
        AnalysisImage(f"{step.corr_prefix}{name}", "cp", ch)
        for ch, name in cp_names(exp, overrides).items()
    ]
    sbs_names(exp, overrides)  # raises for an experiment without SBS, checks clashes
    assert exp.sbs is not None
    roles = exp.sbs.roles
    cycles = sorted(exp.sbs.cycles)
    nuclei = overrides.get(roles["nuclei"], SBS_ALIGNED_NUCLEI_NAME)
    for k in cycles:
        out += [AnalysisImage(f"Cycle{k:02d}_{b}", "sbs", roles[b], k) for b in "ACGT"]
        if k == cycles[0]:
            out.append(AnalysisImage(f"Cycle{k:02d}_{nuclei}", "sbs", roles["nuclei"], k))
    return out


# -- rows -------------------------------------------------------------------------------


@dataclass
class _Row:
    key: dict[str, object]
    columns: dict[str, object]
    needs: list[tuple[str, str]]  # (uri, product kind)


class _Builder:
    """Turns index rows into LoadData rows; knows the roots and the path masks."""

    def __init__(self, ws: str, root: str, masks: Sequence[tuple[str, str]]) -> None:
        self.ws = ws
        self.root = root
        self.masks = [(_absolute(old).rstrip("/"), new.rstrip("/")) for old, new in masks]
        self._illum: dict[tuple[str, str, int | None], str] = {}

    def illum(self, plate: str, channel: str, cycle: int | None = None) -> str:
        # The same few functions serve every row of a plate; pathlib joins are not free.
        key = (plate, channel, cycle)
        uri = self._illum.get(key)
        if uri is None:
            uri = self._illum[key] = workspace.illum_path(
                self.ws, plate, normalise_channel(channel), cycle
            )
        return uri

    def pathname(self, uri: str) -> str:
        folder = posixpath.dirname(uri) if storage.is_s3(uri) else os.path.dirname(uri)
        for old, new in self.masks:
            if folder == old or folder.startswith(old + "/"):
                return new + folder[len(old) :]
        return folder

    def image(self, row: _Row, name: str, uri: str, kind: str, frame: int | None = None) -> None:
        base = posixpath.basename(uri) if storage.is_s3(uri) else os.path.basename(uri)
        row.columns[f"FileName_{name}"] = base
        row.columns[f"PathName_{name}"] = self.pathname(uri)
        if frame is not None:
            row.columns[f"Frame_{name}"] = frame
        row.needs.append((uri, kind))


def _absolute(uri: str) -> str:
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def _frame(rec: dict, channel: str, root: str) -> int:
    try:
        return list(rec["channels"]).index(channel)
    except ValueError:
        raise UserError(
            f"{image_uri(root, rec['key'])}: has channels {', '.join(rec['channels'])}, "
            f"expected channel {channel!r} of the experiment"
        ) from None


def _meta(step: Step, plate: str, well: str, site: int, cycle: int | None = None):
    # PCPIP's Metadata_Well_Value is the bare well ("A1"); our wells are bare already.
    values = {"Plate": plate, "Well": well, "Well_Value": well, "Site": site, "Series": site}
    values |= {"Cycle": cycle, "SBSCycle": cycle}
    return {f"Metadata_{m}": values[m] for m in step.metadata}


def _cp_rows(b: _Builder, step: Step, recs: list[dict], names: dict[str, str]) -> list[_Row]:
    rows = []
    for rec in recs:
        key = {"plate": rec["plate"], "well": rec["well"], "site": rec["site"]}
        row = _Row(key, _meta(step, rec["plate"], rec["well"], rec["site"]), [])
        uri = image_uri(b.root, rec["key"])
        for ch, name in names.items():
            n = normalise_channel(ch)
            if "orig" in step.loads:
                b.image(row, f"Orig{name}", uri, "raw", _frame(rec, ch, b.root))
            if "illum" in step.loads:
                b.image(row, f"Illum{name}", b.illum(rec["plate"], ch), "illum")
            if "corr" in step.loads:
                corr = workspace.corrected_path(b.ws, rec["plate"], rec["well"], rec["site"], n)
                b.image(row, f"{step.corr_prefix}{name}", corr, "corr")
        rows.append(row)
    return rows


def _sbs_image_rows(b: _Builder, step: Step, recs: list[dict], names: dict[str, str]) -> list[_Row]:
    rows = []
    for rec in recs:
        key = {"plate": rec["plate"], "well": rec["well"], "site": rec["site"]}
        key["cycle"] = rec["cycle"]
        row = _Row(key, _meta(step, rec["plate"], rec["well"], rec["site"], rec["cycle"]), [])
        uri = image_uri(b.root, rec["key"])
        for ch, name in names.items():
            b.image(row, f"Orig{name}", uri, "raw", _frame(rec, ch, b.root))
        rows.append(row)
    return rows


def _sites(recs: list[dict], cycles: list[int]) -> dict[tuple[str, str, int], dict[int, dict]]:
    sites: dict[tuple[str, str, int], dict[int, dict]] = defaultdict(dict)
    for rec in recs:
        sites[(rec["plate"], rec["well"], rec["site"])][rec["cycle"]] = rec
    for (plate, well, site), by_cycle in sites.items():
        missing = [k for k in cycles if k not in by_cycle]
        if missing:
            raise UserError(
                f"plate {plate!r} well {well!r} site {site}: SBS cycle(s) "
                f"{', '.join(map(str, missing))} of the experiment are missing from the index"
            )
    return sites


def _sbs_site_columns(
    b: _Builder, step: Step, row: _Row, by_cycle: dict[int, dict], cycles: list[int],
    names: dict[str, str], roles: dict[str, str], nuclei_name: str = SBS_ALIGNED_NUCLEI_NAME,
) -> None:  # fmt: skip
    plate, well, site = row.key["plate"], row.key["well"], row.key["site"]
    for k in cycles:
        prefix = f"Cycle{k:02d}_"
        if "orig" in step.loads:
            rec = by_cycle[k]
            uri = image_uri(b.root, rec["key"])
            for ch, name in names.items():
                b.image(row, f"{prefix}Orig{name}", uri, "raw", _frame(rec, ch, b.root))
                b.image(row, f"{prefix}Illum{name}", b.illum(str(plate), ch, k), "illum")
        if "aligned" in step.loads:
            wanted = [(roles[base], base) for base in "ACGT"]
            if k == cycles[0]:
                wanted.append((roles["nuclei"], nuclei_name))
            for ch, name in wanted:
                uri = workspace.aligned_path(
                    b.ws, str(plate), str(well), int(site), k, normalise_channel(ch)
                )
                b.image(row, f"{prefix}{name}", uri, "aligned")


def _rows(
    b: _Builder, step_name: str, exp: Experiment, cp: list[dict], sbs: list[dict],
    overrides: Mapping[str, str], grid: str = "auto",
) -> list[_Row]:  # fmt: skip
    step = STEPS[step_name]
    channels = [*(exp.cp.channels if exp.cp else []), *(exp.sbs.channels if exp.sbs else [])]
    _check_overrides(overrides, channels)
    if step.arm == "cp":
        return _cp_rows(b, step, cp, cp_names(exp, overrides))
    names = sbs_names(exp, overrides)
    assert exp.sbs is not None  # sbs_names raised otherwise
    cycles = sorted(exp.sbs.cycles)
    if step.per_image:
        return _sbs_image_rows(b, step, sbs, names)
    sites = _sites(sbs, cycles)
    # PCPIP 7/9 load the aligned cycle-1 nuclei as Cycle01_DAPI, nf's copies as
    # Cycle01_DNA: --name <nuclei channel>=DNA picks the latter.
    nuclei = overrides.get(exp.sbs.roles["nuclei"], SBS_ALIGNED_NUCLEI_NAME)
    if step.arm == "sbs":
        rows = []
        for (plate, well, site), by_cycle in sorted(sites.items()):
            meta = _meta(step, plate, well, site)
            row = _Row({"plate": plate, "well": well, "site": site}, meta, [])
            _sbs_site_columns(b, step, row, by_cycle, cycles, names, exp.sbs.roles, nuclei)
            rows.append(row)
        return rows
    # analysis: on a well's tiles when `cp tiles` cut them (PCPIP 9 runs on tiles cropped
    # from both arms' stitched wells); else each CP site with the SBS site of the same
    # number, which is only the same field of view when both arms share one site grid.
    cp_names_ = cp_names(exp, overrides)
    images = analysis_images(exp, overrides)
    by_well: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for rec in cp:
        by_well[(rec["plate"], rec["well"])].append(rec)
    rows: list[_Row] = []
    for (plate, well), recs in sorted(by_well.items()):
        report = _tile_report(b.ws, plate, well) if grid != "sites" else None
        if report is not None:
            rows += _tile_rows(b, step, plate, well, report, images)
            continue
        if grid == "tiles":
            raise UserError(
                f"step analysis: plate {plate!r} well {well!r} has no complete tiles "
                f"({workspace.tiles_report_path(b.ws, plate, well)} missing); run "
                f"'starrynight cp tiles -w {b.ws} --plate {plate} --well {well}' first"
            )
        _check_same_site_grid(b.ws, recs, sites)
        for row in _cp_rows(b, step, recs, cp_names_):
            by_cycle = sites[(plate, well, row.key["site"])]  # type: ignore[index]
            _sbs_site_columns(b, step, row, by_cycle, cycles, names, exp.sbs.roles, nuclei)
            rows.append(row)
    return rows


def _tile_report(ws: str, plate: str, well: str) -> dict | None:
    """The report of a well's tiles (written last by ``cp tiles``), or None."""
    import json

    uri = workspace.tiles_report_path(ws, plate, well)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise UserError(f"{uri}: not a tiles report ({exc})") from exc


def _tile_rows(
    b: _Builder, step: Step, plate: str, well: str, report: dict, images: list[AnalysisImage]
) -> list[_Row]:
    """One analysis row per tile: site N is tile N of PCPIP's numbering (from 1)."""
    cut = sorted(report.get("images", {}))
    wanted = sorted(i.name for i in images)
    if cut != wanted:
        raise UserError(
            f"{workspace.tiles_report_path(b.ws, plate, well)}: the tiles hold images "
            f"{', '.join(cut)} but this CSV loads {', '.join(wanted)}; cut them again with "
            "'starrynight cp tiles' and the same --name options"
        )
    rows = []
    for site in range(1, int(report["tiles"]) + 1):
        row = _Row({"plate": plate, "well": well, "site": site}, _meta(step, plate, well, site), [])
        for img in images:
            b.image(
                row, img.name, workspace.cropped_path(b.ws, plate, well, img.name, site), "tiles"
            )
        rows.append(row)
    return rows


def _check_same_site_grid(
    ws: str, cp: list[dict], sbs_sites: Mapping[tuple[str, str, int], object]
) -> None:
    """Refuse to pair sites by number in a well whose CP and SBS site sets differ."""
    cp_by_well: dict[tuple[str, str], set[int]] = defaultdict(set)
    sbs_by_well: dict[tuple[str, str], set[int]] = defaultdict(set)
    for rec in cp:
        cp_by_well[(rec["plate"], rec["well"])].add(rec["site"])
    for plate, well, site in sbs_sites:
        sbs_by_well[(plate, well)].add(site)
    for (plate, well), cp_set in sorted(cp_by_well.items()):
        sbs_set = sbs_by_well.get((plate, well), set())
        if cp_set != sbs_set:
            raise UserError(
                f"step analysis: plate {plate!r} well {well!r}: CP has {len(cp_set)} site(s) "
                f"({_span(cp_set)}) and SBS {len(sbs_set)} ({_span(sbs_set)}); the arms were "
                "imaged on different site grids, so CP and SBS sites of the same number are "
                "different fields of view and cannot be paired by number (cut both arms' "
                f"mosaics into one tile grid with 'starrynight cp tiles -w {ws} --plate "
                f"{plate} --well {well}', then write this step again)"
            )


def _span(sites: set[int]) -> str:
    if not sites:
        return "none"
    ordered = sorted(sites)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    shown = ", ".join(map(str, ordered[:5]))
    return shown + (", ..." if len(ordered) > 5 else "")


# -- units, checks, writing -----------------------------------------------------------


def check_by(step_name: str, by: Sequence[str]) -> tuple[str, ...]:
    """Validate a grouping for a step: known keys, ``plate`` first, no gaps.

    Raises
    ------
    UserError
        Naming the offending key and what is allowed.
    """
    step = STEPS[step_name]
    allowed = GROUP_KEYS if step.per_image and step.arm == "sbs" else GROUP_KEYS[:3]
    for key in by:
        if key not in allowed:
            raise UserError(
                f"--by {','.join(by)}: {key!r} is not a grouping of step {step_name}; "
                f"expected some of {','.join(allowed)}"
            )
    if "plate" not in by:
        raise UserError(f"--by {','.join(by)}: must include plate (a unit never spans plates)")
    if "site" in by and "well" not in by:
        raise UserError(f"--by {','.join(by)}: site needs well (sites are numbered per well)")
    return tuple(k for k in GROUP_KEYS if k in by)


def unit_name(key: Mapping[str, object], by: Sequence[str]) -> str:
    """File-name-safe unit name: the grouping values joined by ``-`` (cycle ``Cycle<kk>``)."""
    parts = []
    for k in by:
        v = key[k]
        parts.append(f"Cycle{int(v):02d}" if k == "cycle" else str(v))  # type: ignore[call-overload]
    return _UNIT_UNSAFE.sub("_", "-".join(parts))


def missing_files(uris: Iterable[str]) -> list[str]:
    """The URIs among ``uris`` that do not exist, listing each folder once.

    One listing per folder instead of one stat per file: a plate folder of 30,000
    images is one call (thousands of S3 HEAD requests otherwise).
    """
    by_dir: dict[str, set[str]] = defaultdict(set)
    for uri in uris:
        if storage.is_s3(uri):
            folder, name = posixpath.split(uri)
        else:
            folder, name = os.path.split(uri)
        by_dir[folder].add(name)
    missing = []
    for folder, names in sorted(by_dir.items()):
        present = _file_names(folder)
        missing += [storage.join(folder, n) for n in sorted(names - present)]
    return missing


def _file_names(folder: str) -> set[str]:
    if not storage.is_s3(folder):
        try:
            with os.scandir(folder) as it:
                return {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return set()
    if not storage.exists(folder):
        return set()
    return {e.key for e in storage.list_files(folder) if "/" not in e.key}


def _raise_missing(step_name: str, missing: list[str], kinds: dict[str, str]) -> None:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for uri in missing:
        by_kind[kinds[uri]].append(uri)
    kind = next(k for k in ("raw", "illum", "corr", "aligned", "tiles") if k in by_kind)
    files = by_kind[kind]
    what, hint = _PRODUCTS[kind]
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    raise UserError(
        f"step {step_name}: {len(files)} {what} not materialised yet, e.g. {files[0]}{more}; {hint}"
    )


def to_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """LoadData CSV text: header from the first row's columns, ``\\n`` line ends."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _index_records(ws: str, arm: str, plates: Sequence[str], wells: Sequence[str]) -> list[dict]:
    table = load_index(ws)
    table = table.filter(pc.equal(table.column("arm"), arm))
    if plates:
        table = table.filter(pc.is_in(table.column("plate"), value_set=_array(plates)))
    if wells:
        table = table.filter(pc.is_in(table.column("well"), value_set=_array(wells)))
    cols = ["plate", "well", "site", "cycle", "channels", "key"]
    recs = table.select(cols).to_pylist()
    recs.sort(key=lambda r: (r["plate"], r["well"], r["site"], r["cycle"]))
    return recs


def _array(values: Sequence[str]):
    import pyarrow as pa

    return pa.array(list(values), pa.string())


def build_units(
    ws: str,
    step_name: str,
    by: Sequence[str] | None = None,
    plates: Sequence[str] = (),
    wells: Sequence[str] = (),
    path_mask: str | None = None,
    workspace_mask: str | None = None,
    names: Mapping[str, str] | None = None,
    check_files: bool = True,
    grid: str = "auto",
) -> tuple[dict[str, list[dict[str, object]]], int]:
    """The rows of every unit of work of a step, checked against storage.

    Parameters
    ----------
    ws : str
        Workspace (holds the index, the experiment and the step's inputs).
    step_name : str
        One of :data:`STEPS`.
    by : sequence of str, optional
        Grouping keys (default: the step's ``default_by``).
    plates, wells : sequence of str
        Restrict to these plates / wells (default: all).
    path_mask, workspace_mask : str, optional
        Write ``PathName_`` columns with the dataset root / workspace replaced by these
        prefixes (where a cluster mounts them); existence is checked on the real paths.
    names : mapping, optional
        Channel (as written) -> CellProfiler name overrides.
    check_files : bool
        Check that every referenced file exists (on by default).
    grid : {"auto", "tiles", "sites"}
        Step ``analysis`` only: ``tiles`` loads every well's tiles (``cp tiles``),
        ``sites`` pairs CP and SBS sites by number (wells on one site grid only),
        ``auto`` the tiles of the wells that have them and sites for the others.

    Returns
    -------
    dict, int
        Unit name -> rows (column -> value), and the number of distinct files referenced.

    Raises
    ------
    UserError
        Unknown step or grouping, nothing selected, channel naming clashes, or inputs
        not materialised yet (naming the files and the command that makes them).
    """
    if step_name not in STEPS:
        raise UserError(f"step {step_name!r} is unknown: expected one of {', '.join(STEPS)}")
    if grid not in GRIDS:
        raise UserError(f"--grid {grid!r}: expected one of {', '.join(GRIDS)}")
    if grid != "auto" and step_name != "analysis":
        raise UserError(f"--grid {grid}: only step analysis loads tiles or paired sites")
    step = STEPS[step_name]
    by = check_by(step_name, by or step.default_by)
    ws = _absolute(ws)
    exp = load_experiment(ws)
    root = _absolute(dataset_root(ws))
    masks = []
    if path_mask:
        masks.append((root, path_mask))
    if workspace_mask:
        masks.append((ws, workspace_mask))
    b = _Builder(ws, root, masks)
    cp = _index_records(ws, "cp", plates, wells) if step.arm in ("cp", "both") else []
    sbs = _index_records(ws, "sbs", plates, wells) if step.arm in ("sbs", "both") else []
    if exp.sbs is not None and sbs:
        wanted = set(exp.sbs.cycles)
        sbs = [r for r in sbs if r["cycle"] in wanted]
    if not (cp or sbs):
        arm = {"cp": "CP", "sbs": "SBS", "both": "CP or SBS"}[step.arm]
        where = f" for plate(s) {', '.join(plates)}" if plates else ""
        where += f" well(s) {', '.join(wells)}" if wells else ""
        raise UserError(f"step {step_name}: the index has no {arm} images{where}")
    rows = _rows(b, step_name, exp, cp, sbs, names or {}, grid)
    kinds = {uri: kind for row in rows for uri, kind in row.needs}
    if check_files:
        missing = missing_files(kinds)
        if missing:
            _raise_missing(step_name, missing, kinds)
    units: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        units[unit_name(row.key, by)].append(row.columns)
    return dict(units), len(kinds)


def write_loaddata(
    ws: str,
    step_name: str,
    by: Sequence[str] | None = None,
    plates: Sequence[str] = (),
    wells: Sequence[str] = (),
    path_mask: str | None = None,
    workspace_mask: str | None = None,
    names: Mapping[str, str] | None = None,
    grid: str = "auto",
) -> LoadDataResult:
    """Write ``loaddata/<step>/<unit>.csv`` for every unit of work (see :func:`build_units`).

    Each CSV is written atomically; re-running rewrites the same content. CSVs of the
    same step left by an earlier grouping (of the plates written now) are removed so
    ``cp run`` does not run a site twice.
    """
    units, checked = build_units(
        ws, step_name, by, plates, wells, path_mask, workspace_mask, names, grid=grid
    )
    ws_abs = _absolute(ws)
    result = LoadDataResult(step_name, files_checked=checked)
    for unit, rows in sorted(units.items()):
        uri = workspace.loaddata_path(ws_abs, step_name, unit)
        storage.write_bytes(uri, to_csv(rows).encode())
        result.csvs.append(UnitCSV(unit, uri, len(rows)))
    written = {c.unit for c in result.csvs}
    wrote_plates = {str(r["Metadata_Plate"]) for rows in units.values() for r in rows}
    for unit, uri in list_csvs(ws_abs, step_name):
        if unit in written:
            continue
        if not wells and (not plates or _of_plates(unit, wrote_plates)):
            _remove_file(uri)
            result.removed.append(uri)
    return result


def _of_plates(unit: str, plates: Iterable[str]) -> bool:
    # A unit's name starts with its plate: ``<plate>[-<well>[-<site>]]``.
    return any(unit == p or unit.startswith(f"{p}-") for p in plates)


def _remove_file(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    fs.delete_file(path)


def list_csvs(ws: str, step_name: str, plates: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(unit, uri)`` of the step's LoadData CSVs, sorted; only ``plates`` when given."""
    folder = workspace.loaddata_dir(ws, step_name)
    if not storage.exists(folder):
        return []
    out = []
    for entry in storage.list_files(folder):
        if "/" in entry.key or not entry.key.endswith(".csv"):
            continue
        unit = entry.key[: -len(".csv")]
        if plates and not _of_plates(unit, plates):
            continue
        out.append((unit, storage.join(folder, entry.key)))
    return sorted(out)
