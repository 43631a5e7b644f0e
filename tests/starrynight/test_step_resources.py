"""The per-step resource table and a project's overrides of it."""

from __future__ import annotations

import pytest

from pipecraft import Resources
from starrynight import registry
from starrynight.errors import UserError
from starrynight.pipelines.resources import DEFAULTS, resources_for, step_table

STEPS = tuple(s.name for s in registry.STEPS)


def test_every_step_has_a_row_and_heavier_steps_ask_more() -> None:
    assert set(DEFAULTS) == {*STEPS, "default"}
    assert resources_for("illum_cp") == Resources(
        cpus=1, memory_mb=2048, time_min=240, max_memory_mb=8192
    )
    assert resources_for("cell_features").memory_mb > resources_for("illum_cp").memory_mb
    assert resources_for("cell_features").cpus == 2
    assert resources_for("some_new_step") == DEFAULTS["default"].to_pipecraft()


def test_overrides_change_only_what_they_name() -> None:
    table = step_table(
        {
            "segmentation": {"memory_mb": 8000, "queue": "bigmem", "account": "lab"},
            "default": {"time_min": 30},
        }
    )
    seg = resources_for("segmentation", table)
    assert (seg.cpus, seg.memory_mb, seg.queue, seg.account) == (2, 8000, "bigmem", "lab")
    # the default's retry head-room (4x) follows a larger first request
    assert seg.max_memory_mb == 32000
    assert resources_for("index", table) == resources_for("index")
    assert resources_for("whatever", table).time_min == 30
    assert DEFAULTS["segmentation"].memory_mb == 3072  # the defaults are untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"segmentaton": {"cpus": 2}}, "resources.segmentaton: unknown step; expected one of"),
        ({"index": {"gpus": 1}}, "resources.index: unknown field(s) gpus; expected some of"),
        ({"index": {"cpus": 0}}, "resources.index: Resources.cpus: got 0, expected an integer"),
        ({"index": 4}, "resources.index: got 4, expected an object of fields"),
        ({"index": {"memory_mb": 4096, "max_memory_mb": 100}}, "max_memory_mb: got 100"),
        ([1], "expected an object keyed by step name"),
    ],
)
def test_bad_overrides_name_the_step_and_field(overrides, message: str) -> None:
    with pytest.raises(UserError) as err:
        step_table(overrides)
    assert message in str(err.value)


def test_a_step_uses_the_cpus_its_job_is_given() -> None:
    from pipecraft.pipeline import as_dag
    from starrynight.pipelines import Runner, well_pipeline

    def workers(runner: Runner) -> dict[str, str]:
        dag = as_dag(well_pipeline("ws", "P1", "A1", runner))
        out = {}
        for node in dag:
            argv = list(node.argv)
            if "--workers" in argv:
                out[node.name.split("-", 1)[0]] = argv[argv.index("--workers") + 1]
        return out

    table = step_table({"cell_features": {"cpus": 8}})
    chosen = workers(Runner(resources=table))
    assert chosen["cell_features"] == "8" and chosen["segmentation"] == "2"
    # a project-wide --workers (backend_options.step_workers) wins over every row
    assert set(workers(Runner(resources=table, step_workers=1)).values()) == {"1"}
