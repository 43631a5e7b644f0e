"""``conductor project add/list``: register a project without the server (both databases)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from conductor import runs
from conductor.app import create_app
from conductor.cli import main
from conductor.settings import Settings
from starrynight import workspace
from tests.conductor.conftest import RW


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI reads the same database and data dir as the app fixture."""
    monkeypatch.setenv("STARRYNIGHT_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("STARRYNIGHT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STARRYNIGHT_DAGSTER_MODULE", settings.dagster_module)
    return settings


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@dg.asset
def _one() -> int:
    return 1


def _filled_instance(home: Path) -> str:
    """A Dagster instance in ``home`` with one successful run; returns the run id."""
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize([_one], instance=instance)
    return result.run_id


def _configure_workspace(ws: Path) -> None:
    # What the graph's index and experiment assets leave behind.
    for path in (workspace.index_path(str(ws)), workspace.experiment_path(str(ws))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({}))


def test_add_adopts_an_instance_and_replace_swaps_it(
    env: Settings, dataset: Path, tmp_path: Path, capsys
) -> None:
    home = tmp_path / "dagster_home"
    run_id = _filled_instance(home)
    ws = tmp_path / "ws"
    _configure_workspace(ws)
    args = ["project", "add", "demo", "-d", str(dataset), "-w", str(ws)]

    code, out, err = _cli([*args, "--dagster-home", str(home)], capsys)
    assert code == 0, err
    first_line, home_line = out.strip().splitlines()
    assert first_line == "project 1 demo (configured)"
    assert home_line == f"dagster home: {home.resolve()}"
    link = runs.instance_dir(env, 1)
    assert link.is_symlink() and link.resolve() == home.resolve()
    # Conductor sees the runs already in the adopted instance.
    assert runs.instance(env, 1).get_run_by_id(run_id) is not None

    code, _, err = _cli([*args, "--dagster-home", str(home)], capsys)
    assert code == 2
    assert err.strip() == "error: name: a project named 'demo' already exists"

    code, out, err = _cli([*args, "--dagster-home", str(home), "--replace"], capsys)
    assert code == 0, err
    new_id = int(out.split()[1])
    assert not runs.instance_dir(env, 1).is_symlink() or new_id == 1
    assert runs.instance_dir(env, new_id).resolve() == home.resolve()

    code, out, _ = _cli(["project", "list"], capsys)
    assert code == 0
    assert out.strip().splitlines() == [f"{new_id}\tdemo\tconfigured\t{dataset}\t{ws}"]

    # Deleting the project forgets the link, never the adopted instance.
    with TestClient(create_app(env), headers={"Authorization": f"Bearer {RW}"}) as client:
        assert client.delete(f"/api/v1/projects/{new_id}").status_code == 204
    assert not runs.instance_dir(env, new_id).exists()
    assert not runs.instance_dir(env, new_id).is_symlink()
    assert (home / "dagster.yaml").exists()


def test_add_without_instance_is_not_configured(
    env: Settings, dataset: Path, tmp_path: Path, capsys
) -> None:
    code, out, err = _cli(
        ["project", "add", "p1", "-d", str(dataset), "-w", str(tmp_path / "ws")], capsys
    )
    assert code == 0, err
    assert out.splitlines()[0] == "project 1 p1 (not configured)"
    assert not runs.instance_dir(env, 1).is_symlink()


@pytest.mark.parametrize(
    ("name", "dataset_arg", "message"),
    [
        ("bad name", None, "error: name: String should match pattern"),
        ("p1", "/no/such/dataset", "error: dataset_uri: /no/such/dataset: no such folder"),
    ],
)
def test_add_bad_input_is_one_line(
    env: Settings, dataset: Path, tmp_path: Path, capsys, name, dataset_arg, message
) -> None:
    args = ["project", "add", name, "-d", dataset_arg or str(dataset), "-w", str(tmp_path / "w")]
    code, out, err = _cli(args, capsys)
    assert code == 2
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_unmigrated_database_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STARRYNIGHT_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("STARRYNIGHT_DATA_DIR", str(tmp_path / "data"))
    code, _, err = _cli(["project", "list"], capsys)
    assert code == 2
    assert "no such table: projects" in err
    assert "conductor db upgrade" in err
    assert len(err.strip().splitlines()) == 1


def test_unreachable_postgres_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STARRYNIGHT_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nodb")
    monkeypatch.setenv("STARRYNIGHT_DATA_DIR", str(tmp_path / "data"))
    code, _, err = _cli(["project", "list"], capsys)
    assert code == 2
    assert err.startswith("error: database 127.0.0.1:1/nodb:")
    assert len(err.strip().splitlines()) == 1
