"""Errors that mean "the user asked for something that cannot be done".

Every entry point (CLI, Dagster asset, REST API) turns a :class:`UserError` into one
clear line (CLI: ``error: ...`` and a non-zero exit; API: a 4xx JSON body). Anything
else escaping is a bug and is allowed to show its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input: a path, a file, an option or a value.

    The message must name the offending file, field or value and say what was
    expected, in one line.
    """


class InputFileError(UserError):
    """An input file exists but cannot be used (corrupt, truncated, wrong shape...)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
