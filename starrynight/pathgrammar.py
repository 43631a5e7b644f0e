"""The path grammar: which file paths are images, and what they say about themselves.

A grammar is a small JSON pattern file (the default, ``grammar/cpg.json``, describes the
Cell Painting Gallery layout). It holds RE2 regular expressions with named groups:

``folder``
    Applied to the folder part of a key (everything before the last ``/``). Groups:
    ``source``, ``batch``, ``plate``, ``plate_folder`` (required), ``dataset`` (optional;
    when absent or empty the dataset is the name of the listed root).
``cp_folder`` / ``sbs_folder``
    Applied to the ``plate_folder`` group; whichever matches decides the arm. Groups:
    ``magnification`` (optional), ``cycle`` (required for SBS).
``file``
    Applied to the file name. Groups: ``well``, ``site``, ``channels`` (required).
``extensions``
    Image extensions, tried longest first (case-insensitive).
``channel_separator``
    Separates the channel names inside the ``channels`` group.
``metadata``
    Patterns (searched anywhere in the key) of files that are known non-images; they
    are recorded in the rejects table as metadata rather than as errors.

Any group named ``<g>_check`` must agree with group ``<g>`` of the same pattern
(case-insensitive, leading zeros ignored): ``WellA1_PointB2`` or a folder
``10X_c1_SBS-2`` is rejected as inconsistent, never guessed.

Parsing is vectorised: folders are few, so they are parsed once per distinct folder;
file names are parsed with Arrow's RE2 kernels over the whole column, with at most four
capturing groups per pass so RE2 can use its fast one-pass matcher.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from starrynight import storage
from starrynight.errors import UserError

DEFAULT_GRAMMAR = "cpg"

_GROUP_RE = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>")
_REQUIRED = {
    "folder": ("source", "batch", "plate", "plate_folder"),
    "cp_folder": (),
    "sbs_folder": ("cycle",),
    "file": ("well", "site", "channels"),
}
# RE2 runs its fast one-pass matcher only with at most 4 capturing groups.
_MAX_GROUPS_PER_PASS = 4

INDEX_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("source", pa.string()),
        ("batch", pa.string()),
        ("plate", pa.string()),
        ("arm", pa.string()),
        ("cycle", pa.int32()),
        ("magnification", pa.string()),
        ("plate_folder", pa.string()),
        ("well", pa.string()),
        ("site", pa.int32()),
        ("channels", pa.list_(pa.string())),
        ("key", pa.string()),
        ("extension", pa.string()),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("kind", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

# Reason texts; a row's reason is the first check it fails, in this order.
METADATA = "metadata file"
LAYOUT = "folder does not fit the layout"
NOT_AN_ARM = "plate folder is neither a CP nor an SBS folder"
BOTH_ARMS = "plate folder matches both the CP and the SBS pattern"
EXTENSION = "not an image extension"
FILE = "file name does not fit the image pattern"
SITE = "site is not a number"
CHANNELS = "empty or repeated channel name"
DUPLICATE = "duplicate image"


@dataclass(frozen=True)
class Grammar:
    """A parsed, validated pattern file (see the module docstring for the fields)."""

    name: str
    folder: str
    cp_folder: str
    sbs_folder: str
    file: str
    extensions: tuple[str, ...]
    channel_separator: str = ","
    metadata: tuple[str, ...] = ()
    description: str = ""
    folder_help: str = ""
    file_help: str = ""
    source: str = field(default="", compare=False)

    def groups(self, pattern: str) -> list[str]:
        """Names of the named groups of one of the patterns, in order."""
        return _GROUP_RE.findall(getattr(self, pattern))


def load_grammar(path: str | None = None) -> Grammar:
    """Load and validate a pattern file.

    Parameters
    ----------
    path : str, optional
        Local path or URI of a JSON pattern file; the built-in Cell Painting Gallery
        grammar when omitted.

    Returns
    -------
    Grammar

    Raises
    ------
    UserError
        When the file is missing, is not JSON, lacks a field, has a pattern RE2 cannot
        compile or lacks a required named group.
    """
    data, where = _read_json(path)
    _check_fields(data, where)
    grammar = Grammar(
        name=data.get("name", Path(where).stem),
        folder=data["folder"],
        cp_folder=data["cp_folder"],
        sbs_folder=data["sbs_folder"],
        file=data["file"],
        extensions=tuple(sorted(data["extensions"], key=len, reverse=True)),
        channel_separator=data.get("channel_separator", ","),
        metadata=tuple(data.get("metadata", [])),
        description=data.get("description", ""),
        folder_help=data.get("folder_help", ""),
        file_help=data.get("file_help", ""),
        source=where,
    )
    _check_patterns(grammar, where)
    return grammar


def _read_json(path: str | None) -> tuple[dict, str]:
    """The pattern file's JSON object, and how to name the file in messages."""
    if path is None:
        text = resources.files("starrynight.grammar").joinpath(f"{DEFAULT_GRAMMAR}.json")
        raw, where = text.read_text(), f"built-in grammar {DEFAULT_GRAMMAR}.json"
    else:
        raw, where = storage.read_bytes(str(path)).decode("utf-8", "replace"), str(path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object with the grammar's fields")
    return data, where


def _check_fields(data: dict, where: str) -> None:
    """Refuse unknown or missing fields and fields of the wrong type."""
    known = {f for f in Grammar.__dataclass_fields__ if f != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {sorted(known)}")
    for key in ("folder", "cp_folder", "sbs_folder", "file", "extensions"):
        if key not in data:
            raise UserError(f"{where}: missing field '{key}'")
    for key in ("name", "folder", "cp_folder", "sbs_folder", "file", "channel_separator"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{where}: field '{key}' must be a string")
    for key in ("extensions", "metadata"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UserError(f"{where}: field '{key}' must be a list of non-empty strings")
    if not data.get("channel_separator", ","):
        raise UserError(f"{where}: field 'channel_separator' must not be empty")


def _check_patterns(grammar: Grammar, where: str) -> None:
    """Refuse patterns RE2 cannot compile or that lack a required named group."""
    for key, required in _REQUIRED.items():
        pattern = getattr(grammar, key)
        _check_compiles(where, key, pattern)
        groups = grammar.groups(key)
        missing = [g for g in required if g not in groups]
        if missing:
            raise UserError(
                f"{where}: pattern '{key}' lacks the named group(s) "
                + ", ".join(f"(?P<{g}>...)" for g in missing)
            )
        for g in groups:
            if g.endswith("_check") and g[: -len("_check")] not in groups:
                raise UserError(f"{where}: pattern '{key}' has {g} but no group {g[:-6]}")
    for i, pattern in enumerate(grammar.metadata):
        _check_compiles(where, f"metadata[{i}]", pattern)


def _check_compiles(where: str, key: str, pattern: str) -> None:
    try:
        pc.extract_regex(pa.array([""]), _only_groups(pattern, [])) if "(?P<" in pattern else (
            pc.match_substring_regex(pa.array([""]), pattern)
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        msg = str(exc).splitlines()[0]
        raise UserError(f"{where}: pattern '{key}' is not a valid RE2 expression ({msg})") from exc


def _only_groups(pattern: str, keep: list[str]) -> str:
    """Rewrite ``pattern`` so that only the named groups in ``keep`` capture.

    Other named groups and plain ``( ... )`` become non-capturing; character classes
    and escapes are left alone. With no group kept, a dummy empty group is added so the
    result is still valid for ``extract_regex``.
    """
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            # A ']' right after '[' or '[^' is a literal member of the class.
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                out.append("]")
                i += 1
        elif c == "(":
            m = _GROUP_RE.match(pattern, i)
            if m:
                out.append(m.group(0) if m.group(1) in keep else "(?:")
                i = m.end()
                continue
            out.append("(" if pattern[i + 1 : i + 2] == "?" else "(?:")
        else:
            out.append(c)
        i += 1
    result = "".join(out)
    return result if keep else f"(?P<_m>){result}"


def _extract(values: pa.Array, pattern: str, groups: list[str]) -> dict[str, pa.Array]:
    """Run ``pattern`` over ``values``; return each group's strings and the match mask.

    Groups are extracted at most four per pass, and each pass runs on two halves of
    the column in parallel (Arrow releases the GIL).
    """
    passes = [
        groups[i : i + _MAX_GROUPS_PER_PASS] for i in range(0, len(groups), _MAX_GROUPS_PER_PASS)
    ] or [[]]
    n = len(values)
    halves = [values] if n < 50_000 else [values.slice(0, n // 2), values.slice(n // 2)]
    jobs = [(p, h) for p in passes for h in halves]

    def run(job: tuple[list[str], pa.Array]) -> pa.StructArray:
        keep, part = job
        return pc.extract_regex(part, _only_groups(pattern, keep))

    if len(jobs) == 1:
        results = [run(jobs[0])]
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(run, jobs))
    out: dict[str, pa.Array] = {}
    for pi, keep in enumerate(passes):
        parts = results[pi * len(halves) : (pi + 1) * len(halves)]
        struct = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
        if pi == 0:
            out["_matched"] = struct.is_valid()
        for g in keep:
            out[g] = struct.field(g)
    return out


def _extension_of(tail: str, extensions: tuple[str, ...]) -> int:
    """Position in ``extensions`` of the one ``tail`` ends with (-1 for none)."""
    lower = tail.lower()
    for i, ext in enumerate(extensions):
        if lower.endswith(ext.lower()):
            return i
    return -1


def _extensions(names: pa.Array, extensions: tuple[str, ...]) -> np.ndarray:
    """Per name, the position in ``extensions`` of the one it ends with (-1 for none).

    For ASCII extensions (the usual case) the last bytes of every name are cut out,
    lower-cased in numpy and compared with Arrow's ``ends_with``: a few cheap passes
    over the column. Other extensions are decided once per distinct tail.
    """
    n = len(names)
    width = max(len(e) for e in extensions)
    tails = None
    if n and all(e.isascii() for e in extensions) and not names.null_count:
        tails = pc.binary_slice(names.view(pa.binary()), -width)
    if tails is not None and tails.offset == 0:
        _, offsets, data = tails.buffers()
        if data is not None:
            lower = np.frombuffer(data, np.uint8).copy()
            lower[(lower >= ord("A")) & (lower <= ord("Z"))] += 32
            tails = pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(lower)])
        result = np.full(n, -1, np.int32)
        for i in range(len(extensions) - 1, -1, -1):  # earlier (longer) ones win
            hit = pc.ends_with(tails, extensions[i].lower()).to_numpy(zero_copy_only=False)
            result[hit] = i
        return result
    tails = pc.dictionary_encode(pc.utf8_slice_codeunits(names, -width))
    tail_ext = np.array(
        [_extension_of(t, extensions) for t in tails.dictionary.to_pylist()] or [-1],
        dtype=np.int32,
    )
    return tail_ext[tails.indices.to_numpy(zero_copy_only=False)]


def _norm_token(value: str) -> str:
    """Upper-case, without the leading zeros of the first run of digits."""
    return re.sub(r"^([^0-9]*)0+([0-9])", r"\1\2", value.upper())


def _norm_tokens(values: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(pc.utf8_upper(values), r"^([^0-9]*)0+([0-9])", r"\1\2")


@dataclass
class ParsedPaths:
    """Result of :func:`parse_paths`: the image rows and the rejected paths.

    ``encoded`` holds the index with its low-cardinality string columns
    dictionary-encoded (cheap to build, write and group); ``index`` is the same table
    with exactly the types of :data:`INDEX_SCHEMA`.
    """

    encoded: pa.Table
    rejects: pa.Table
    #: Per index row, a code into ``channel_lists`` (what the channels column holds);
    #: lets callers group by channel set without touching the list column.
    channel_codes: np.ndarray | None = field(default=None, repr=False)
    channel_lists: list[list[str]] | None = field(default=None, repr=False)

    @property
    def index(self) -> pa.Table:
        """The index rows with the types of :data:`INDEX_SCHEMA`."""
        return decode(self.encoded)


def decode(table: pa.Table) -> pa.Table:
    """Cast dictionary-encoded index columns back to :data:`INDEX_SCHEMA` (keeps metadata)."""
    return table.cast(INDEX_SCHEMA.with_metadata(table.schema.metadata))


@dataclass
class _Folders:
    """Per distinct folder: its fields, or the reason it cannot hold images."""

    reason: list[str]
    detail: list[str]
    columns: dict[str, list]


def split_keys(keys: pa.Array) -> tuple[pa.DictionaryArray, pa.Array]:
    """Split keys into a dictionary-encoded folder column and a file-name column.

    Listing produces both directly (see :mod:`starrynight.inventory`); this is for
    callers holding bare keys.
    """
    keys = _as_string(keys)
    folder = pc.replace_substring_regex(keys, r"/?[^/]*$", "")
    name = pc.replace_substring_regex(keys, r"^.*/", "")
    return pc.dictionary_encode(folder), name


def _as_string(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return values


def _parse_folders(folders: pa.Array, grammar: Grammar, default_dataset: str) -> _Folders:
    n = len(folders)
    fgroups = grammar.groups("folder")
    fm = _extract(folders, grammar.folder, fgroups)
    matched = fm["_matched"].to_pylist()
    cols = {g: fm[g].to_pylist() for g in fgroups}
    plate_folders = fm["plate_folder"]
    cp_groups, sbs_groups = grammar.groups("cp_folder"), grammar.groups("sbs_folder")
    cp = _extract(plate_folders, grammar.cp_folder, cp_groups)
    sbs = _extract(plate_folders, grammar.sbs_folder, sbs_groups)
    cp_ok, sbs_ok = cp["_matched"].to_pylist(), sbs["_matched"].to_pylist()
    cp_cols = {g: cp[g].to_pylist() for g in cp_groups}
    sbs_cols = {g: sbs[g].to_pylist() for g in sbs_groups}
    folder_list = folders.to_pylist()
    reason, detail = [""] * n, [""] * n
    out: dict[str, list] = {
        k: [None] * n
        for k in ("dataset", "source", "batch", "plate", "arm", "cycle", "magnification")
    }
    out["plate_folder"] = [None] * n
    layout = f"{LAYOUT} {grammar.folder_help}".rstrip()
    for i in range(n):
        if not matched[i]:
            reason[i], detail[i] = layout, folder_list[i] or "(dataset root)"
            continue
        pf = cols["plate_folder"][i]
        if cp_ok[i] and sbs_ok[i]:
            reason[i], detail[i] = BOTH_ARMS, pf
            continue
        if not (cp_ok[i] or sbs_ok[i]):
            reason[i], detail[i] = NOT_AN_ARM, pf
            continue
        arm_cols = cp_cols if cp_ok[i] else sbs_cols
        bad = _first_inconsistent({g: v[i] for g, v in arm_cols.items()})
        if bad:
            reason[i], detail[i] = f"inconsistent {bad[0]} in plate folder", f"{pf}: {bad[1]}"
            continue
        if sbs_ok[i]:
            cycle_text = sbs_cols["cycle"][i]
            if not cycle_text.isdigit() or len(cycle_text) > 6:
                reason[i], detail[i] = "SBS cycle is not a number", pf
                continue
            out["cycle"][i], out["arm"][i] = int(cycle_text), "sbs"
        else:
            out["cycle"][i], out["arm"][i] = 0, "cp"
        out["magnification"][i] = arm_cols.get("magnification", [""] * n)[i]
        out["dataset"][i] = (cols.get("dataset") or [""] * n)[i] or default_dataset
        for g in ("source", "batch", "plate", "plate_folder"):
            out[g][i] = cols[g][i]
    return _Folders(reason, detail, out)


def _first_inconsistent(values: dict[str, str]) -> tuple[str, str] | None:
    for g, v in values.items():
        if g.endswith("_check") and v:
            base = values.get(g[: -len("_check")], "")
            if _norm_token(v) != _norm_token(base):
                return g[: -len("_check")], f"{g[: -len('_check')]} {base} vs {v}"
    return None


def parse_paths(
    keys: pa.Array | pa.ChunkedArray,
    grammar: Grammar | None = None,
    default_dataset: str = "",
    folder: pa.DictionaryArray | pa.ChunkedArray | None = None,
    name: pa.Array | pa.ChunkedArray | None = None,
) -> ParsedPaths:
    """Parse dataset keys into index rows and rejects, vectorised.

    Parameters
    ----------
    keys : pyarrow.Array
        Paths relative to the dataset root, ``/``-separated.
    grammar : Grammar, optional
        The pattern file; the built-in Cell Painting Gallery grammar by default.
    default_dataset : str
        Dataset name for keys whose path does not name one (the root's folder name).
    folder, name : pyarrow.Array, optional
        The keys already split into folder (dictionary-encoded) and file name, as the
        inventory stores them; computed from ``keys`` when omitted.

    Returns
    -------
    ParsedPaths
        ``index`` (schema :data:`INDEX_SCHEMA`, one row per image) and ``rejects``
        (:data:`REJECTS_SCHEMA`, one row per other key, with its reason). Every key
        lands in exactly one of them.
    """
    grammar = grammar or load_grammar()
    keys = _as_string(keys)
    if folder is None or name is None:
        folder, name = split_keys(keys)
    folder = _as_folder_dictionary(folder)
    name = _as_string(name)
    n = len(keys)
    if n == 0:
        return ParsedPaths(INDEX_SCHEMA.empty_table(), REJECTS_SCHEMA.empty_table())

    # Each check below rejects only rows still accepted (code 0), so a row's reason is
    # the first check it fails.
    reasons = _Reasons()
    # --- folders: parsed once per distinct folder -----------------------------------
    fidx = folder.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    folders = _parse_folders(_as_string(folder.dictionary), grammar, default_dataset)
    folder_code = np.array([reasons.code(r) if r else 0 for r in folders.reason], dtype=np.int32)
    code = folder_code[fidx] if len(folder_code) else np.zeros(n, np.int32)

    # --- extension ------------------------------------------------------------------
    ext_pos = _extensions(name, grammar.extensions)
    code[(code == 0) & (ext_pos < 0)] = reasons.code(EXTENSION)

    # --- file names: the only per-row regex work ------------------------------------
    file_groups = grammar.groups("file")
    fm = _extract(name, grammar.file, file_groups)
    matched = fm["_matched"].to_numpy(zero_copy_only=False)
    code[(code == 0) & ~matched] = reasons.code(f"{FILE} {grammar.file_help}".rstrip())
    _reject_inconsistent(fm, file_groups, code, reasons)

    site_np = _sites(fm, matched, code, reasons)
    chan_idx, chan_lists = _channels(fm["channels"], grammar.channel_separator, code, reasons)
    well_dict = pc.dictionary_encode(fm["well"])
    _reject_duplicates(folders, fidx, well_dict, site_np, code, reasons)
    _mark_metadata(keys, grammar.metadata, code, reasons)

    accepted = code == 0
    return ParsedPaths(
        encoded=_index_table(
            code, keys, fidx, folders, well_dict, site_np, chan_lists, chan_idx, ext_pos, grammar
        ),
        rejects=_rejects_table(
            code, reasons.texts, reasons.details, keys, name, fidx, folders, fm, grammar
        ),
        channel_codes=chan_idx if accepted.all() else chan_idx[accepted],
        channel_lists=chan_lists,
    )


@dataclass
class _Reasons:
    """Reject reasons met so far: a row's code is an index into ``texts`` (0: accepted)."""

    texts: list[str] = field(default_factory=lambda: [""])
    #: Per-row detail text, for the reasons whose detail is not the file name.
    details: dict[int, object] = field(default_factory=dict)

    def code(self, text: str) -> int:
        """The code of reason ``text``, added when new."""
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text)


def _as_folder_dictionary(folder: pa.DictionaryArray | pa.ChunkedArray) -> pa.DictionaryArray:
    """The folder column as one dictionary-encoded string array."""
    if isinstance(folder, pa.ChunkedArray):
        folder = folder.combine_chunks() if folder.num_chunks != 1 else folder.chunk(0)
        if isinstance(folder, pa.ChunkedArray):  # pragma: no cover - defensive
            folder = folder.chunk(0)
    if not pa.types.is_dictionary(folder.type):
        folder = pc.dictionary_encode(_as_string(folder))
    return folder


def _reject_inconsistent(
    fm: dict[str, pa.Array], file_groups: list[str], code: np.ndarray, reasons: _Reasons
) -> None:
    """Reject rows whose ``<g>_check`` group disagrees with group ``<g>`` (in place)."""
    for g in file_groups:
        if not g.endswith("_check"):
            continue
        base = g[: -len("_check")]
        check, ref = fm[g], fm[base]
        differ = pc.and_(pc.not_equal(check, ref), pc.not_equal(check, ""))
        differ = pc.fill_null(differ, False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(differ & (code == 0))
        if not len(rows):
            continue
        # Texts that differ may still agree once case and leading zeros are ignored.
        sel = pa.array(rows)
        a, b = pc.take(ref, sel), pc.take(check, sel)
        bad = pc.not_equal(_norm_tokens(a), _norm_tokens(b)).to_numpy(zero_copy_only=False)
        bad_rows = rows[bad]
        code[bad_rows] = reasons.code(f"inconsistent {base}")
        for r, x, y in zip(
            bad_rows,
            pc.take(a, pa.array(np.flatnonzero(bad))).to_pylist(),
            pc.take(b, pa.array(np.flatnonzero(bad))).to_pylist(),
            strict=True,
        ):
            reasons.details[int(r)] = f"{base} {x} vs {y}"


def _sites(
    fm: dict[str, pa.Array], matched: np.ndarray, code: np.ndarray, reasons: _Reasons
) -> np.ndarray:
    """Per row, the site number (int32); rows whose site is not a number are rejected."""
    site_text = fm["site"]
    try:
        # Rows the file pattern did not match hold "" (rejected already): cast "0".
        site = pc.cast(pc.if_else(fm["_matched"], site_text, "0"), pa.int32())
        return site.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok_site = pc.match_substring_regex(site_text, r"^[0-9]{1,9}$")
        ok_np = pc.fill_null(ok_site, False).to_numpy(zero_copy_only=False)
        code[(code == 0) & ~ok_np & matched] = reasons.code(SITE)
        site_np = np.zeros(len(code), dtype=np.int32)
        good = np.flatnonzero(ok_np)
        site_np[good] = pc.cast(pc.take(site_text, pa.array(good)), pa.int32()).to_numpy()
        return site_np


def _channels(
    channels: pa.Array, separator: str, code: np.ndarray, reasons: _Reasons
) -> tuple[np.ndarray, list[list[str]]]:
    """Per row, a code into the distinct channel lists, and those lists.

    Each distinct channel text is split once; rows with an empty or repeated channel
    name are rejected.
    """
    chan_dict = pc.dictionary_encode(channels)
    chan_idx = chan_dict.indices.to_numpy(zero_copy_only=False)
    chan_lists, chan_bad = [], []
    for text in chan_dict.dictionary.to_pylist():
        parts = text.split(separator) if text else []
        chan_lists.append(parts)
        chan_bad.append(
            not parts or any(not p.strip() for p in parts) or len(set(parts)) < len(parts)
        )
    chan_bad_np = np.array(chan_bad, dtype=bool)
    if chan_bad_np.any():
        bad = chan_bad_np[chan_idx] & (code == 0)
        code[bad] = reasons.code(CHANNELS)
    return chan_idx, chan_lists


def _reject_duplicates(
    folders: _Folders,
    fidx: np.ndarray,
    wells: pa.DictionaryArray,
    site_np: np.ndarray,
    code: np.ndarray,
    reasons: _Reasons,
) -> None:
    """Reject every accepted row whose plate/arm/cycle/well/site another row also has."""
    well_idx = wells.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ok = np.flatnonzero(code == 0)
    if not len(ok):
        return
    plate_key: dict[tuple, int] = {}
    fgroup = np.array(
        [
            plate_key.setdefault(
                (
                    folders.columns["dataset"][i],
                    folders.columns["source"][i],
                    folders.columns["batch"][i],
                    folders.columns["plate"][i],
                    folders.columns["arm"][i],
                    folders.columns["cycle"][i],
                ),
                len(plate_key),
            )
            for i in range(len(folders.reason))
        ],
        dtype=np.int64,
    )
    nwell = max(len(wells.dictionary), 1)
    site64 = site_np.astype(np.int64)
    nsite = int(site64[ok].max()) + 1
    combo = (fgroup[fidx[ok]] * nwell + well_idx[ok]) * nsite + site64[ok]
    per_combo = _occurrences(combo)
    dup = per_combo > 1
    if dup.any():
        code[ok[dup]] = reasons.code(DUPLICATE)
        for r, k in zip(ok[dup].tolist(), per_combo[dup].tolist(), strict=True):
            reasons.details[r] = f"{k} files for the same plate/cycle/well/site"


def _occurrences(combo: np.ndarray) -> np.ndarray:
    """Per element of ``combo`` (non-negative integers), how often its value occurs."""
    if int(combo.max()) < max(1 << 22, 8 * len(combo)):
        # Counting beats sorting when the codes span a small range (the usual case).
        return np.bincount(combo)[combo]
    # Sort once; only when some code repeats, count the repeated ones.
    ordered = np.sort(combo)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    per_combo = np.ones(len(combo), np.int64)
    if len(repeated):
        hit = np.isin(combo, repeated)
        values, counts = np.unique(combo[hit], return_counts=True)
        per_combo[hit] = counts[np.searchsorted(values, combo[hit])]
    return per_combo


def _mark_metadata(
    keys: pa.Array, patterns: tuple[str, ...], code: np.ndarray, reasons: _Reasons
) -> None:
    """Give rejected rows that are known non-images the metadata reason (in place)."""
    rejected = np.flatnonzero(code != 0)
    if not len(rejected) or not patterns:
        return
    rkeys = pc.take(keys, pa.array(rejected))
    is_meta = np.zeros(len(rejected), dtype=bool)
    for pattern in patterns:
        is_meta |= pc.match_substring_regex(rkeys, pattern).to_numpy(zero_copy_only=False)
    code[rejected[is_meta]] = reasons.code(METADATA)


def _index_table(
    code: np.ndarray,
    keys: pa.Array,
    fidx: np.ndarray,
    folders: _Folders,
    wells: pa.DictionaryArray,
    site_np: np.ndarray,
    chan_lists: list[list[str]],
    chan_idx: np.ndarray,
    ext_pos: np.ndarray,
    grammar: Grammar,
) -> pa.Table:
    ok = np.flatnonzero(code == 0)
    everything = len(ok) == len(code)

    def rows(arr: pa.Array) -> pa.Array | pa.ChunkedArray:
        return arr if everything else _select(arr, code == 0)

    f_ok = (fidx if everything else fidx[ok]).astype(np.int32)
    cols: dict[str, pa.Array] = {}
    for name in ("dataset", "source", "batch", "plate", "arm", "magnification", "plate_folder"):
        cols[name] = _expand(folders.columns[name], f_ok)
    cycles = np.array([c if c is not None else -1 for c in folders.columns["cycle"]], np.int32)
    cols["cycle"] = pa.array(cycles[f_ok] if len(cycles) else cycles, pa.int32())
    well_codes = wells.indices if everything else pa.array(wells.indices.to_numpy()[ok])
    cols["well"] = pa.DictionaryArray.from_arrays(well_codes, wells.dictionary)
    cols["site"] = pa.array(site_np if everything else site_np[ok], type=pa.int32())
    cols["channels"] = _channel_column(chan_lists, chan_idx if everything else chan_idx[ok])
    cols["key"] = rows(keys)
    ext_values = pa.array([e.lower() for e in grammar.extensions], pa.string())
    e_ok = ext_pos if everything else ext_pos[ok]
    cols["extension"] = pa.DictionaryArray.from_arrays(
        pa.array(np.maximum(e_ok, 0), pa.int32()), ext_values
    )
    return pa.table([cols[f.name] for f in INDEX_SCHEMA], names=INDEX_SCHEMA.names)


def _select(values: pa.Array, keep: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """``values[keep]``; zero-copy slices of the kept runs when there are few runs.

    Rejected rows are usually rare, so the long key column is not copied.
    """
    edges = np.flatnonzero(np.diff(np.r_[0, keep.astype(np.int8), 0]))
    starts, stops = edges[0::2], edges[1::2]
    if len(starts) > 4096:
        return pc.filter(values, pa.array(keep))
    return pa.chunked_array(
        [values.slice(a, b - a) for a, b in zip(starts.tolist(), stops.tolist(), strict=True)],
        type=values.type,
    )


def _channel_column(chan_lists: list[list[str]], rows: np.ndarray) -> pa.ListArray:
    """The channels column: row ``r`` holds ``chan_lists[rows[r]]``.

    Built with numpy as a list of dictionary-encoded names (few distinct), so neither
    building nor writing it touches five million strings one by one.
    """
    names: dict[str, int] = {}
    codes = [[names.setdefault(c, len(names)) for c in parts] for parts in chan_lists]
    lens = np.array([len(c) for c in codes], np.int64)
    starts = np.cumsum(lens) - lens
    flat = np.array([c for parts in codes for c in parts], np.int32)
    row_lens = lens[rows] if len(lens) else np.zeros(len(rows), np.int64)
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(row_lens, out=offsets[1:])
    total = int(offsets[-1])
    if total >= 1 << 31:  # pragma: no cover - beyond a list array's int32 offsets
        return pc.take(pa.array(chan_lists, pa.list_(pa.string())), pa.array(rows))
    picks = np.repeat(starts[rows] - offsets[:-1], row_lens) + np.arange(total)
    values = pa.DictionaryArray.from_arrays(
        pa.array(flat[picks], pa.int32()), pa.array(list(names), pa.string())
    )
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def _expand(values: list, indices: np.ndarray) -> pa.DictionaryArray:
    """Per-folder values as a dictionary column over distinct values (no per-row copy).

    Folders without a value (``None``: rejected, so never indexed) map to ``""``; a
    dictionary without nulls can be written to parquet as is.
    """
    values = ["" if v is None else v for v in values]
    distinct: dict[object, int] = {}
    remap = np.array([distinct.setdefault(v, len(distinct)) for v in values], np.int32)
    dictionary = pa.array(list(distinct), pa.string())
    codes = remap[indices] if len(remap) else indices
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary)


def _rejects_table(
    code: np.ndarray,
    reasons: list[str],
    details: dict[int, object],
    keys: pa.Array,
    name: pa.Array,
    fidx: np.ndarray,
    folders: _Folders,
    fm: dict[str, pa.Array],
    grammar: Grammar,
) -> pa.Table:
    bad = np.flatnonzero(code != 0)
    if not len(bad):
        return REJECTS_SCHEMA.empty_table()
    sel = pa.array(bad)
    rkeys = pc.take(keys, sel).to_pylist()
    rnames = pc.take(name, sel).to_pylist()
    reason_list = [reasons[c] for c in code[bad]]
    detail: list[str] = []
    for row, key_name, reason, f in zip(bad, rnames, reason_list, fidx[bad], strict=True):
        if int(row) in details:
            detail.append(str(details[int(row)]))
        elif folders.reason[f] == reason:
            detail.append(folders.detail[f])
        elif reason == METADATA:
            detail.append("")
        else:
            detail.append(key_name)
    kind = ["metadata" if r == METADATA else "error" for r in reason_list]
    return pa.Table.from_arrays(
        [pa.array(rkeys, pa.string()), pa.array(kind), pa.array(reason_list), pa.array(detail)],
        schema=REJECTS_SCHEMA,
    )
