"""The experiment: which channel plays which role, per arm, and how images were taken.

Saved as ``WORKSPACE/experiment/experiment.json``. ``exp init`` guesses a template from
the index (``experiment/experiment.init.json``) that the user edits; ``exp new``
validates the edited file against the index and writes ``experiment.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from starrynight import storage, workspace
from starrynight.errors import UserError
from starrynight.geometry import Layout
from starrynight.index import dataset_root, load_index, normalise_channel
from starrynight.presets import apply_presets
from starrynight.roles import CP_REQUIRED, NUCLEAR_NAMES, SBS_ROLES

_CELL = re.compile(r"phallo|zo1|wga|actin|cell|concanavalin|cona", re.IGNORECASE)
_MITO = re.compile(r"mito|tom20|tomm20", re.IGNORECASE)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CPArm(_Model):
    """Cell Painting arm: its channels (as written in file names) and their roles."""

    channels: list[str] = Field(min_length=1)
    roles: dict[str, str]
    layout: Layout | None = None  # site layout when files carry no stage positions

    @model_validator(mode="after")
    def _roles_point_at_channels(self) -> CPArm:
        self.roles = {r: c for r, c in self.roles.items() if c or r in CP_REQUIRED}
        _check_roles("cp", self.roles, self.channels, CP_REQUIRED)
        return self


class SBSArm(_Model):
    """Sequencing-by-synthesis arm: its cycles, channels and which channel is which base."""

    cycles: list[int] = Field(min_length=1)
    channels: list[str] = Field(min_length=1)
    roles: dict[str, str]
    layout: Layout | None = None  # site layout when files carry no stage positions

    @model_validator(mode="after")
    def _roles_point_at_channels(self) -> SBSArm:
        if any(c < 1 for c in self.cycles) or len(set(self.cycles)) != len(self.cycles):
            raise ValueError(f"cycles must be distinct numbers >= 1, got {self.cycles}")
        _check_roles("sbs", self.roles, self.channels, SBS_ROLES)
        bases = [self.roles[b] for b in "ACGT"]
        if len(set(bases)) != 4:
            raise ValueError(f"the four bases A/C/G/T must be four different channels: {bases}")
        return self


class Frame(_Model):
    """How fields of view were laid out: square or round well frame, overlap in percent."""

    type: Literal["square", "round"] = "square"
    overlap_pct: float = Field(default=10.0, ge=0, lt=100)


class Experiment(_Model):
    """Everything about the experiment that is not in the file names."""

    dataset: str
    cp: CPArm | None = None
    sbs: SBSArm | None = None
    frame: Frame = Field(default_factory=Frame)
    barcodes: str | None = None

    @model_validator(mode="after")
    def _some_arm(self) -> Experiment:
        if self.cp is None and self.sbs is None:
            raise ValueError("at least one arm (cp or sbs) is required")
        return self


def _check_roles(arm: str, roles: dict[str, str], channels: list[str], required) -> None:
    missing = [r for r in required if not roles.get(r)]
    if missing:
        raise ValueError(
            f"{arm}.roles lacks {', '.join(missing)}; "
            f"expected one of the {arm} channels: {', '.join(channels)}"
        )
    for role, channel in roles.items():
        if channel not in channels:
            raise ValueError(
                f"{arm}.roles.{role} = {channel!r} is not a channel of the {arm} arm; "
                f"channels: {', '.join(channels)}"
            )


def _format_validation(where: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not loc or msg.startswith(loc):
        return f"{where}: {msg}"
    return f"{where}: {loc}: {msg}"


def parse_experiment(data: dict | str | bytes, where: str) -> Experiment:
    """Validate experiment JSON (text or decoded) into an :class:`Experiment`.

    Raises
    ------
    UserError
        One line naming ``where``, the field and what was expected.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation(where, exc)) from exc


def load_experiment(ws: str) -> Experiment:
    """Read ``WORKSPACE/experiment/experiment.json``.

    Raises
    ------
    UserError
        When it is missing or invalid.
    """
    path = workspace.experiment_path(ws)
    if not storage.exists(path):
        raise UserError(f"{path}: no experiment; run 'starrynight exp init' and 'exp new' first")
    return parse_experiment(storage.read_bytes(path), path)


def load_experiment_or_none(ws: str) -> Experiment | None:
    """The workspace's experiment, or None when it has none yet.

    Raises
    ------
    UserError
        When the file exists but is invalid.
    """
    if not storage.exists(workspace.experiment_path(ws)):
        return None
    return load_experiment(ws)


def init_path(ws: str) -> str:
    """``experiment/experiment.init.json``: the template ``exp init`` writes."""
    return storage.join(ws, "experiment", "experiment.init.json")


def _channels_in_order(table: pa.Table) -> list[str]:
    seen: dict[str, None] = {}
    for joined in pc.unique(pc.binary_join(table.column("channels"), "\x1f")).to_pylist():
        for c in joined.split("\x1f"):
            seen.setdefault(c, None)
    return list(seen)


def _guess(channels: list[str], pattern: re.Pattern, exclude: set[str]) -> str:
    return next((c for c in channels if pattern.search(c) and c not in exclude), "")


def template(index_table: pa.Table, dataset_root: str) -> dict:
    """A best-guess experiment (as JSON-ready dict) from the index, for the user to edit.

    Nuclei: a channel matching DAPI/Hoechst/DNA; SBS bases: channels named exactly
    A/C/G/T (any case); cell/mito from common stain names (Phalloidin, ZO1, WGA; Mito,
    Tom20), or ``""`` when nothing fits.
    """
    datasets = pc.unique(index_table.column("dataset")).to_pylist()
    arm = index_table.column("arm")
    out: dict = {"dataset": datasets[0] if datasets else ""}
    cp = index_table.filter(pc.equal(arm, "cp"))
    if cp.num_rows:
        chans = _channels_in_order(cp)
        nuclei = _guess(chans, NUCLEAR_NAMES, set())
        cell = _guess(chans, _CELL, {nuclei})
        mito = _guess(chans, _MITO, {nuclei, cell})
        out["cp"] = {"channels": chans, "roles": {"nuclei": nuclei, "cell": cell, "mito": mito}}
    sbs = index_table.filter(pc.equal(arm, "sbs"))
    if sbs.num_rows:
        chans = _channels_in_order(sbs)
        roles = {"nuclei": _guess(chans, NUCLEAR_NAMES, set())}
        for base in "ACGT":
            roles[base] = next((c for c in chans if c.upper() == base), "")
        cycles = sorted(pc.unique(sbs.column("cycle")).to_pylist())
        out["sbs"] = {"cycles": cycles, "channels": chans, "roles": roles}
    out["frame"] = Frame().model_dump()
    out["barcodes"] = _default_barcodes(index_table, dataset_root)
    return out


def _default_barcodes(index_table: pa.Table, root: str) -> str | None:
    sources = pc.unique(index_table.column("source")).to_pylist()
    datasets = pc.unique(index_table.column("dataset")).to_pylist()
    candidates = [storage.join(root, s, "workspace", "metadata", "Barcodes.csv") for s in sources]
    candidates += [
        storage.join(root, d, s, "workspace", "metadata", "Barcodes.csv")
        for d in datasets
        for s in sources
    ]
    return next((c for c in candidates if storage.exists(c)), None)


def init(ws: str, presets: Sequence[str] = ()) -> str:
    """Write the template ``experiment/experiment.init.json`` guessed from the index,
    with the roles of the named presets (:mod:`starrynight.presets`) applied.

    Returns
    -------
    str
        The path written.
    """
    data = apply_presets(template(load_index(ws), dataset_root(ws)), presets)
    path = init_path(ws)
    storage.write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    return path


def new(ws: str, choices: str) -> Experiment:
    """Validate the user's experiment file against the index; write ``experiment.json``.

    Parameters
    ----------
    ws : str
        Workspace (its index says which arms, cycles and channels exist).
    choices : str
        The edited template (JSON).

    Raises
    ------
    UserError
        Invalid JSON or fields, a role naming a channel that does not exist (the
        message lists the channels that do), an arm or cycle absent from the index,
        or a barcode table that does not exist.
    """
    if not storage.exists(choices):
        raise UserError(f"{choices}: file not found")
    exp = parse_experiment(storage.read_bytes(choices), choices)
    validate_against_index(exp, load_index(ws), choices)
    if exp.barcodes and not storage.exists(exp.barcodes):
        raise UserError(f"{choices}: barcodes: {exp.barcodes} does not exist")
    storage.write_bytes(
        workspace.experiment_path(ws), (exp.model_dump_json(indent=2) + "\n").encode()
    )
    return exp


def validate_against_index(exp: Experiment, index_table: pa.Table, where: str) -> None:
    """Check that every arm, cycle and channel of ``exp`` exists in the index.

    Raises
    ------
    UserError
        Naming the field and listing what the index holds.
    """
    arm_col = index_table.column("arm")
    for arm_name, arm in (("cp", exp.cp), ("sbs", exp.sbs)):
        rows = index_table.filter(pc.equal(arm_col, arm_name))
        if arm is None:
            continue
        if not rows.num_rows:
            raise UserError(f"{where}: {arm_name}: the index has no {arm_name} images")
        present = _channels_in_order(rows)
        for c in arm.channels:
            if c not in present:
                raise UserError(
                    f"{where}: {arm_name}.channels: {c!r} is not in the index; "
                    f"{arm_name} channels are: {', '.join(present)}"
                )
        if arm_name == "sbs":
            cycles = sorted(pc.unique(rows.column("cycle")).to_pylist())
            absent = [c for c in arm.cycles if c not in cycles]
            if absent:
                raise UserError(
                    f"{where}: sbs.cycles: {absent} not in the index; cycles are: {cycles}"
                )
    datasets = pc.unique(index_table.column("dataset")).to_pylist()
    if exp.dataset not in datasets:
        raise UserError(f"{where}: dataset: {exp.dataset!r} not in the index; found {datasets}")


# --------------------------------------------------------------------------- roles

Arm = Literal["cp", "sbs"]


@dataclass(frozen=True)
class ArmRoles:
    """An arm's channels (as written in file names, in frame order) and their roles.

    ``source`` is ``"experiment"`` when they come from ``experiment.json``, ``"guessed"``
    when they were guessed from the channels seen (no experiment yet).
    """

    channels: list[str]
    roles: dict[str, str]
    source: Literal["experiment", "guessed"]

    def normalised(self) -> dict[str, str]:
        """Role -> channel as it appears in output file names."""
        return {role: normalise_channel(ch) for role, ch in self.roles.items()}


def guess_nuclear(channels: Iterable[str]) -> str | None:
    """The first channel named like a nuclear stain (DAPI, Hoechst, DNA, DRAQ), or None."""
    return next((c for c in channels if NUCLEAR_NAMES.search(c)), None)


def guess_roles(arm: Arm, channels: Sequence[str]) -> dict[str, str]:
    """Roles guessed from channel names: nuclei, and for SBS the bases named A/C/G/T."""
    roles: dict[str, str] = {}
    nuclear = guess_nuclear(channels)
    if nuclear is not None:
        roles["nuclei"] = nuclear
    if arm == "sbs":
        for base in "ACGT":
            match = [c for c in channels if c.strip().upper() == base]
            if match:
                roles[base] = match[0]
    return roles


def arm_roles(ws: str, arm: Arm, seen: Iterable[str]) -> ArmRoles:
    """Channels and roles of an arm: the experiment's, else guessed from ``seen``.

    Parameters
    ----------
    ws : str
        Workspace (its ``experiment.json``, when present, decides).
    arm : {"cp", "sbs"}
    seen : iterable of str
        Channel names as written, in the order first seen (used without an experiment).
    """
    exp = load_experiment_or_none(ws)
    part = None if exp is None else (exp.cp if arm == "cp" else exp.sbs)
    if part is not None:
        return ArmRoles(list(part.channels), dict(part.roles), "experiment")
    channels = list(dict.fromkeys(seen))
    return ArmRoles(channels, guess_roles(arm, channels), "guessed")


def resolve_channels(
    ws: str,
    arm: Arm,
    available: Collection[str],
    wanted: Sequence[str],
    given: Mapping[str, str | None] | None = None,
    what: str = "images",
) -> dict[str, str]:
    """The channel (normalised name) of each wanted role among ``available``.

    Each role takes, in this order: the channel ``given`` for it (a command option),
    the experiment's, a guess (nuclei: the nuclear-named channel; SBS bases: channels
    named A/C/G/T; CP ``cell``: the first other channel in alphabetical order).

    Parameters
    ----------
    ws : str
        Workspace.
    arm : {"cp", "sbs"}
    available : collection of str
        Normalised channel names present (e.g. of the corrected or aligned images).
    wanted : sequence of str
        Roles to resolve, e.g. ``("nuclei", "cell")`` or ``("nuclei", "A", "C", "G", "T")``.
    given : mapping of str to str or None, optional
        Role -> channel chosen by the user (None: not given).
    what : str
        What ``available`` are, for messages ("corrected images", ...).

    Raises
    ------
    UserError
        When a role cannot be resolved or names a channel that has no images.
    """
    given = given or {}
    ordered = sorted(available)
    roles = arm_roles(ws, arm, ordered).normalised()
    out: dict[str, str] = {}
    for role in wanted:
        channel = given.get(role) or roles.get(role) or _fallback(arm, role, ordered, out)
        if channel is None:
            option = " (give --nuclei-channel)" if role == "nuclei" else ""
            raise UserError(
                f"{arm} role {role!r}: no channel for it among the {what}' channels "
                f"{', '.join(ordered) or 'none'}; set it in the experiment{option}"
            )
        if channel not in available:
            raise UserError(
                f"{arm} role {role!r} is channel {channel!r}, which has no {what} "
                f"(channels found: {', '.join(ordered) or 'none'})"
            )
        out[role] = channel
    return out


def _fallback(arm: Arm, role: str, ordered: Sequence[str], chosen: Mapping[str, str]) -> str | None:
    if role == "nuclei":
        return guess_nuclear(ordered)
    if arm == "cp" and role == "cell":
        return next((c for c in ordered if c not in chosen.values()), None)
    if arm == "sbs" and role in "ACGT":
        return next((c for c in ordered if c.strip().upper() == role), None)
    return None
