"""The one place where starrynight touches files: local folders and ``s3://`` alike.

Everything is addressed by a URI string: a local path (``/data/ds``, ``data/ds``) or
``s3://bucket/prefix``. pyarrow's filesystems do the work; S3 honours the usual AWS
environment (credentials, ``AWS_REGION``) and an endpoint override from
``STARRYNIGHT_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL`` (MinIO, moto, ...).

Writes are atomic: data goes to a temporary name next to the target and is renamed
into place (local), or is uploaded in one PUT / completed multipart upload (S3), so a
killed run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG as stat_is_file
from typing import Any

import pyarrow.fs as pafs

from starrynight.errors import UserError

S3_PREFIX = "s3://"


@dataclass(frozen=True)
class FileEntry:
    """One file found by :func:`list_files`.

    Attributes
    ----------
    key : str
        Path relative to the listed root, ``/``-separated.
    size : int
        Size in bytes.
    mtime_ns : int
        Modification time, nanoseconds since the epoch (0 when unknown).
    """

    key: str
    size: int
    mtime_ns: int


def is_s3(uri: str) -> bool:
    """Return True when ``uri`` names an S3 location."""
    return str(uri).startswith(S3_PREFIX)


def _s3_filesystem(region: str | None = None) -> pafs.S3FileSystem:
    endpoint = os.environ.get("STARRYNIGHT_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, object] = {}
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        kwargs["endpoint_override"] = rest or endpoint
        kwargs["scheme"] = scheme if rest else "https"
    kwargs["region"] = (
        region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    )
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Resolve ``uri`` to a pyarrow filesystem and the path inside it.

    Parameters
    ----------
    uri : str
        Local path or ``s3://bucket/key``.

    Returns
    -------
    tuple of (pyarrow.fs.FileSystem, str)
        The filesystem and the path to pass to it (``bucket/key`` for S3, an
        absolute path for local files).
    """
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), uri[len(S3_PREFIX) :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def join(uri: str, *parts: str) -> str:
    """Join path components onto a local path or S3 URI with ``/``."""
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


def exists(uri: str) -> bool:
    """Return True when a file or directory exists at ``uri``."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    """Return True when ``uri`` is a directory (or a non-empty S3 prefix)."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    """Read a whole file.

    Raises
    ------
    UserError
        When the file does not exist or cannot be read.
    """
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise UserError(f"{uri}: file not found") from exc
    except OSError as exc:
        raise UserError(f"{uri}: cannot read ({_short(exc)})") from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically (temporary name, then rename)."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        # A single S3 PUT (or a completed multipart upload) is atomic: readers see
        # the old object or the new one, never a partial one.
        try:
            with fs.open_output_stream(path) as f:
                f.write(data)
        except OSError as exc:
            raise UserError(f"{uri}: cannot write it ({_short(exc)})") from exc
        return
    with atomic_local_path(uri) as tmp:
        Path(tmp).write_bytes(data)


#: S3 error codes of a conditional create that found the key taken.
_CREATE_LOST = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def create_bytes(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` only if nothing is there yet: a conditional create.

    Records that must never be overwritten (one per event, e.g. a gate decision) are
    written with it, so that concurrent writers need no lock and no read-modify-write.
    S3: ``PutObject`` with ``If-None-Match: *`` (the service refuses it with 412 when the
    key exists). Local: the temporary file is hard-linked to ``uri``, which fails when
    ``uri`` exists; the content appears whole or not at all.

    Returns
    -------
    bool
        True when written, False when ``uri`` already existed (it is left untouched).

    Raises
    ------
    UserError
        When the write fails for another reason.
    """
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            # 412: the key exists; 409: a concurrent create of the same key won.
            if exc.response.get("Error", {}).get("Code") in _CREATE_LOST:
                return False
            raise UserError(f"{uri}: cannot write it ({_short(exc)})") from exc
        except BotoCoreError as exc:
            raise UserError(f"{uri}: cannot write it ({_short(exc)})") from exc
        return True
    target = Path(uri).expanduser()
    _make_folder(target.parent, uri)
    tmp = target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_bytes(data)
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as exc:
        raise write_error(uri, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


@contextlib.contextmanager
def atomic_local_path(uri: str, suffix: str = "") -> Iterator[str]:
    """Yield a local temporary path; on success its content is moved to ``uri``.

    For libraries that insist on writing to a path themselves (tifffile, numpy,
    parquet). Local targets are renamed into place (same folder, so the rename is
    atomic); S3 targets are uploaded after the block succeeds. On error the temporary
    file is removed and ``uri`` is untouched.

    Parameters
    ----------
    uri : str
        Final destination.
    suffix : str, optional
        Suffix for the temporary name (some writers pick a format by extension).
    """
    if is_s3(uri):
        fd, tmp = tempfile.mkstemp(suffix=suffix or Path(uri).suffix)
        os.close(fd)
        try:
            yield tmp
            fs, path = filesystem(uri)
            try:
                with open(tmp, "rb") as src, fs.open_output_stream(path) as dst:
                    shutil.copyfileobj(src, dst, length=8 << 20)
            except OSError as exc:
                raise UserError(f"{uri}: cannot write it ({_short(exc)})") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    target = Path(uri).expanduser()
    _make_folder(target.parent, uri)
    # The writer's pid in the name lets clean_temporary tell a dead writer's leftovers
    # from a live writer's file.
    tmp = target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        # Created here, so that a folder we may not write to is one clear error now
        # rather than a traceback from whichever library writes the file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise write_error(uri, exc) from exc
    try:
        try:
            yield str(tmp)
        except OSError as exc:
            # The writer's own failures on the temporary file (disk full, the
            # filesystem turned read-only); anything else is not about this write.
            if exc.errno in _FULL or exc.filename in (str(tmp), tmp):
                raise write_error(uri, exc) from exc
            raise
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise write_error(uri, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


#: errno values meaning "the device has no room for this write".
_FULL = {errno.ENOSPC, errno.EDQUOT}


def write_error(uri: str, exc: OSError, what: str = "write it") -> UserError:
    """One line saying why ``uri`` cannot be written, from the ``OSError`` that said so.

    Names the path that is a file where a folder is needed, or the folder that may
    not be written to, rather than the temporary file an atomic write was using.

    Parameters
    ----------
    uri : str
        What was to be written (a file, or a folder for ``what="create the folder"``).
    exc : OSError
        The operating system's refusal.
    what : str
        The verb phrase of the message: ``<uri>: cannot <what> (<why>)``.
    """
    target = Path(uri).expanduser()
    if exc.errno in _FULL:
        why = "no space left on the device"
    elif exc.errno == errno.EROFS:
        why = "read-only file system"
    elif blocker := next((p for p in _folders_of(target, what) if p.is_file()), None):
        why = f"{blocker} is a file, expected a folder"
    elif exc.errno == errno.EISDIR or (what == "write it" and target.is_dir()):
        return UserError(f"{uri}: is a folder, expected a file")
    elif exc.errno in (errno.EACCES, errno.EPERM):
        folder = next((p for p in target.parents if p.exists()), target.parent)
        why = f"permission denied in {folder}"
    else:
        why = exc.strerror or _short(exc)
    return UserError(f"{uri}: cannot {what} ({why})")


def _folders_of(target: Path, what: str) -> tuple[Path, ...]:
    """The paths that must be folders for the operation: the target itself when it is
    a folder being created, and its parents."""
    return (target, *target.parents) if what == "create the folder" else tuple(target.parents)


def _make_folder(folder: Path, uri: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(uri, exc) from exc


def makedirs(uri: str) -> None:
    """Create a directory and its parents (no-op on S3, where prefixes are implicit)."""
    if not is_s3(uri):
        folder = Path(uri).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(uri, exc, "create the folder") from exc


def remove_tree(uri: str) -> None:
    """Delete a directory tree (or S3 prefix) if it exists."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


@dataclass
class ListingBatch:
    """A batch of files found by :func:`list_batches`, as parallel columns.

    Attributes
    ----------
    folders, names : list of str
        Each file's folder (relative to the listed root, ``/``-separated, ``""`` for
        the root itself) and name; the key is ``folder/name``.
    sizes : list of int
        Sizes in bytes.
    mtimes_ns : list of int
        Modification times, nanoseconds since the epoch (0 when unknown).
    dangling : list of str
        Keys of symbolic links found in these folders whose target does not exist
        (not files: they are not in the other columns, but a caller must not lose them).
    """

    folders: list[str]
    names: list[str]
    sizes: list[int]
    mtimes_ns: list[int]
    dangling: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def keys(self) -> list[str]:
        """Keys relative to the listed root."""
        return [f"{f}/{n}" if f else n for f, n in zip(self.folders, self.names, strict=True)]


def list_files(uri: str) -> Iterator[FileEntry]:
    """Stream every file below ``uri``, recursively.

    Temporary files left by an interrupted atomic write (``.*.tmp*``) are skipped.

    Parameters
    ----------
    uri : str
        Root directory or S3 prefix.

    Yields
    ------
    FileEntry
        One entry per file, key relative to ``uri``.

    Raises
    ------
    UserError
        When ``uri`` does not exist or is not a directory (S3: the bucket does not
        exist or cannot be listed).
    """
    for batch in list_batches(uri):
        for key, size, mtime in zip(batch.keys(), batch.sizes, batch.mtimes_ns, strict=True):
            yield FileEntry(key, size, mtime)


def list_batches(uri: str, batch_size: int = 65536, prefix: str = "") -> Iterator[ListingBatch]:
    """Stream the files below ``uri`` in batches of about ``batch_size``.

    The fast path for big listings: no per-file object, and each file's folder and
    name come separately (the inventory stores both).

    Parameters
    ----------
    uri : str
        Root directory or S3 prefix; keys are relative to it.
    batch_size : int
        Files per batch (the last one may be smaller).
    prefix : str, optional
        Only list below this sub-folder of ``uri`` (``a/b``); keys stay relative to
        ``uri``.

    Raises
    ------
    UserError
        When ``uri`` (or ``uri/prefix``) does not exist, is a file, cannot be read,
        or (S3) the bucket does not exist.
    """
    prefix = prefix.strip("/")
    if is_s3(uri):
        yield from _list_s3(uri, batch_size, prefix)
    else:
        yield from _list_local(Path(uri).expanduser(), batch_size, prefix)


def folder_mtime_ns(uri: str) -> int | None:
    """When a local folder's entries last changed (a file added, removed or renamed).

    One ``stat``: how a watcher tells that a folder needs listing again without listing
    it. ``None`` on S3 (prefixes have no such time) or when the folder does not exist.
    """
    if is_s3(uri):
        return None
    try:
        return os.stat(Path(uri).expanduser()).st_mtime_ns
    except OSError:
        return None


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate sub-folders of ``uri`` (S3: common prefixes), sorted.

    Returns an empty list when ``uri`` does not exist.
    """
    if not is_s3(uri):
        root = Path(uri).expanduser()
        try:
            with os.scandir(root) as it:
                return sorted(e.name for e in it if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PermissionError as exc:
            raise UserError(f"{root}: permission denied") from exc
    bucket, key = _split_s3(uri)
    client = s3_client()
    prefix = f"{key}/" if key else ""
    names: list[str] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                names.append(cp["Prefix"][len(prefix) :].rstrip("/"))
    except Exception as exc:
        raise _s3_error(uri, exc) from exc
    return sorted(names)


def _list_local(root: Path, batch_size: int, prefix: str) -> Iterator[ListingBatch]:
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: is a file, expected a folder")
    start = root / prefix if prefix else root
    if prefix and not start.is_dir():
        raise UserError(f"{start}: no such folder")
    folders: list[str] = []
    names: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    # os.scandir hands back each directory's entries with their type, so only files
    # need a stat (for size and mtime). Listing through an open directory descriptor
    # makes each stat an fstatat() relative to it: the kernel does not walk the whole
    # path again for every file (a quarter less time than stat on full paths).
    dangling: list[str] = []
    stack = [(str(start), prefix)]
    while stack:
        folder, rel = stack.pop()
        try:
            it = os.scandir(folder)
        except PermissionError as exc:
            raise UserError(f"{folder}: permission denied, cannot list it") from exc
        with it:
            entries = list(it)
        files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        if len(files) < len(entries):
            stack += [
                (e.path, f"{rel}/{e.name}" if rel else e.name)
                for e in entries
                if e.is_dir(follow_symlinks=False)
            ]
        files = [f for f in files if not (f[0] == "." and ".tmp" in f)]
        if not files:
            continue
        kept, stats = _stat_all(folder, files)
        if len(kept) < len(files):
            dangling += [
                f"{rel}/{n}" if rel else n
                for n in sorted(set(files) - set(kept))
                if _is_dangling(os.path.join(folder, n))
            ]
        names += kept
        sizes += [st.st_size for st in stats]
        mtimes += [st.st_mtime_ns for st in stats]
        folders += [rel] * len(kept)
        if len(names) >= batch_size:
            yield ListingBatch(folders, names, sizes, mtimes, dangling)
            folders, names, sizes, mtimes, dangling = [], [], [], [], []
    if names or dangling:
        yield ListingBatch(folders, names, sizes, mtimes, dangling)


def _is_dangling(path: str) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def _stat_all(folder: str, names: list[str]) -> tuple[list[str], list[os.stat_result]]:
    """Stat the files of one folder; keep regular files (links followed) that still exist.

    Each stat is an fstatat() relative to the open folder, so the kernel does not walk
    the whole path again for every file; the common case (nothing vanished, nothing
    but regular files) runs as one ``map`` without per-file Python code.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            stat = functools.partial(os.stat, dir_fd=fd)
        else:

            def stat(name: str) -> os.stat_result:
                return os.stat(f"{folder}/{name}")

        try:
            stats = list(map(stat, names))
        except OSError:  # something vanished, or a dangling link: one by one
            pairs = []
            for name in names:
                with contextlib.suppress(OSError):
                    pairs.append((name, stat(name)))
            names, stats = [n for n, _ in pairs], [st for _, st in pairs]
        if not all(map(stat_is_file, [st.st_mode for st in stats])):
            keep = [i for i, st in enumerate(stats) if stat_is_file(st.st_mode)]
            names, stats = [names[i] for i in keep], [stats[i] for i in keep]
        return names, stats
    finally:
        if fd is not None:
            os.close(fd)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    return bucket, key.strip("/")


def s3_client() -> Any:
    """A boto3 S3 client honouring ``STARRYNIGHT_S3_ENDPOINT`` / ``AWS_ENDPOINT_URL``."""
    import boto3

    endpoint = os.environ.get("STARRYNIGHT_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region)


def _s3_error(uri: str, exc: BaseException) -> UserError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return UserError(f"{uri}: S3 bucket {_split_s3(uri)[0]!r} does not exist")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return UserError(f"{uri}: access denied ({code}); check the AWS credentials")
    return UserError(f"{uri}: cannot list ({_short(exc)})")


def _list_s3(uri: str, batch_size: int, prefix: str) -> Iterator[ListingBatch]:
    bucket, key = _split_s3(uri)
    if not bucket:
        raise UserError(f"{uri}: expected s3://bucket/prefix")
    root = f"{key}/" if key else ""
    start = f"{root}{prefix}/" if prefix else root
    client = s3_client()
    folders: list[str] = []
    names: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    seen = False
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(root) :]
                if not rel or rel.endswith("/"):
                    continue  # folder placeholder objects
                seen = True
                folder, _, name = rel.rpartition("/")
                if name.startswith(".") and ".tmp" in name:
                    continue
                folders.append(folder)
                names.append(name)
                sizes.append(int(obj.get("Size", 0)))
                modified = obj.get("LastModified")
                mtimes.append(int(modified.timestamp() * 1e9) if modified else 0)
            if len(names) >= batch_size:
                yield ListingBatch(folders, names, sizes, mtimes)
                folders, names, sizes, mtimes = [], [], [], []
    except UserError:
        raise
    except Exception as exc:
        raise _s3_error(uri, exc) from exc
    if not seen:
        raise UserError(f"{S3_PREFIX}{bucket}/{start}: no such S3 prefix (no objects below it)")
    if names:
        yield ListingBatch(folders, names, sizes, mtimes)


def _is_temporary(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and ".tmp" in name


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def stat_many(uris: Sequence[str]) -> list[tuple[int, int] | None]:
    """``(size, mtime_ns)`` of each file, None for one that does not exist.

    Local paths are stat-ed directly; S3 keys are asked for in one call per bucket
    through pyarrow (a HEAD per key).
    """
    out: list[tuple[int, int] | None] = []
    remote = [u for u in uris if is_s3(u)]
    infos: dict[str, tuple[int, int] | None] = {}
    if remote:
        fs, _ = filesystem(remote[0])
        paths = [filesystem(u)[1] for u in remote]
        for uri, info in zip(remote, fs.get_file_info(paths), strict=True):
            ok = info.type == pafs.FileType.File
            mtime = (info.mtime_ns or 0) if ok else 0
            infos[uri] = (int(info.size), int(mtime)) if ok else None
    for uri in uris:
        if is_s3(uri):
            out.append(infos[uri])
            continue
        path = os.path.expanduser(uri)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            try:
                # A dangling link is there (reading it says what is wrong with it).
                st = os.lstat(path)
            except OSError:
                out.append(None)
                continue
        out.append((st.st_size, st.st_mtime_ns))
    return out


_TEMP_NAME = re.compile(r"\..+\.(\d+)-[0-9a-f]{8}\.tmp.*")


def clean_temporary(folder: str) -> int:
    """Remove temporary files that dead writers left in a local folder.

    :func:`atomic_local_path` names its temporary file after the writing process; a
    file whose process no longer runs on this machine is a killed write's leftover.
    Older-style names without a pid are removed when older than an hour. S3 writes
    leave no temporary objects.

    Returns
    -------
    int
        Files removed.
    """
    if is_s3(folder):
        return 0
    root = Path(folder).expanduser()
    if not root.is_dir():
        return 0
    removed = 0
    for path in root.iterdir():
        if not _is_temporary(path.name):
            continue
        m = _TEMP_NAME.fullmatch(path.name)
        stale = False
        if m:
            stale = not _pid_alive(int(m.group(1)))
        else:
            with contextlib.suppress(OSError):
                stale = time.time() - path.stat().st_mtime > 3600
        if stale:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove(uri: str) -> None:
    """Delete a file if it exists (local or S3)."""
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)
