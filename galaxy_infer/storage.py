"""Where bytes live: local paths and object-store URIs (``s3://``, ``gs://``) through pyarrow's filesystems.

Everything that lists inputs, reads their bytes, or commits an output goes through this module,
so a new store is one more branch in :func:`resolve`. Local paths keep POSIX semantics (atomic
rename, fsync, ``flock``); object stores have none of those, so each output kind has its own
commit rule here: a catalog folder is staged under a hidden sibling prefix and published by
copy with ``_run_summary.json`` written last (:func:`publish_folder`), an ingest part is staged
hidden by one PUT (:func:`write_object_atomic`) and published by copy (:func:`publish_file`), and
overlapping runs are kept apart by :class:`OutputLock`.

S3 settings come from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, instance profiles and IRSA web identity),
``AWS_REGION``/``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL`` for S3-compatible stores;
``GALAXY_INFER_S3_ANONYMOUS=1`` reads public buckets unsigned. No secret is ever stored or printed.
"""
from __future__ import annotations

import errno
import fcntl
import glob as local_glob
import itertools
import json
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from fsspec.utils import glob_translate

from galaxy_infer import limits
from galaxy_infer.errors import ErrorKind, InputError, StorageError, StoreUnreachable, TransientInputError

ANONYMOUS_ENV = "GALAXY_INFER_S3_ANONYMOUS"
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                 ANONYMOUS_ENV)
"""Storage settings Ray workers need besides credentials; none of them is a secret."""
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
S3_ATTEMPTS = 8
"""AWS standard retry strategy: 503 SlowDown, throttling, timeouts and resets back off and retry this often."""
PROBE_ATTEMPTS = 2
"""The before-any-work check retries less: a dead endpoint should answer in seconds, not after minutes of backoff."""
READ_CONCURRENCY = 32
"""Objects fetched at once per task: object stores answer each GET after tens of ms, so reads overlap."""

_FILESYSTEMS: dict[tuple, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _local_path(uri: str) -> str:
    return str(uri)[len("file://"):] if str(uri).startswith("file://") else str(uri)


def s3_settings(attempts: int = S3_ATTEMPTS) -> dict:
    """S3FileSystem arguments from the environment; credentials are left to the AWS chain."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    settings: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
                      "anonymous": os.environ.get(ANONYMOUS_ENV, "") not in ("", "0", "false")}
    if endpoint:
        settings["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            settings["scheme"] = "http"
    if region:
        settings["region"] = region
    return settings


def resolve(uri: str, attempts: int = S3_ATTEMPTS) -> tuple[pafs.FileSystem, str]:
    """A URI or local path -> (filesystem, path inside it). Filesystems are cached per settings."""
    uri = str(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(uri))
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3", "s3a"):
        settings = s3_settings(attempts)
        identity = hash(tuple(os.environ.get(k) for k in CREDENTIAL_ENV))  # new credentials, new client
        key = ("s3", identity, tuple(sorted((k, repr(v)) for k, v in settings.items())))
        with _FS_LOCK:
            if key not in _FILESYSTEMS:
                _FILESYSTEMS[key] = pafs.S3FileSystem(**settings)
        return _FILESYSTEMS[key], rest.rstrip("/")
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path.rstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts]) if is_remote(uri) else os.path.join(uri, *parts)


def parent_and_name(uri: str) -> tuple[str, str]:
    uri = str(uri).rstrip("/")
    if is_remote(uri):
        parent, _, name = uri.rpartition("/")
        return parent, name
    path = os.path.abspath(_local_path(uri))
    return os.path.dirname(path), os.path.basename(path)


def _uri(like: str, path: str) -> str:
    """A filesystem path back to the form the user gave (URI or local path)."""
    return f"{str(like).split('://', 1)[0]}://{path}" if is_remote(like) else path


def describe_error(exc: BaseException) -> str:
    """One line for an exception from a filesystem call (AWS SDK messages are long)."""
    return " ".join(str(exc).split())[:300]


def check_reachable(uri: str) -> None:
    """Fail before any work when the store behind ``uri`` cannot be reached or refuses us."""
    if not is_remote(uri):
        return
    filesystem, path = resolve(uri, attempts=PROBE_ATTEMPTS)
    try:
        filesystem.get_file_info(path)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            return
        raise StorageError(f"cannot access {uri}: {describe_error(exc)}") from None


def info(uri: str) -> pafs.FileInfo:
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path)


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return info(uri).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    return info(uri).type == pafs.FileType.File


def _walk(uri: str, recursive: bool) -> list[str]:
    found = []
    for root, dirs, files in os.walk(_local_path(uri), followlinks=False):
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files)]
        if not recursive:
            break
    return found


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_files(uri: str, recursive: bool = True) -> list[pafs.FileInfo]:
    """Files (not folders) under a folder/prefix, sorted by path; [] when it does not exist.

    Local file names that are not UTF-8 are left out (pyarrow cannot take them); :func:`list_uris`
    keeps them, so discovery makes them error rows.
    """
    filesystem, path = resolve(uri)
    if not is_remote(uri):
        found = [p for p in _walk(uri, recursive) if _utf8(p)]
        return [pafs.FileInfo(p, pafs.FileType.File, mtime=i.mtime, size=i.size)
                for p, i in zip(found, filesystem.get_file_info([os.path.abspath(p) for p in found]))]
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    return sorted((i for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File),
                  key=lambda i: i.path)


def list_stamps(uri: str, recursive: bool = True) -> list[tuple[str, int, int | None]]:
    """``(uri, size, mtime in ns)`` of each file of :func:`list_files`: for a file written once and never
    changed in place, the same three mean the same bytes."""
    return [(_uri(uri, i.path), i.size, i.mtime_ns) for i in list_files(uri, recursive)]


def list_uris(uri: str, recursive: bool = True) -> list[str]:
    if not is_remote(uri):
        return _walk(uri, recursive)
    return [_uri(uri, i.path) for i in list_files(uri, recursive)]


def entries(uri: str) -> list[str]:
    """Names of everything under a folder or prefix (files, folders, links), relative to it, sorted.

    Locally from ``os.walk``: links are named, not followed, and names that are not UTF-8 are kept
    (pyarrow would drop dangling links and fail on such names). An object store holds keys only.
    """
    if is_remote(uri):
        root = str(uri).rstrip("/")
        return [u[len(root) + 1:] for u in list_uris(uri)]
    root = _local_path(uri)
    found = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, name), root) for name in dirs + files]
    return sorted(found)


def walk_files(uri: str, with_mtime: bool = False) -> Iterator[tuple[str, float | None]]:
    """``(path, mtime)`` of each file under a folder/prefix, a directory at a time, in :func:`list_uris`'s order.

    Only one directory's entries are held at once: locally by ``os.scandir`` in ``os.walk``'s
    order, in an object store by one delimited listing per prefix level (``FileSelector``,
    not recursive), merged so that paths come out sorted as one recursive listing would give
    them. ``mtime`` is None unless ``with_mtime`` (locally it costs a ``stat`` per file).
    """
    if not is_remote(uri):
        yield from _scan_local(_local_path(uri), with_mtime)
        return
    filesystem, path = resolve(uri)
    yield from _scan_remote(filesystem, path, uri)


def _scan_local(folder: str, with_mtime: bool) -> Iterator[tuple[str, float | None]]:
    try:
        with os.scandir(folder) as entries:
            listed = [(e.name, e.is_dir(), e.is_symlink()) for e in entries]
    except OSError:
        return
    listed.sort()
    for name, is_dir, _ in listed:
        if not is_dir:
            path = os.path.join(folder, name)
            yield path, _mtime(path) if with_mtime else None
    for name, is_dir, is_link in listed:
        if is_dir and not is_link:
            yield from _scan_local(os.path.join(folder, name), with_mtime)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _scan_remote(filesystem: pafs.FileSystem, prefix: str, like: str) -> Iterator[tuple[str, float | None]]:
    found = filesystem.get_file_info(pafs.FileSelector(prefix, recursive=False, allow_not_found=True))
    # A folder's files sort after its name plus "/": keys so that a depth-first walk is in sorted order.
    entries = sorted(found, key=lambda i: i.path + "/" if i.type == pafs.FileType.Directory else i.path)
    for entry in entries:
        if entry.type == pafs.FileType.Directory:
            yield from _scan_remote(filesystem, entry.path, like)
        elif entry.type == pafs.FileType.File:
            yield _uri(like, entry.path), entry.mtime.timestamp() if entry.mtime is not None else None


def has_magic(pattern: str) -> bool:
    return local_glob.has_magic(pattern)


def glob_root(pattern: str) -> str:
    """The folder a glob's fixed leading part names (its matches' ids are relative to it)."""
    sep = "/" if is_remote(pattern) else os.sep
    fixed = list(itertools.takewhile(lambda part: not has_magic(part), pattern.split(sep)))
    return sep.join(fixed) or (sep if pattern.startswith(sep) else ".")


def glob(pattern: str, with_mtime: bool = False) -> Iterator[tuple[str, float | None]]:
    """``(path, mtime)`` of the files matching ``pattern`` (``*``, ``?``, ``[..]`` within a name,
    ``**`` across folders), in :func:`walk_files`'s order.

    Streamed: the pattern's fixed leading folder is walked a directory at a time and each path is
    matched against the pattern translated by fsspec (Python 3.13's ``glob.translate``), so a glob
    over a survey's prefix never holds its listing. As local glob does, a pattern never matches a
    name starting with a dot.
    """
    root = glob_root(pattern)
    matches = re.compile(glob_translate(pattern)).match
    bare = root == "." and not pattern.startswith("./")  # "*.jpg" matches "a.jpg", as the walk's "./a.jpg"
    for path, mtime in walk_files(root, with_mtime):
        below = path[len(root):]
        path = path[2:] if bare else path
        if matches(path) and not any(part.startswith(".") for part in below.split("/")):
            yield path, mtime


# ---- reading ---------------------------------------------------------------------------------

TRANSIENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.ECONNRESET,
                    errno.ESTALE, errno.EBUSY, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH}
MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG}
LOCAL_ADVICE = {errno.EACCES: "make it readable by the user running galaxy-infer",
                errno.EPERM: "make it readable by the user running galaxy-infer",
                errno.EIO: "check the disk or network filesystem"}
UNREACHABLE = f"store unreachable ({S3_ATTEMPTS} attempts); check the endpoint and the store's health"
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")


def read_bytes(uri: str, filesystem: pafs.FileSystem | None = None) -> bytes:
    """The whole object, or :class:`InputError` (bytes missing for good) / :class:`TransientInputError`.

    Reasons name the kind of failure and what to do, never the object (it is in the row), so that
    the run summary groups them.
    """
    if filesystem is None:
        if not is_remote(uri):
            return _read_local(_local_path(uri))
        filesystem, path = resolve(uri)
    else:
        path = uri
    try:
        with filesystem.open_input_stream(path, compression=None) as f:  # the stored bytes: readers unpack .gz
            cap = limits.active().decompressed_bytes
            data = f.read(cap + 1)
        limits.active().check_file(len(data))
    except OSError as exc:
        raise _object_error(exc) from None
    if not data:
        raise InputError("empty file (0 bytes)")
    return data


def read_error(exc: OSError) -> InputError | None:
    """What a failed open or read of stored bytes means for its object; None when ``exc`` is no storage failure
    (a library's complaint about the bytes, an ``OSError`` without an errno or a store's error code).

    Bytes missing for good give an :class:`InputError` of kind ``not-found``; permission, I/O,
    network and store failures a :class:`TransientInputError`, retried by the next ingest.
    """
    if isinstance(exc, FileNotFoundError):
        return InputError("file not found", kind=ErrorKind.NOT_FOUND)
    if isinstance(exc, IsADirectoryError):
        return InputError("is a directory, not an image", kind=ErrorKind.NOT_FOUND)
    code = errno.EACCES if isinstance(exc, PermissionError) and exc.errno not in TRANSIENT_ERRNOS else exc.errno
    if code in TRANSIENT_ERRNOS:
        return TransientInputError(f"{os.strerror(code).lower()}; {LOCAL_ADVICE.get(code, 'retry later')}")
    if code in MISSING_ERRNOS:
        return InputError(f"cannot read file: {exc.strerror or exc}", kind=ErrorKind.NOT_FOUND)
    found = _AWS_ERROR.search(describe_error(exc))
    if not found:
        return None
    kind, status = found.group(1), found.group(2) or ""
    code_text = kind + (f" (HTTP {status})" if status else "")
    if kind in ("NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "NO_SUCH_BUCKET"):
        return InputError("file not found", kind=ErrorKind.NOT_FOUND)
    if kind == "ACCESS_DENIED" or status == "403":
        return TransientInputError("access denied by the store (HTTP 403); check the bucket policy or the "
                                   "credentials' read permission")
    if kind == "NETWORK_CONNECTION":
        return StoreUnreachable(UNREACHABLE)
    if kind in ("REQUEST_TIMEOUT", "SLOW_DOWN", "THROTTLING", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE") \
            or status.startswith("5"):
        return TransientInputError(f"store answered {code_text} after {S3_ATTEMPTS} attempts; check the store's "
                                   "health")
    return TransientInputError(f"read failed: {code_text}")


def _object_error(exc: OSError) -> InputError:
    """A failed read through a filesystem (an object store): whatever :func:`read_error` does not name is transient."""
    return read_error(exc) or TransientInputError(f"read failed: {describe_error(exc)}")


def _read_local(path: str) -> bytes:
    """A regular file's bytes; opened non-blocking so that a FIFO or device in the inputs is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError("broken symbolic link" if os.path.islink(path) else "file not found",
                         kind=ErrorKind.NOT_FOUND) from None
    except OSError as exc:
        raise _local_error(exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError("is a directory, not an image", kind=ErrorKind.NOT_FOUND)
        if not stat.S_ISREG(mode):
            raise InputError("not a regular file (a FIFO, socket or device)", kind=ErrorKind.NOT_FOUND)
        limits.active().check_file(os.fstat(fd).st_size)
        with open(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as exc:
        raise _local_error(exc) from None
    finally:
        os.close(fd)
    if not data:
        raise InputError("empty file (0 bytes)")
    return data


def _local_error(exc: OSError) -> InputError:
    return read_error(exc) or InputError(f"cannot read file: {exc.strerror or exc}", kind=ErrorKind.CORRUPT)


def map_reads(read: Callable[[Any], Any], items: list, uri: str) -> list:
    """``read`` of each item, in order: :data:`READ_CONCURRENCY` at a time by threads when ``uri`` (the
    items' first path) is in an object store, which answers each GET in turn; one after another locally."""
    if not items or not is_remote(uri):
        return [read(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(READ_CONCURRENCY, len(items))) as pool:
        return list(pool.map(read, items))


def read_many(uris: Iterable[str], filesystem: pafs.FileSystem | None = None,
              concurrency: int = READ_CONCURRENCY) -> Iterator[bytes | InputError]:
    """Bytes of each object in order, fetched ``concurrency`` at a time by threads; failures are yielded.

    Once a read finds the store unreachable (after the SDK's retries, about a minute), the reads
    not yet started fail at once with the same reason instead of a minute each.
    """
    uris = list(uris)
    down = threading.Event()

    def fetch(uri: str) -> bytes | InputError:
        if down.is_set():
            return StoreUnreachable(UNREACHABLE)
        try:
            return read_bytes(uri, filesystem)
        except StoreUnreachable as exc:
            down.set()
            return exc
        except InputError as exc:
            return exc

    if len(uris) <= 1 or concurrency <= 1:
        yield from map(fetch, uris)
        return
    with ThreadPoolExecutor(max_workers=min(concurrency, len(uris))) as pool:
        window = 2 * concurrency
        futures = [pool.submit(fetch, u) for u in uris[:window]]
        for i in range(len(uris)):
            if i + window < len(uris):
                futures.append(pool.submit(fetch, uris[i + window]))
            yield futures[i].result()
            futures[i] = None


def open_input(uri: str) -> pa.NativeFile:
    """A random-access file (an object store serves ranged reads, never the whole object); ``OSError`` on
    failure, which :func:`read_error` splits for an input object."""
    filesystem, path = resolve(uri)
    return filesystem.open_input_file(path)


# ---- writing and committing ------------------------------------------------------------------

def open_output(uri: str):
    """A write stream; on an object store the object appears whole when the stream closes, or never."""
    filesystem, path = resolve(uri)
    if not is_remote(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return filesystem.open_output_stream(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; a local one is fsynced before this returns."""
    if is_remote(uri):
        with open_output(uri) as f:
            f.write(data)
        return
    path = _local_path(uri)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def delete_file(uri: str) -> None:
    filesystem, path = resolve(uri)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass


def delete_tree(uri: str) -> None:
    """A folder or prefix and everything under it; nothing if absent."""
    if not is_remote(uri):
        shutil.rmtree(_local_path(uri), ignore_errors=True)
        return
    filesystem, path = resolve(uri)
    try:
        filesystem.delete_dir(path)  # every object under the prefix, and the folder entry stores like SeaweedFS keep
    except FileNotFoundError:
        pass


def fsync_file(path: str) -> None:
    """Local files only: object-store PUTs are durable when they return."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fsync_file(path)


def write_object_atomic(uri: str, write) -> None:
    """Commit one file whole: ``write(stream)`` fills it.

    Local: a hidden ``.name-<random>.suffix.tmp`` beside it (random, so two writers of one name, such as
    two attempts of one task, never share a temp file), fsync, rename, fsync the folder. Object store: one
    PUT (or multipart upload completed at close), which is all or nothing; a killed writer leaves
    no object (only an incomplete upload that a bucket lifecycle rule aborts).
    """
    if is_remote(uri):
        with open_output(uri) as stream:
            write(stream)
        return
    path = _local_path(uri)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    stem, dot, suffix = name.partition(".")
    tmp = os.path.join(folder, f".{stem}-{uuid.uuid4().hex[:8]}{dot}{suffix}.tmp")
    with open(tmp, "wb") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.rename(tmp, path)
    fsync_dir(folder)


def publish_file(staged: str, final: str) -> None:
    """Give a whole staged file its final name, so that it appears complete or not at all.

    Local: a rename (atomic), then an fsync of the folder. Object store (no rename): a server-side copy
    (no byte passes through this process, and the object appears whole), then the staged object is
    deleted; a kill between the two leaves the file published and a stale staged object.
    """
    if not is_remote(final):
        os.rename(_local_path(staged), _local_path(final))
        fsync_dir(os.path.dirname(os.path.abspath(_local_path(final))))
        return
    filesystem, path = resolve(final)
    filesystem.copy_file(resolve(staged)[1], path)
    filesystem.delete_file(resolve(staged)[1])


PUBLISHING_MARKER = "_publishing"
PUBLISH_CONCURRENCY = 32
"""Server-side copies in flight while an object-store catalog is published."""


def publish_folder(stage: str, out: str, summary_name: str, replace: bool,
                   concurrency: int = PUBLISH_CONCURRENCY) -> None:
    """Make the staged catalog ``stage`` (complete, its summary included) visible at ``out``.

    Local: one rename (atomic; refused when ``out`` exists unless ``replace``, then the old
    folder is renamed aside first and removed after). Object store: there is no rename, so a
    ``_publishing`` marker is put in the stage, then :func:`_copy_stage` replaces what is at
    ``out`` (the old summary deleted first, so a half-replaced catalog never reads as complete)
    and copies the stage, summary last: server-side copies (no byte passes through this process),
    ``concurrency`` at a time, the summary only after every part. A run killed in between leaves ``out`` without a summary
    and the complete stage with its marker; :func:`clean_stale_stages` (the next writer on
    ``out``) finishes the publish, so the killed run's catalog is not lost.
    """
    if not is_remote(out):
        out_path = os.path.abspath(_local_path(out))  # a bare name ('cat') has no folder to fsync or rename aside into
        if os.path.lexists(out_path):
            if not replace:
                raise FileExistsError(f"{out} appeared while this run was writing (another run?); "
                                      f"this run's catalog is left unpublished")
            old = f"{os.path.dirname(out_path)}/.{os.path.basename(out_path)}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_path, old)
            os.rename(_local_path(stage), out_path)
            shutil.rmtree(old)
        else:
            os.rename(_local_path(stage), out_path)
        fsync_dir(os.path.dirname(out_path))
        return
    if list_files(out) and not replace:
        raise FileExistsError(f"{out} appeared while this run was writing (another run?); "
                              f"this run's catalog is left unpublished")
    write_bytes(join(stage, PUBLISHING_MARKER), b"")
    _copy_stage(stage, out, summary_name, concurrency)


def _copy_stage(stage: str, out: str, summary_name: str, concurrency: int = PUBLISH_CONCURRENCY) -> None:
    """Object store: delete what is at ``out`` (its summary first), copy the stage's files server-side
    (the summary last), delete the stage. Repeatable: a rerun after a kill ends in the same state.

    Object stores have no rename, and a run's parts are written by its tasks, so publishing is one
    CopyObject per part: issued ``concurrency`` at a time from a thread pool (pyarrow's S3
    filesystem is thread-safe), so a 2,000-part catalog costs about 2,000 / ``concurrency`` round
    trips rather than 2,000.
    """
    filesystem, out_path = resolve(out)
    delete_file(join(out, summary_name))
    old = list_files(out)
    _, stage_path = resolve(stage)
    names = [i.path[len(stage_path) + 1:] for i in list_files(stage) if not i.path.endswith(f"/{PUBLISHING_MARKER}")]
    parts = [n for n in names if n != summary_name]
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(lambda info: filesystem.delete_file(info.path), old))
        list(pool.map(lambda name: filesystem.copy_file(f"{stage_path}/{name}", f"{out_path}/{name}"), parts))
    if summary_name in names:
        filesystem.copy_file(f"{stage_path}/{summary_name}", f"{out_path}/{summary_name}")
    delete_tree(stage)


def stage_prefix(out: str) -> str:
    parent, name = parent_and_name(out)
    return join(parent, f".{name}.tmp-")


def clean_stale_stages(out: str, summary_name: str) -> list[str]:
    """What killed runs on ``out`` left (call only while holding ``out``'s :class:`OutputLock`); returns their stages.

    A stage is removed, except one killed while publishing (object store: its ``_publishing``
    marker is there and ``out`` has no summary): that stage is a complete catalog, and its
    publish is finished instead. Locally, a run killed between the two renames of a replace
    leaves ``out`` missing and the old catalog renamed aside: the old catalog is put back.
    """
    parent, name = parent_and_name(out)
    prefix = f".{name}.tmp-"
    if is_remote(out):
        filesystem, parent_path = resolve(parent)
        entries = filesystem.get_file_info(pafs.FileSelector(parent_path, allow_not_found=True))
        stages = [_uri(out, e.path) for e in entries if os.path.basename(e.path).startswith(prefix)]
        for stage in stages:
            if exists(join(stage, PUBLISHING_MARKER)) and not exists(join(out, summary_name)):
                _copy_stage(stage, out, summary_name)
            delete_tree(stage)
        return stages
    stages = sorted(local_glob.glob(os.path.join(local_glob.escape(parent), local_glob.escape(prefix) + "*")))
    olds = sorted(local_glob.glob(os.path.join(local_glob.escape(parent), f".{local_glob.escape(name)}.old-*")))
    if olds and not os.path.lexists(_local_path(out)):
        os.rename(olds.pop(), _local_path(out))
    for stage in stages + olds:
        delete_tree(stage)
    return stages + olds


# ---- one writer per output -------------------------------------------------------------------

LEASE_SECONDS = 120.0
"""A remote lock a run stops renewing (killed) is free after this long."""


class Locked(RuntimeError):
    """Another run holds the output."""


@dataclass
class _Lease:
    key: str
    body: dict


def _process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from Linux ``/proc``), "" where unknown; None if no
    such process."""
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[19].decode()
        except FileNotFoundError:
            return None
        except (OSError, IndexError):
            return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _pid_namespace() -> str:
    """This process's pid namespace ("" where unknown): two containers may share a host name, never one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _holder_gone(filesystem: pafs.FileSystem, path: str) -> bool:
    """Whether the lease at ``path`` was written on this host, in this pid namespace, by a process that no longer
    runs (its pid is free, or taken by a process that started later)."""
    try:
        with filesystem.open_input_stream(path) as f:
            body = json.loads(f.read(4096))
        host, pid, started, namespace = body["host"], int(body["pid"]), body["pid_started"], body["pid_namespace"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or namespace != _pid_namespace() or pid == os.getpid():
        return False
    now = _process_started(pid)
    return now is None or bool(started and now and now != started)


class OutputLock:
    """One writer per output at a time.

    Local: ``flock`` on a hidden lock file (released by the kernel when the process dies).
    Object store (no ``flock``, and pyarrow cannot send S3's ``If-None-Match`` conditional PUT):
    a lease. The run PUTs ``<lock>/<run>.json``, then lists ``<lock>/``; if any *other* lease is
    live (its object's store-side modification time is less than :data:`LEASE_SECONDS` old,
    measured against our own lease's time, so host clocks do not matter) it deletes its own and
    raises :class:`Locked`. S3 listing is strongly consistent, so of two runs that overlap, the
    second to list sees the first; if both list at once both back off (safe; cron retries). The
    holder renews its lease from a thread every third of the lease time and checks it is still
    fresh (:meth:`check`) before each commit, so a run that lost its lease stops writing.

    A live lease written on this host by a process that no longer exists (its pid is gone, or now
    belongs to a process started at another time) is taken over at once: a rerun after a crash
    need not wait :data:`LEASE_SECONDS`. Leases of other hosts are only ever waited out, since
    this host cannot see their processes.
    """

    def __init__(self, uri: str, holder: str = "run", lease_seconds: float = LEASE_SECONDS) -> None:
        self.uri = uri
        self.holder = holder
        self.lease_seconds = lease_seconds
        self._fd: int | None = None
        self._lease: _Lease | None = None
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        if is_remote(self.uri):
            self._acquire_lease()
        else:
            self._acquire_flock()
        return self

    def _acquire_flock(self) -> None:
        path = _local_path(self.uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(f"another {self.holder} holds {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._fd = fd

    def _acquire_lease(self) -> None:
        body = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_started(os.getpid()),
                "pid_namespace": _pid_namespace(), "lease_seconds": self.lease_seconds}
        self._lease = _Lease(join(self.uri, f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"), body)
        self._renew()
        filesystem, path = resolve(self.uri)
        leases = [i for i in filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                  if i.type == pafs.FileType.File]
        _, own_path = resolve(self._lease.key)
        own = next((i for i in leases if i.path == own_path), None)
        now = own.mtime.timestamp() if own is not None and own.mtime else time.time()
        live = [i for i in leases if i.path != own_path and i.mtime and now - i.mtime.timestamp() < self.lease_seconds
                and not _holder_gone(filesystem, i.path)]
        if live:
            self._release_lease()
            raise Locked(f"another {self.holder} holds a lease in {self.uri} "
                         f"(renewed {now - live[0].mtime.timestamp():.0f} s ago; free {self.lease_seconds:.0f} s "
                         "after its last renewal)")
        for stale in leases:
            if stale.path != own_path:
                filesystem.delete_file(stale.path)
        self._thread = threading.Thread(target=self._keep_renewing, name="lease-renewal", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        assert self._lease is not None
        write_bytes(self._lease.key, json.dumps(self._lease.body).encode())
        self._renewed = time.monotonic()

    def _keep_renewing(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self._renew()
            except OSError:
                pass  # check() stops the run before the lease can lapse unnoticed

    def check(self) -> None:
        """Raise before a commit when our lease could have lapsed (renewals failed for too long)."""
        if self._lease is not None and time.monotonic() - self._renewed > self.lease_seconds * 2 / 3:
            raise Locked(f"lost the lease on {self.uri}: not renewed for "
                         f"{time.monotonic() - self._renewed:.0f} s; stopping before another commit")

    def _release_lease(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lease is not None:
            delete_file(self._lease.key)
            self._lease = None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._release_lease()
