"""QC gates: which gates a project holds, and every reviewer's decision.

Existing projects keep running through (no gates); Conductor turns both gates on for a
project it creates (``ProjectCreate.qc_gates``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("qc_gates", sa.JSON, nullable=False, server_default="[]"))
    op.create_table(
        "gate_decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "project_id",
            sa.Integer,
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("plate", sa.String(200), nullable=False),
        sa.Column("gate", sa.String(20), nullable=False),
        sa.Column("approved", sa.Boolean, nullable=False),
        sa.Column("decided_by", sa.String(100), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_gate_decisions_project_plate", "gate_decisions", ["project_id", "plate", "gate"]
    )


def downgrade() -> None:
    op.drop_index("ix_gate_decisions_project_plate", table_name="gate_decisions")
    op.drop_table("gate_decisions")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("qc_gates")
