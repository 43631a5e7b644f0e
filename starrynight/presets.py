"""Named channel-role presets that ``exp init --preset`` applies to the experiment template.

Screens name their channels by stain (``DAPI``, ``Phalloidin``, ``A``/``C``/``G``/``T``)
or by dye / filter (``DAPI,GFP,A594,Cy5,750`` for Cell Painting and
``DAPI,Cy3,A594,Cy5,Cy7`` for SBS in the cpg0032 screen). The stain names are guessed
by :func:`starrynight.experiment.template`; dye names say nothing about the role without
knowing the lab's staining protocol, so the common protocols are offered as named
presets the user picks:

- ``sbs-dyes``: the four-dye SBS chemistry of the Broad's pooled screens (Illumina
  MiSeq-style dyes): ``Cy3`` = G, ``A594`` = T, ``Cy5`` = A, ``Cy7`` = C, ``DAPI`` = nuclei;
- ``cp-dyes``: the Broad's pooled Cell Painting panel read through dye filters:
  ``DAPI`` = nuclei (DNA), ``GFP`` = er (ConA-488, ER), ``A594`` = cell (Phalloidin-594),
  ``Cy5`` = mito (MitoTracker Deep Red), ``750`` = wga (WGA-750).

A preset names, per role, the channel names it accepts (compared case-insensitively).
Roles it cannot match stay as guessed, and ``exp init`` says which roles are still empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starrynight.errors import UserError
from starrynight.roles import CP_REQUIRED, CP_ROLES, SBS_ROLES

#: Cell Painting stains beyond the segmentation roles: they only name the channel for
#: CellProfiler (``ER``, ``WGA``, ``RNA`` in PCPIP's pipelines); the experiment keeps
#: them as extra CP roles.
CP_STAIN_ROLES = ("er", "wga", "rna")
ROLES = {"cp": (*CP_ROLES, *CP_STAIN_ROLES), "sbs": SBS_ROLES}
REQUIRED = {"cp": CP_REQUIRED, "sbs": SBS_ROLES}


@dataclass(frozen=True)
class Preset:
    """A named mapping of channel names to roles for one arm.

    Attributes
    ----------
    name : str
        What the user passes to ``exp init --preset``.
    arm : str
        ``cp`` or ``sbs``.
    description : str
        One line for ``--help`` and the README.
    roles : dict of str to tuple of str
        Role -> channel names that play it (case-insensitive).
    """

    name: str
    arm: str
    description: str
    roles: dict[str, tuple[str, ...]]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "sbs-dyes", "sbs", "SBS by dye: Cy3=G, A594=T, Cy5=A, Cy7=C, DAPI=nuclei",
            {"nuclei": ("DAPI",), "G": ("Cy3",), "T": ("A594", "AF594"), "A": ("Cy5",),
             "C": ("Cy7",)},
        ),
        Preset(
            "cp-dyes", "cp",
            "Cell Painting by dye: DAPI=nuclei (DNA), GFP=er (ER), A594=cell (Phalloidin), "
            "Cy5=mito (Mito), 750=wga (WGA)",
            {"nuclei": ("DAPI",), "er": ("GFP", "488"), "cell": ("A594", "AF594"),
             "mito": ("Cy5",), "wga": ("750", "AF750")},
        ),
    )
}  # fmt: skip


def _match(channels: Sequence[str], accepted: Iterable[str], taken: set[str]) -> str:
    wanted = {a.casefold() for a in accepted}
    return next((c for c in channels if c.casefold() in wanted and c not in taken), "")


def apply_presets(template: dict, names: Sequence[str]) -> dict:
    """Fill the roles of an ``exp init`` template from the named presets.

    Parameters
    ----------
    template : dict
        As :func:`starrynight.experiment.template` returns it (changed in place).
    names : sequence of str
        Preset names, at most one per arm.

    Returns
    -------
    dict
        The template; every role of an arm a preset was applied to is present (``""``
        where still empty).

    Raises
    ------
    UserError
        Unknown preset, two presets for one arm, a preset for an arm the index lacks, or
        a preset that matches none of the arm's channels.
    """
    used: dict[str, str] = {}
    for name in names:
        preset = PRESETS.get(name)
        if preset is None:
            raise UserError(f"--preset {name!r}: unknown; presets: {', '.join(PRESETS)}")
        if preset.arm in used:
            raise UserError(
                f"--preset {name}: the {preset.arm} arm already has preset {used[preset.arm]}"
            )
        used[preset.arm] = name
        arm = template.get(preset.arm)
        if arm is None:
            raise UserError(
                f"--preset {name}: is for the {preset.arm} arm but the index has no "
                f"{preset.arm} images"
            )
        channels = arm["channels"]
        found = {}
        for role, accepted in preset.roles.items():
            channel = _match(channels, accepted, set(found.values()))
            if channel:
                found[role] = channel
        if not found:
            raise UserError(
                f"--preset {name}: matches none of the {preset.arm} channels "
                f"({', '.join(channels)}); it expects {_expects(preset)}"
            )
        # A channel the preset places is no longer a guess for another role.
        roles = {r: c for r, c in arm["roles"].items() if c not in found.values()}
        arm["roles"] = roles | found
    for arm_name in used:
        # Every role of a preset's arm shows in the template, "" where still empty.
        arm = template[arm_name]
        arm["roles"] = {r: arm["roles"].get(r, "") for r in ROLES[arm_name]}
    return template


def _expects(preset: Preset) -> str:
    return ", ".join(f"{'/'.join(names)}={role}" for role, names in preset.roles.items())


def empty_roles(template: dict) -> list[str]:
    """One line per arm that still has empty roles, naming them and the free channels."""
    lines = []
    for arm_name, roles in ROLES.items():
        arm = template.get(arm_name)
        if arm is None:
            continue
        assigned = arm.get("roles", {})
        empty = [r for r in roles if not assigned.get(r)]
        if not empty:
            continue
        required = [r for r in empty if r in REQUIRED[arm_name]]
        optional = [r for r in empty if r not in REQUIRED[arm_name]]
        free = [c for c in arm["channels"] if c not in assigned.values()]
        parts = []
        if required:
            parts.append(f"required {', '.join(required)}")
        if optional:
            parts.append(f"optional {', '.join(optional)}")
        lines.append(
            f"{arm_name}: roles still empty: {'; '.join(parts)} "
            f"(channels without a role: {', '.join(free) or 'none'})"
        )
    return lines


def suggest(template: dict, chosen: Sequence[str] = ()) -> list[str]:
    """Presets not chosen that would fill a required role left empty, as hints."""
    hints = []
    arms = {PRESETS[n].arm for n in chosen if n in PRESETS}
    for preset in PRESETS.values():
        arm = template.get(preset.arm)
        if arm is None or preset.arm in arms:
            continue
        empty = [r for r in REQUIRED[preset.arm] if not arm["roles"].get(r)]
        fills = [
            r
            for r in empty
            if r in preset.roles and _match(arm["channels"], preset.roles[r], set())
        ]
        if fills:
            hints.append(
                f"--preset {preset.name} would fill {preset.arm} {', '.join(fills)} "
                f"({preset.description})"
            )
    return hints
