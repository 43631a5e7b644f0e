"""Configuration of the service, read from the environment once per app.

Every knob is an environment variable so that the same image runs on a laptop (SQLite
under ``./.conductor``) and in a deployment (Postgres, tokens from a mounted file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from starrynight.errors import UserError

DEFAULT_BODY_LIMIT = 1_000_000


@dataclass(frozen=True)
class Token:
    """A bearer token: ``rw`` may change things, ``ro`` may only read."""

    name: str
    secret: str
    kind: Literal["rw", "ro"]


@dataclass(frozen=True)
class Settings:
    """What the service needs to know about its surroundings.

    Attributes
    ----------
    database_url : str
        SQLAlchemy URL; ``postgresql://`` URLs are driven by psycopg 3.
    data_dir : Path
        Conductor's own state: per-project Dagster instances and run records.
    tokens : tuple of Token
        Accepted bearer tokens.
    cors_origins : tuple of str
        Origins allowed to call the API from a browser (none by default).
    body_limit : int
        Largest request body in bytes.
    dagster_module : str
        ``module`` or ``module:attribute`` holding the Dagster ``Definitions``.
    dagster_yaml : Path or None
        Instance configuration copied into every project's ``DAGSTER_HOME``.
    allowed_roots : tuple of str
        Folders or ``s3://`` prefixes that datasets and workspaces must lie under
        (none: anywhere the service can reach).
    """

    database_url: str
    data_dir: Path
    tokens: tuple[Token, ...] = ()
    cors_origins: tuple[str, ...] = ()
    body_limit: int = DEFAULT_BODY_LIMIT
    dagster_module: str = "dagster_defs.definitions"
    dagster_yaml: Path | None = None
    allowed_roots: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: os.environ.get("CONDUCTOR_PYTHON", ""))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: the process environment).

        Raises
        ------
        UserError
            A malformed token list or body limit, naming the variable.
        """
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("STARRYNIGHT_DATA_DIR", "./.conductor")).expanduser().absolute()
        url = env.get("STARRYNIGHT_DATABASE_URL") or f"sqlite:///{data_dir / 'conductor.db'}"
        tokens = parse_tokens(env.get("CONDUCTOR_TOKENS", ""), "CONDUCTOR_TOKENS")
        token_file = env.get("CONDUCTOR_TOKENS_FILE")
        if token_file:
            try:
                text = Path(token_file).read_text()
            except OSError as exc:
                raise UserError(f"CONDUCTOR_TOKENS_FILE={token_file}: {exc.strerror}") from exc
            tokens += parse_tokens(text, token_file)
        origins = tuple(o.strip() for o in env.get("CONDUCTOR_CORS_ORIGINS", "").split(",") if o)
        if "*" in origins:
            raise UserError("CONDUCTOR_CORS_ORIGINS: '*' is not allowed; list the origins")
        limit_text = env.get("CONDUCTOR_BODY_LIMIT", str(DEFAULT_BODY_LIMIT))
        if not limit_text.isdigit() or int(limit_text) < 1024:
            raise UserError(f"CONDUCTOR_BODY_LIMIT={limit_text}: expected bytes, at least 1024")
        yaml = env.get("CONDUCTOR_DAGSTER_YAML")
        return cls(
            database_url=normalise_database_url(url),
            data_dir=data_dir,
            tokens=tokens,
            cors_origins=origins,
            body_limit=int(limit_text),
            dagster_module=env.get("STARRYNIGHT_DAGSTER_MODULE", "dagster_defs.definitions"),
            dagster_yaml=Path(yaml) if yaml else None,
            python=env.get("CONDUCTOR_PYTHON", ""),
            allowed_roots=tuple(
                r.strip().rstrip("/")
                for r in env.get("CONDUCTOR_ALLOWED_ROOTS", "").split(",")
                if r.strip()
            ),
        )


def normalise_database_url(url: str) -> str:
    """Make ``postgresql://`` and ``postgres://`` URLs use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def parse_tokens(text: str, where: str) -> tuple[Token, ...]:
    """Parse ``name:secret:rw`` entries separated by commas or new lines.

    Blank entries and lines starting with ``#`` are ignored.

    Raises
    ------
    UserError
        An entry that is not ``name:secret:rw|ro``, or a secret shorter than 16 characters.
    """
    tokens = []
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":")
        if len(parts) != 3 or parts[2] not in ("rw", "ro") or not parts[0]:
            name = parts[0] if parts else entry
            raise UserError(f"{where}: token entry {name!r}: expected name:secret:rw or ...:ro")
        if len(parts[1]) < 16:
            raise UserError(f"{where}: token {parts[0]!r}: secret must be at least 16 characters")
        tokens.append(Token(parts[0], parts[1], parts[2]))  # type: ignore[arg-type]
    return tuple(tokens)
