"""Alembic migrations of the Conductor database (``conductor db upgrade``)."""
