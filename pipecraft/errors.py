"""Errors raised by pipecraft before anything runs.

Pipecraft imports nothing from the packages above it, so it has its own error types;
callers (the ``starrynight`` CLI, Dagster assets) turn them into their own user errors.
Both derive from :class:`ValueError` so generic handlers still see a bad value.
"""

from __future__ import annotations


class PipecraftError(ValueError):
    """Base class of every error pipecraft raises on purpose."""


class PipelineError(PipecraftError):
    """A pipeline is malformed: cycle, duplicate name or output, missing input...

    The message names the nodes and paths involved, in one line.
    """


class BackendConfigError(PipecraftError):
    """A backend is configured in a way that cannot run the pipeline."""
