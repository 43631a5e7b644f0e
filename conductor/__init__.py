"""Conductor: the REST service that keeps projects and runs and drives Dagster."""
