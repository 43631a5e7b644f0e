"""Pipeline builders: one pipecraft pipeline per step group and partition.

A builder takes the workspace (and dataset) URI, the partition (plate, or plate and
well), which steps to include and a :class:`Runner` saying how the ``starrynight`` CLI is
invoked (the venv's interpreter locally, the image's entry point on AWS Batch). Node
inputs and outputs are the workspace paths of :mod:`starrynight.workspace`, so pipecraft
derives the order between steps from the data and checks each step wrote its product.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from pipecraft import Command, Parallel, Pipeline, Scatter, Seq
from starrynight import registry
from starrynight import workspace as wsp
from starrynight.pipelines.resources import StepResources, resources_for

#: Steps of the per-plate catalog, in order.
CATALOG_STEPS = tuple(s.name for s in registry.steps_at("plate") if s.group == "catalog")
#: Steps of the per-plate illumination functions.
ILLUM_STEPS = tuple(s.name for s in registry.steps_at("plate") if s.group == "illumination")
#: Steps of one plate x well, in dependency order.
WELL_STEPS = registry.names_at("well")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=@+-]")


@dataclass(frozen=True)
class Runner:
    """How nodes invoke the ``starrynight`` CLI.

    Parameters
    ----------
    argv : tuple of str
        Program prefix; the default runs this interpreter's ``starrynight.cli`` so the
        virtual environment's packages are used.
    image : str, optional
        Container image for backends that run containers (AWS Batch).
    env : mapping of str to str
        Extra environment for every node (e.g. the Dagster run id, so a node re-runs in
        each Dagster run and the CLI's own completeness checks decide what to skip).
    resources : mapping of str to StepResources, optional
        The project's resource table per step (:func:`resources.step_table`); default:
        :data:`resources.DEFAULTS`.
    step_workers : int, optional
        ``--workers`` of every step that parallelises inside a partition; default: the
        step's CPUs (its resources row), so a job uses what it is given.
    """

    argv: tuple[str, ...] = (sys.executable, "-m", "starrynight.cli")
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, StepResources] | None = None
    step_workers: int | None = None

    def workers(self, step: str) -> int:
        """``--workers`` of ``step``: :attr:`step_workers`, else the CPUs of its job."""
        return self.step_workers or resources_for(step, self.resources).cpus

    def command(
        self,
        name: str,
        args: Iterable[str],
        inputs: Iterable[str] = (),
        outputs: Iterable[str] = (),
        step: str | None = None,
    ) -> Command:
        """A node running ``starrynight <args>``, with the resources of its ``step``."""
        return Command(
            name=_safe(name),
            argv=(*self.argv, *args),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            image=self.image,
            env=dict(self.env),
            resources=resources_for(step or name.split("-", 1)[0], self.resources),
        )


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def node_name(step: str, *unit: str) -> str:
    """Name of the pipeline node running ``step`` for ``unit`` (plate[, well][, ...]).

    Nodes of a step are named ``<step>-<unit parts>``; :func:`nodes_of` finds them.
    """
    return _safe("-".join((step, *unit)))


def nodes_of(step: str, nodes: Iterable[str]) -> list[str]:
    """The nodes among ``nodes`` that run ``step`` (see :func:`node_name`)."""
    return [n for n in nodes if n.startswith(f"{step}-")]


def _cmd(step: str) -> tuple[str, ...]:
    return registry.step(step).command


def _outputs(step: str, ws: str, plate: str = "", well: str = "") -> list[str]:
    return registry.step(step).outputs(ws, plate, well)


def _select(steps: Collection[str] | None, known: tuple[str, ...]) -> list[str]:
    chosen = list(known) if steps is None else [s for s in known if s in steps]
    unknown = set(steps or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown step(s) {sorted(unknown)}: expected some of {list(known)}")
    if not chosen:
        raise ValueError(f"no step selected: expected some of {list(known)}")
    return chosen


def catalog_pipeline(
    dataset: str,
    ws: str,
    plate: str,
    runner: Runner | None = None,
    steps: Collection[str] | None = None,
) -> Pipeline:
    """List one plate's files into the inventory, then rebuild the index.

    Parameters
    ----------
    dataset : str
        Dataset root (local folder or ``s3://`` prefix).
    ws : str
        Workspace URI.
    plate : str
        Plate folder name.
    runner : Runner, optional
        How to invoke the CLI (default: this interpreter).
    steps : collection of str, optional
        Subset of :data:`CATALOG_STEPS` (default: both).

    Returns
    -------
    pipecraft.Pipeline
        ``inventory gen --plate`` followed by ``index gen``.
    """
    r = runner or Runner()
    chosen = _select(steps, CATALOG_STEPS)
    nodes = []
    if "inventory" in chosen:
        nodes.append(
            r.command(
                node_name("inventory", plate),
                [*_cmd("inventory"), "-d", dataset, "-o", ws, "--plate", plate, "--no-progress"],
                outputs=_outputs("inventory", ws, plate),
            )
        )
    if "index" in chosen:
        nodes.append(
            r.command(
                node_name("index", plate),
                [*_cmd("index"), "-i", ws, "-o", ws],
                inputs=_outputs("inventory", ws, plate),
                outputs=_outputs("index", ws, plate),
            )
        )
    return Pipeline(f"catalog-{_safe(plate)}", Seq(*nodes), check_inputs=False)


def experiment_pipeline(
    ws: str, runner: Runner | None = None, choices: str | None = None
) -> Pipeline:
    """Write ``experiment/experiment.json``, validated against the index.

    Parameters
    ----------
    ws : str
        Workspace URI (holds the index).
    runner : Runner, optional
        How to invoke the CLI.
    choices : str, optional
        The user's experiment file; when absent the template guessed from the index
        (``exp init``) is validated as is.
    """
    r = runner or Runner()
    out = wsp.experiment_path(ws)
    if choices:
        return Pipeline(
            "experiment",
            r.command(
                "exp-new", ["exp", "new", "-w", ws, "-i", choices], outputs=[out], step="experiment"
            ),
            check_inputs=False,
        )
    template = wsp.experiment_path(ws)[: -len("experiment.json")] + "experiment.init.json"
    return Pipeline(
        "experiment",
        Seq(
            r.command("exp-init", ["exp", "init", "-w", ws], outputs=[template], step="experiment"),
            r.command(
                "exp-new",
                ["exp", "new", "-w", ws, "-i", template],
                inputs=[template],
                outputs=[out],
                step="experiment",
            ),
        ),
        check_inputs=False,
    )


def illum_pipeline(
    ws: str,
    plate: str,
    sbs_cycles: Iterable[int] = (),
    runner: Runner | None = None,
    steps: Collection[str] | None = None,
    fan_out_cycles: bool = True,
) -> Pipeline:
    """Illumination functions of one plate: CP, and one node per SBS cycle.

    Parameters
    ----------
    ws : str
        Workspace URI.
    plate : str
        Plate name.
    sbs_cycles : iterable of int
        SBS cycles of the plate (from the index); the SBS step fans out over them.
    runner : Runner, optional
        How to invoke the CLI.
    steps : collection of str, optional
        Subset of :data:`ILLUM_STEPS` (default: both).
    fan_out_cycles : bool
        One node per SBS cycle (worth it where nodes run on separate machines); False
        makes one node for all cycles, saving a CLI start-up per cycle on one machine.
    """
    r = runner or Runner()
    chosen = _select(steps, ILLUM_STEPS)
    cycles = sorted(set(sbs_cycles))
    parts = []
    base = [*_cmd("illum_cp"), "-w", ws, "--plate", plate, "--workers", str(r.workers("illum_cp"))]
    if "illum_cp" in chosen:
        parts.append(
            r.command(
                node_name("illum_cp", plate),
                [*base, "--arm", "cp"],
                outputs=_outputs("illum_cp", ws, plate),
            )
        )
    if "illum_sbs" in chosen and cycles and not fan_out_cycles:
        parts.append(
            r.command(
                node_name("illum_sbs", plate),
                [*base, "--arm", "sbs"],
                outputs=[wsp.illum_stats_path(ws, plate, k) for k in cycles],
            )
        )
    elif "illum_sbs" in chosen and cycles:

        def cycle_node(k: int) -> Command:
            return r.command(
                node_name("illum_sbs", plate, f"c{k}"),
                [*base, "--arm", "sbs", "--cycle", str(k)],
                outputs=[wsp.illum_stats_path(ws, plate, k)],
            )

        parts.append(Scatter(f"illum_sbs-{plate}", cycles, cycle_node))
    if not parts:
        raise ValueError(f"plate {plate!r}: no illumination step to run (no SBS cycles given)")
    return Pipeline(f"illum-{_safe(plate)}", Parallel(*parts), check_inputs=False)


def well_pipeline(
    ws: str,
    plate: str,
    well: str,
    runner: Runner | None = None,
    steps: Collection[str] | None = None,
) -> Pipeline:
    """Every per-well step of one plate x well (or the chosen subset).

    One node per :data:`WELL_STEPS` row of the registry: its CLI invocation, its
    outputs, and as inputs the outputs of the same-level steps it needs (so pipecraft
    orders ``segmentation`` after ``corrected_cp``, ``cell_features`` after both
    tables). Steps outside the subset are assumed complete.
    """
    r = runner or Runner()
    nodes = []
    for name in _select(steps, registry.names_at("well")):
        s = registry.step(name)
        nodes.append(
            r.command(
                node_name(name, plate, well),
                s.argv(ws, plate, well, r.workers(name)),
                registry.same_level_inputs(s, ws, plate, well),
                s.outputs(ws, plate, well),
                step=name,
            )
        )
    # Order comes from the declared inputs and outputs.
    return Pipeline(f"well-{_safe(f'{plate}-{well}')}", Parallel(*nodes), check_inputs=False)


def plate_step_pipeline(
    step: str, ws: str, plate: str, runner: Runner | None = None, options: Iterable[str] = ()
) -> Pipeline:
    """One plate-level step of one plate (its registry row's command and arguments).

    Its inputs are other levels' products (the plate's wells), which Dagster orders; the
    command itself says what is missing. ``options`` are further options of the command.
    """
    s = registry.step(step)
    r = runner or Runner()
    return Pipeline(
        f"{step}-{_safe(plate)}",
        r.command(
            node_name(step, plate),
            [*s.command, "-w", ws, "--plate", plate, *s.extra_args, *options],
            outputs=_outputs(step, ws, plate),
        ),
        check_inputs=False,
    )


def gene_summary_pipeline(ws: str, plate: str, runner: Runner | None = None) -> Pipeline:
    """Per-gene summary of one plate from its analysed wells."""
    return plate_step_pipeline("gene_summary", ws, plate, runner)


def plate_profiles_pipeline(
    ws: str, plate: str, runner: Runner | None = None, options: Iterable[str] = ()
) -> Pipeline:
    """Normalised cell and guide profiles of one plate (``results profiles``).

    ``options`` are further ``results profiles`` options (e.g. ``--control-label``).
    """
    return plate_step_pipeline("plate_profiles", ws, plate, runner, options)


def screen_hits_pipeline(
    ws: str, runner: Runner | None = None, options: Iterable[str] = ()
) -> Pipeline:
    """Gene profiles, phenotypic activity and hits of every profiled plate (``results hits``).

    ``options`` are further ``results hits`` options (``--unit``, ``--control-label``...).
    """
    r = runner or Runner()
    row = registry.step("screen_hits")
    return Pipeline(
        "screen_hits",
        r.command(
            "screen_hits-screen",
            [*row.command, "-w", ws, *row.extra_args, *options],
            outputs=_outputs("screen_hits", ws),
            step="screen_hits",
        ),
        check_inputs=False,
    )
