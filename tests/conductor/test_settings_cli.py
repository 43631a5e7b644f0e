"""Settings from the environment and the ``conductor`` command line (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from conductor.cli import main
from conductor.settings import Settings, normalise_database_url, parse_tokens
from starrynight.errors import UserError


def test_tokens_from_env_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# lab tokens\ncarol:cccccccccccccccc:ro\n")
    settings = Settings.from_env(
        {
            "CONDUCTOR_TOKENS": "alice:aaaaaaaaaaaaaaaa:rw",
            "CONDUCTOR_TOKENS_FILE": str(token_file),
            "STARRYNIGHT_DATA_DIR": str(tmp_path / "d"),
        }
    )
    assert [(t.name, t.kind) for t in settings.tokens] == [("alice", "rw"), ("carol", "ro")]
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'conductor.db'}"
    assert settings.cors_origins == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice:short:rw", "at least 16"),
        ("alice:aaaaaaaaaaaaaaaa:admin", "expected name:secret:rw"),
        ("alice", "expected name:secret:rw"),
    ],
)
def test_bad_tokens(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_tokens(text, "CONDUCTOR_TOKENS")


def test_cors_star_and_body_limit_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="CORS"):
        Settings.from_env({"CONDUCTOR_CORS_ORIGINS": "*"})
    with pytest.raises(UserError, match="CONDUCTOR_BODY_LIMIT=abc"):
        Settings.from_env({"CONDUCTOR_BODY_LIMIT": "abc"})


def test_postgres_url_uses_psycopg3() -> None:
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_db_upgrade_command_is_idempotent(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.setenv("STARRYNIGHT_DATABASE_URL", url)
    for _ in range(2):
        main(["db", "upgrade"])
    assert "revision head" in capsys.readouterr().out
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"projects", "runs", "alembic_version"} <= tables


def test_cli_user_error_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CONDUCTOR_TOKENS", "broken")
    with pytest.raises(SystemExit) as exc:
        main(["db", "upgrade"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CONDUCTOR_TOKENS: token entry 'broken'")
    assert len(err.strip().splitlines()) == 1


def test_token_new(capsys) -> None:
    main(["token", "new", "dana", "--read-only"])
    name, secret, kind = capsys.readouterr().out.strip().split(":")
    assert (name, kind) == ("dana", "ro")
    assert len(secret) >= 32
