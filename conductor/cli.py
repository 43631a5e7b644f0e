"""The ``conductor`` command line: ``serve`` and ``db upgrade``."""

from __future__ import annotations

import logging
import secrets

import click

from conductor.settings import Settings
from starrynight.cli.main import run_group
from starrynight.errors import UserError


def _log_config(level: str) -> dict:
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "conductor.app.JsonFormatter"}},
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
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes.")  # fmt: skip
@click.option("--upgrade-db/--no-upgrade-db", default=False, show_default=True,
              help="Apply database migrations before serving.")  # fmt: skip
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Level of the JSON logs on stderr (info logs every request).")  # fmt: skip
def serve(host: str, port: int, workers: int, upgrade_db: bool, log_level: str) -> None:
    """Serve the API (OpenAPI at /docs) until SIGINT/SIGTERM, then finish open requests."""
    import uvicorn

    from conductor import db

    settings = Settings.from_env()  # configuration mistakes stop here, before binding
    if upgrade_db:
        db.upgrade(settings.database_url)
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
    from conductor import db as db_mod

    settings = Settings.from_env()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db_mod.upgrade(settings.database_url, revision)
    url = settings.database_url.split("@")[-1]
    click.echo(f"database {url} at revision {revision}")


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
