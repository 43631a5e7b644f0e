"""ORM models: what Conductor keeps in its database (Dagster keeps run events itself)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now (stored as UTC)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes on every backend (SQLite drops the zone; UTC is restored)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of every Conductor table."""


class Project(Base):
    """A dataset, the workspace its outputs go to, and how to process it."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    dataset_uri: Mapped[str] = mapped_column(Text)
    workspace_uri: Mapped[str] = mapped_column(Text)
    experiment_type: Mapped[str] = mapped_column(String(20))
    grammar: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend: Mapped[str] = mapped_column(String(20), default="local")
    backend_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: QC gates held for a reviewer (``painting``, ``barcoding``); empty: none.
    qc_gates: Mapped[list[str]] = mapped_column(JSON, default=list)
    configured_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    runs: Mapped[list[Run]] = relationship(
        back_populates="project", cascade="all, delete-orphan", passive_deletes=True
    )


class Run(Base):
    """One launch request: a plan of Dagster runs executed in order by one launcher.

    ``status`` is a cache: while the run is active it is recomputed from Dagster's run
    storage on every read; once terminal it is frozen here.
    """

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    selection: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="QUEUED")
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    launcher_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    project: Mapped[Project] = relationship(back_populates="runs")


class GateDecision(Base):
    """One reviewer's approval or closing of a plate's QC gate (the audit trail; the
    workspace's gate file, :mod:`starrynight.gates`, is what Dagster reads)."""

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    plate: Mapped[str] = mapped_column(String(200))
    gate: Mapped[str] = mapped_column(String(20))
    approved: Mapped[bool] = mapped_column(Boolean)
    decided_by: Mapped[str] = mapped_column(String(100))
    comment: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
