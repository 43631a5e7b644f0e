"""Files of a project's workspace: listing, download and PNG previews, inside it only.

A requested path is relative to the workspace. Absolute paths, ``..`` components, NUL
bytes and (on local workspaces) symbolic links that resolve outside the workspace are
refused, so no request can read anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

from conductor.errors import NotFound
from starrynight import storage
from starrynight.errors import UserError

MAX_LIST = 10_000
NAME_MAX = 255  # bytes in one path component on every local file system in use
MAX_PREVIEW = 20_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def clean_relative(path: str) -> str:
    """Validate a workspace-relative path and return it normalised (``a/b``, or ``""``).

    Raises
    ------
    UserError
        Absolute path, ``..``, backslash, NUL byte, or a component longer than
        :data:`NAME_MAX` bytes (no workspace product can have such a name: outputs are
        written under the same names on local disks and on S3).
    """
    if "\x00" in path or "\\" in path:
        raise UserError(f"path {path!r}: NUL bytes and backslashes are not allowed")
    if path.startswith("/") or "://" in path or (len(path) > 1 and path[1] == ":"):
        raise UserError(f"path {path!r}: must be relative to the workspace, not absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"path {path!r}: '..' is not allowed")
    for part in parts:
        if len(part.encode()) > NAME_MAX:
            raise UserError(f"path {_shown(path)}: a component is longer than {NAME_MAX} bytes")
    return "/".join(parts)


def _shown(path: str) -> str:
    # Echo a long path shortened: the message must stay one readable line.
    return repr(path if len(path) <= 120 else path[:60] + "..." + path[-40:])


def _too_long(rel: str) -> UserError:
    # The whole path (workspace + request) exceeds the file system's limit.
    return UserError(f"path {_shown(rel)}: too long for the workspace's file system")


def _path_max(root: Path) -> int:
    try:
        return os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096


def _local_inside(workspace: str, rel: str) -> Path:
    root = Path(os.path.realpath(workspace))
    target = Path(os.path.realpath(root / rel)) if rel else root
    if len(os.fsencode(target)) >= _path_max(root):
        raise _too_long(rel)
    if target != root and root not in target.parents:
        raise UserError(f"path {rel!r}: resolves outside the workspace (symbolic link)")
    return target


def resolve(workspace: str, path: str) -> str:
    """The URI of ``path`` inside ``workspace``, after every safety check."""
    rel = clean_relative(path)
    if storage.is_s3(workspace):
        return storage.join(workspace, rel) if rel else workspace
    return str(_local_inside(workspace, rel))


def list_files(workspace: str, prefix: str) -> tuple[list[dict], bool]:
    """Files under ``prefix`` (recursive), at most :data:`MAX_LIST`; and whether truncated."""
    rel = clean_relative(prefix)
    if storage.is_s3(workspace):
        return _list_s3(workspace, rel)
    return _list_local(workspace, rel)


def _list_s3(workspace: str, rel: str) -> tuple[list[dict], bool]:
    out: list[dict] = []
    base = storage.join(workspace, rel) if rel else workspace
    if not storage.exists(base):
        return [], False
    for entry in storage.list_files(base):
        if len(out) >= MAX_LIST:
            return out, True
        key = f"{rel}/{entry.key}" if rel else entry.key
        out.append({"path": key, "size": entry.size, "modified_ns": entry.mtime_ns})
    return out, False


def _list_local(workspace: str, rel: str) -> tuple[list[dict], bool]:
    out: list[dict] = []
    root = Path(os.path.realpath(workspace))
    base = _local_inside(workspace, rel)
    if not base.exists():
        return [], False
    if base.is_file():
        st = base.stat()
        return [{"path": rel, "size": st.st_size, "modified_ns": st.st_mtime_ns}], False
    for folder, dirs, names in os.walk(base, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            full = Path(folder) / name
            real = Path(os.path.realpath(full))
            if root not in real.parents or not real.is_file():
                continue  # a link out of the workspace, or dangling: not listed
            if len(out) >= MAX_LIST:
                return out, True
            st = real.stat()
            out.append(
                {
                    "path": full.relative_to(root).as_posix(),
                    "size": st.st_size,
                    "modified_ns": st.st_mtime_ns,
                }
            )
    return out, False


def require_file(workspace: str, path: str) -> str:
    """:func:`resolve` and check that a regular file is there.

    Raises
    ------
    NotFound
        Nothing (or a folder) at ``path``.
    """
    uri = resolve(workspace, path)
    if storage.is_s3(uri):
        found = storage.exists(uri) and not storage.is_dir(uri)
    else:
        found = Path(uri).is_file()
    if not found:
        raise NotFound(f"path {path!r}: no such file in the workspace")
    return uri


def read_png(workspace: str, path: str) -> bytes:
    """The bytes of a PNG file of the workspace, for previews.

    Raises
    ------
    NotFound
        No such file.
    UserError
        Not a ``.png`` name, too large, or not PNG content.
    """
    uri = require_file(workspace, path)
    if not path.lower().endswith(".png"):
        raise UserError(f"path {path!r}: previews are for .png files only")
    if not storage.is_s3(uri) and Path(uri).stat().st_size > MAX_PREVIEW:
        raise UserError(f"path {path!r}: larger than {MAX_PREVIEW} bytes; download it instead")
    data = storage.read_bytes(uri)
    if not data.startswith(PNG_MAGIC):
        raise UserError(f"path {path!r}: not PNG content")
    return data
