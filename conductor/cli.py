"""The ``conductor`` command line: ``serve``, ``db upgrade``, ``project`` and ``token``."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import click

from conductor.settings import Settings
from starrynight.cli.main import run_group
from starrynight.errors import UserError


def _log_config(level: str) -> dict:
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "conductor.middleware.JsonFormatter"}},
        "handlers": {"default": handler},
        "loggers": {
            "conductor": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "alembic": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        },
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Conductor: the REST service that keeps StarryNight projects and runs."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port.")  # fmt: skip
@click.option("--workers", default=min(4, os.cpu_count() or 1), show_default="CPUs, at most 4",
              type=click.IntRange(1, 64), help="Worker processes.")  # fmt: skip
@click.option("--upgrade-db/--no-upgrade-db", default=False, show_default=True,
              help="Apply database migrations before serving (always done for the "
              "embedded SQLite database).")  # fmt: skip
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Level of the JSON logs on stderr (info logs every request).")  # fmt: skip
def serve(host: str, port: int, workers: int, upgrade_db: bool, log_level: str) -> None:
    """Serve the API (OpenAPI at /docs) until SIGINT/SIGTERM, then finish open requests."""
    import uvicorn

    from conductor import db

    settings = Settings.from_env()  # configuration mistakes stop here, before binding
    if upgrade_db or db.is_embedded(settings.database_url):
        _upgrade(settings, "head")
    if not settings.tokens:
        click.echo("warning: no tokens configured (CONDUCTOR_TOKENS); every API call "
                   "but /health will get 401", err=True)  # fmt: skip
    uvicorn.run(
        "conductor.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=_log_config(log_level.upper()),
        access_log=False,
        timeout_graceful_shutdown=30,
    )


@cli.group()
def db() -> None:
    """The Conductor database (STARRYNIGHT_DATABASE_URL; SQLite under the data dir)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Apply the migrations (safe to repeat)."""
    settings = Settings.from_env()
    _upgrade(settings, revision)
    click.echo(f"database {_where(settings)} at revision {revision}")


def _where(settings: Settings) -> str:
    # Host and database only: the part before '@' may hold a password.
    return settings.database_url.split("@")[-1]


def _database_error(settings: Settings, exc: Exception, hint: str = "") -> UserError:
    reason = str(getattr(exc, "orig", None) or exc).strip()
    line = reason.splitlines()[0][:200] if reason else type(exc).__name__
    return UserError(f"database {_where(settings)}: {line}{hint}")


def _upgrade(settings: Settings, revision: str) -> None:
    """Apply the migrations; a database that refuses is one line, not a traceback.

    No retry: under a supervisor (systemd, Kubernetes) the non-zero exit is retried with
    its back-off, and by hand the line says what to fix.
    """
    from sqlalchemy import exc as sa_exc

    from conductor import db as db_mod

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        db_mod.upgrade(settings.database_url, revision)
    except sa_exc.DBAPIError as exc:
        raise _database_error(settings, exc) from None


@contextmanager
def _session(settings: Settings) -> Iterator:
    """A database session outside the server; an unreachable database is one line."""
    from sqlalchemy import exc as sa_exc

    from conductor import db as db_mod

    engine = db_mod.make_engine(settings.database_url)
    try:
        with db_mod.make_sessionmaker(engine)() as session:
            yield session
    except sa_exc.DBAPIError as exc:
        raise _database_error(settings, exc, " (run `conductor db upgrade`?)") from None
    finally:
        engine.dispose()


def _location(value: str) -> str:
    return value if value.startswith("s3://") else os.path.abspath(value)


@cli.group()
def project() -> None:
    """Projects, without the server (the same database as ``conductor serve``)."""


@project.command("add")
@click.argument("name")
@click.option("--dataset", "-d", required=True, help="Dataset root (folder or s3://).")
@click.option("--workspace", "-w", required=True, help="Where outputs go (folder or s3://).")
@click.option("--experiment-type", type=click.Choice(["ops", "cellpainting"]), default="ops",
              show_default=True)  # fmt: skip
@click.option("--dagster-home", type=click.Path(exists=True, file_okay=False),
              help="Adopt this existing Dagster instance (e.g. the one `make demo` filled) "
              "instead of starting an empty one.")  # fmt: skip
@click.option("--replace", is_flag=True, help="Forget a project of the same name first.")
@click.option("--gates", default="painting,barcoding", show_default=True,
              help="QC gates a reviewer approves per plate before what follows runs "
              "(comma list, or 'none' to run through).")  # fmt: skip
def project_add(
    name: str,
    dataset: str,
    workspace: str,
    experiment_type: str,
    dagster_home: str | None,
    replace: bool,
    gates: str,
) -> None:
    """Register a project; print its id and Dagster instance folder.

    With ``--dagster-home`` the project's instance folder becomes a link to that
    instance, so Canvas and the API show the runs and partitions already in it; a
    workspace that already holds an index and an experiment counts as configured.
    """
    from pydantic import ValidationError
    from sqlalchemy import select

    from conductor.errors import ServiceError
    from conductor.models import Project
    from conductor.projects import add_project, remove_project
    from conductor.runs.instances import instance_dir
    from conductor.schemas import ProjectCreate
    from starrynight import storage
    from starrynight import workspace as ws_names

    settings = Settings.from_env()
    try:
        body = ProjectCreate(
            name=name,
            dataset_uri=_location(dataset),
            workspace_uri=_location(workspace),
            experiment_type=experiment_type,
            qc_gates=[] if gates.strip() == "none" else [g.strip() for g in gates.split(",")],
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "project"
        raise UserError(f"{where}: {first['msg']}") from None
    with _session(settings) as session:
        try:
            old = session.scalar(select(Project).where(Project.name == body.name))
            if old is not None and replace:
                remove_project(settings, session, old)
            created = add_project(settings, session, body)
        except ServiceError as exc:
            raise UserError(exc.detail) from None
        home = instance_dir(settings, created.id)
        if dagster_home:
            _adopt_instance(home, dagster_home)
            ws = body.workspace_uri
            if storage.exists(ws_names.index_path(ws)) and storage.exists(
                ws_names.experiment_path(ws)
            ):
                created.configured_at = datetime.now(UTC)
                session.commit()
        state = "configured" if created.configured_at else "not configured"
        click.echo(f"project {created.id} {created.name} ({state})")
        click.echo(f"dagster home: {os.path.realpath(home)}")


def _adopt_instance(home: Path, dagster_home: str) -> None:
    """Make the project's instance folder ``home`` a link to ``dagster_home``."""
    home.parent.mkdir(parents=True, exist_ok=True)
    # A leftover of an earlier project with the same id (SQLite reuses ids).
    if home.is_symlink():
        home.unlink()
    elif home.exists():
        shutil.rmtree(home)
    home.symlink_to(os.path.abspath(dagster_home), target_is_directory=True)


@project.command("list")
def project_list() -> None:
    """One line per project: id, name, configured or not, dataset, workspace."""
    from sqlalchemy import select

    from conductor.models import Project

    settings = Settings.from_env()
    with _session(settings) as session:
        for p in session.scalars(select(Project).order_by(Project.id)):
            state = "configured" if p.configured_at else "not-configured"
            click.echo(f"{p.id}\t{p.name}\t{state}\t{p.dataset_uri}\t{p.workspace_uri}")


@cli.group()
def token() -> None:
    """Bearer tokens."""


@token.command("new")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="Make a ro token (reads only).")
def token_new(name: str, read_only: bool) -> None:
    """Print a new ``name:secret:kind`` entry to add to CONDUCTOR_TOKENS."""
    if not name.isidentifier():
        raise UserError(f"name {name!r}: expected letters, digits and _")
    click.echo(f"{name}:{secrets.token_urlsafe(32)}:{'ro' if read_only else 'rw'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``conductor`` console script."""
    run_group(cli, argv)
