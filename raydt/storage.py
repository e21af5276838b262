"""Sweep storage: a local directory or a URI (``s3://``, ``gs://``, ``file://``, any fsspec
protocol), reached through pyarrow's filesystems as Ray Tune and Train reach theirs.

Training always writes to a directory on the local disk of the node that runs rank 0; with
URI storage that directory is a staging copy, and :func:`sync_up` mirrors it to the run's
place in storage after every checkpoint and at the end. A run started again on another node
(a lost node, a resumed sweep) first pulls its files back with :func:`sync_down`. Reports,
comparisons and analyses of a URI read a local copy made by :func:`local_view`.

Every file lands whole or not at all: object stores publish an upload only when it
completes, and on filesystems with renames a file is written under a temporary name and
moved into place.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from raydt.errors import RaydtError
from raydt.fsutil import atomic_path, data_dir


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` names storage by URI rather than a local path."""
    return "://" in str(location)


def join(location: str, *parts: str) -> str:
    """``location`` / parts, for local paths and URIs alike."""
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for ``uri``; fsspec serves schemes pyarrow lacks."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except ValueError as exc:  # pyarrow's ArrowInvalid: a scheme it has no filesystem for
        if "Unrecognized filesystem type" not in str(exc):
            raise RaydtError(f"storage {uri}: {exc}") from None
    except OSError as exc:  # e.g. a bucket whose region cannot be looked up
        raise RaydtError(f"storage {uri}: {exc}") from None
    try:
        import fsspec
    except ImportError:
        raise RaydtError(f"storage {uri}: pyarrow does not know this scheme and fsspec is not installed") from None
    protocol, path = uri.split("://", 1)
    try:
        fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise RaydtError(f"storage {uri}: no filesystem for {protocol}:// ({exc}); install its fsspec "
                         "package (s3fs, gcsfs, adlfs, ...)") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


IN_MEMORY = ("memory", "mock")
"""fsspec schemes whose files live in one process: Ray's workers would each see their own."""


def check_writable(location: str, what: str, probe: bool = True) -> None:
    """Resolve ``location`` (a URI) as Ray will (pyarrow's filesystem for the URI) and, with
    ``probe``, create it and write and delete a small file there: a one-line error naming
    ``what`` now, not a traceback after Ray has started. Without ``probe`` (a dry run) it is
    only resolved and its nearest existing folder looked up: nothing is written."""
    import pyarrow.fs as pafs

    scheme = str(location).split("://", 1)[0].lower()
    if scheme in IN_MEMORY:
        raise RaydtError(f"{what} {location}: {scheme}:// storage lives in one process, and every trial "
                         "runs in its own; give a folder or shared storage (s3://, gs://, file://)")
    fs, path = filesystem(str(location))
    try:
        if not probe:
            folder = path
            while fs.get_file_info(folder).type == pafs.FileType.NotFound and "/" in folder.strip("/"):
                folder = folder.rstrip("/").rsplit("/", 1)[0]
            if fs.get_file_info(folder).type == pafs.FileType.File:
                raise RaydtError(f"{what} {location}: {folder} is a file; give a folder")
            return
        fs.create_dir(path, recursive=True)
        marker = f"{path.rstrip('/')}/.raydt-write-probe-{os.getpid()}"
        with fs.open_output_stream(marker) as out:
            out.write(b"")
        fs.delete_file(marker)
    except OSError as exc:
        raise RaydtError(f"{what} {location} cannot be written ({str(exc).splitlines()[0]}); give a "
                         "writable folder or bucket") from None


def exists(location: str | os.PathLike) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs as pafs

    fs, path = filesystem(str(location))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def parent(location: str) -> str:
    """The folder holding ``location`` (a local path or a URI)."""
    return str(location).rstrip("/").rsplit("/", 1)[0]


def remove(location: str | os.PathLike) -> None:
    """Delete ``location`` and everything under it (a local folder or a URI), if it exists."""
    if not is_uri(location):
        import shutil

        shutil.rmtree(location, ignore_errors=True)
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(str(location))
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def read_text(location: str | os.PathLike) -> str:
    if not is_uri(location):
        return Path(location).read_text()
    fs, path = filesystem(str(location))
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str | os.PathLike, text: str) -> None:
    """Write a small file whole (atomically) to a local path or a URI."""
    if not is_uri(location):
        from raydt.fsutil import atomic_write_text

        atomic_write_text(location, text)
        return
    fs, path = filesystem(str(location))
    put(fs, path, lambda out: out.write(text.encode()))


def put(fs, path: str, write) -> None:
    """Publish ``path`` on ``fs`` complete or not at all."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if fs.type_name == "local":
        tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.tmp-{os.getpid()}"
        try:
            with fs.open_output_stream(tmp) as out:
                write(out)
            fs.move(tmp, path)
        finally:
            if fs.get_file_info(tmp).type.name != "NotFound":
                fs.delete_file(tmp)
    else:  # object stores: an upload becomes visible only once it completes
        with fs.open_output_stream(path) as out:
            write(out)


@dataclass
class Mirror:
    """A local directory kept in step with its place in storage, file by file."""

    local: Path
    remote: str
    _sent: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Relative path → (size, mtime_ns) of each file as last uploaded."""

    def sync_up(self) -> int:
        """Upload the files that are new or changed since the last call; returns how many.
        Temporary files (``.name.tmp-*``) are skipped: they are writes in progress."""
        fs, root = filesystem(self.remote)
        sent = 0
        for path in sorted(self.local.rglob("*")):
            if not path.is_file() or ".tmp-" in path.name:
                continue
            rel = path.relative_to(self.local).as_posix()
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced between the listing and now
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(rel) == key:
                continue

            def copy(out, path=path):
                with open(path, "rb") as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)

            put(fs, f"{root.rstrip('/')}/{rel}", copy)
            self._sent[rel] = key
            sent += 1
        return sent

    def sync_down(self, skip=None) -> int:
        """Download every remote file (except those ``skip(rel)`` names) into the local
        directory, each written whole; returns how many."""
        import pyarrow.fs as pafs

        fs, root = filesystem(self.remote)
        root = root.rstrip("/")
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            return 0
        got = 0
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            # fsspec filesystems may list paths with a leading "/" the root lacks, or not.
            rel = info.path.lstrip("/")[len(root.lstrip("/")):].lstrip("/")
            if ".tmp-" in rel.rsplit("/", 1)[-1] or (skip is not None and skip(rel)):
                continue
            target = self.local / rel
            with atomic_path(target) as tmp, fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            stat = target.stat()
            self._sent[rel] = (stat.st_size, stat.st_mtime_ns)  # already there: no upload back
            got += 1
        return got


def staging_dir(remote: str) -> Path:
    """The local directory that stands for ``remote`` on this node."""
    digest = hashlib.sha1(remote.encode()).hexdigest()[:12]
    name = remote.rstrip("/").rsplit("/", 1)[-1]
    return data_dir() / "staging" / f"{name}-{digest}"


def is_kept_checkpoint(rel: str) -> bool:
    """A checkpoint kept for analyses (``checkpoints/step_N.pt``): not needed to resume."""
    return rel.startswith("checkpoints/step_")


def local_view(location: str | os.PathLike, checkpoints: bool = False) -> Path:
    """A local directory holding what ``location`` holds: itself when local, else a fresh
    copy of the URI's files (checkpoints only when asked: reports need none)."""
    if not is_uri(location):
        return Path(location)
    if not exists(location):
        raise RaydtError(f"{location} not found")
    local = data_dir() / "views" / staging_dir(str(location)).name
    mirror = Mirror(local, str(location))
    mirror.sync_down(skip=None if checkpoints else (lambda rel: rel.endswith(".pt")))
    return local
