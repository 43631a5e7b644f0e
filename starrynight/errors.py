"""Errors that mean "the user asked for something that cannot be done".

Every entry point (CLI, Dagster asset, REST API) turns a :class:`UserError` into one
clear line (CLI: ``error: ...`` and a non-zero exit; API: a 4xx JSON body). Anything
else escaping is a bug and is allowed to show its traceback.
"""

from __future__ import annotations

import errno


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

    def __reduce__(self) -> tuple:
        # Rebuilt from both fields, so it crosses a process boundary intact.
        return (type(self), (self.path, self.problem))


#: errno values that say the environment refuses a path (not that our code is wrong).
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
    }
)


def environment_error(exc: BaseException) -> UserError | None:
    """The :class:`UserError` for an ``OSError`` about a path the environment refuses.

    A folder one may not write to, a read-only or full disk, a file where a folder
    should be: the user must change something, so they get one line naming the path
    rather than a traceback. Returns ``None`` for anything else (a bug shows its
    traceback). Storage already says this better for its own writes; this is the
    backstop for a library that opens a path itself.
    """
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS and exc.filename:
        return UserError(f"{exc.filename}: {(exc.strerror or str(exc)).lower()}")
    return None
