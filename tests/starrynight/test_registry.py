"""The step registry: every row is a CLI command with workspace outputs, and the
pipeline builders derive their nodes, inputs and outputs from it."""

from __future__ import annotations

import click
import pytest

from starrynight import registry
from starrynight.cli.main import cli
from starrynight.pipelines import node_name, nodes_of, well_pipeline

WS, PLATE, WELL = "/ws", "P1", "A1"
#: The options every per-well command shares (the site runner's).
WELL_OPTIONS = {"workspace", "plate", "well", "workers", "force", "skip_bad", "progress"}


def _command(words: tuple[str, ...]) -> click.Command:
    ctx = click.Context(cli)
    cmd: click.Command | None = cli
    for word in words:
        assert isinstance(cmd, click.Group), (words, word)
        cmd = cmd.get_command(ctx, word)
        assert cmd is not None, f"no CLI command {' '.join(words)!r}"
    return cmd


@pytest.mark.parametrize("step", registry.STEPS, ids=lambda s: s.name)
def test_every_row_is_a_cli_command_with_workspace_outputs(step: registry.Step) -> None:
    cmd = _command(step.command)
    assert not isinstance(cmd, click.Group), step.command
    assert step.description and step.group
    assert set(step.arms) <= {"cp", "sbs"}
    outputs = step.outputs(WS, PLATE, WELL)
    if step.name != "illum_sbs":  # one statistics file per cycle, named by the builder
        assert outputs, step.name
    assert all(o.startswith(WS + "/") for o in outputs), outputs
    if step.level == "well":
        params = {p.name for p in cmd.params}
        # Steps on the site runner share all its options; well-level computations
        # (neighbour pairs, mosaic bands, a well's merge) take --force only.
        wanted = WELL_OPTIONS if step.site_runner else {"workspace", "plate", "well", "force"}
        if step.site_parallel:
            wanted = wanted | {"workers"}
        assert params >= wanted, (step.name, wanted - params)


def test_needs_point_at_earlier_rows() -> None:
    seen: set[str] = set()
    for step in registry.STEPS:
        assert set(step.needs) <= seen, (step.name, step.needs)
        seen.add(step.name)
    assert registry.topological(["cell_features", "corrected_cp"]) == [
        "corrected_cp",
        "cell_features",
    ]


def test_well_pipeline_nodes_are_the_rows() -> None:
    dag = well_pipeline(WS, PLATE, WELL).compile()
    by_step = {s: nodes_of(s, dag.nodes) for s in registry.names_at("well")}
    assert all(len(v) == 1 for v in by_step.values()), by_step
    for step in registry.steps_at("well"):
        (name,) = by_step[step.name]
        assert name == node_name(step.name, PLATE, WELL)
        node = dag.nodes[name]
        # File inputs are exactly the outputs of the same-level steps it needs.
        assert sorted(node.inputs) == sorted(registry.same_level_inputs(step, WS, PLATE, WELL))
        assert list(node.outputs) == step.outputs(WS, PLATE, WELL)
        assert list(node.argv[-len(step.argv(WS, PLATE, WELL, 2)) :]) == step.argv(
            WS, PLATE, WELL, 2
        )


def test_unknown_step_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: inventory, index"):
        registry.step("stitching")
    with pytest.raises(ValueError, match="unknown step"):
        well_pipeline(WS, PLATE, WELL, steps=["stitching"])


def test_every_row_has_default_resources() -> None:
    from starrynight.pipelines.resources import DEFAULTS

    assert {s.name for s in registry.STEPS} <= set(DEFAULTS)
    dag = well_pipeline(WS, PLATE, WELL).compile()
    for step in registry.steps_at("well"):
        node = dag.nodes[node_name(step.name, PLATE, WELL)]
        assert node.resources.memory_mb == DEFAULTS[step.name].memory_mb
        assert node.resources.cpus == DEFAULTS[step.name].cpus
