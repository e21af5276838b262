"""Files that appear complete or not at all, a full disk named in one line, the cache root,
and cross-process locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""A full disk, and a full quota (which users of shared clusters meet first)."""
PROBE_BYTES = 1 << 20
"""What :func:`out_of_space` tries to write: more than a failed write leaves free."""


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a full disk or quota. Writers
    outside Python keep only the text of the OS error (safetensors' Rust: "(os error 28)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if any(f"(os error {code})" in str(exc) for code in NO_SPACE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_space(folder: str | Path) -> bool:
    """Whether writing in ``folder`` fails now for want of space (a probe file, removed):
    for writers that lose the OS's error, as torch's zip writer does ("unexpected pos")."""
    probe = Path(folder) / f".raydt-space-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        return exc.errno in NO_SPACE
    try:
        written = 0
        while written < PROBE_BYTES:
            written += os.write(fd, bytes(65536))
        os.fsync(fd)  # network filesystems report a full disk here, not at write
        return False
    except OSError as exc:
        return exc.errno in NO_SPACE
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def raise_if_no_space(exc: BaseException, path: str | Path, probe_in: str | Path | None = None) -> None:
    """Raise one line naming ``path`` (a :class:`~raydt.errors.RunFailed`) when ``exc``, met
    writing it, is a full disk or quota: by its errno or text, or, for an error that names
    no OS error, by a probe in ``probe_in`` (default: ``path``'s folder). Call it before
    a partial file is removed, while the disk is still as the failed write left it."""
    from raydt.errors import RaydtError, RunFailed

    named = isinstance(exc, (OSError, RaydtError))  # an OS error with another errno, or raydt's own
    if is_no_space(exc) or (not named and out_of_space(probe_in or Path(path).parent)):
        raise RunFailed(f"no space left on the device writing {path}") from None


@contextlib.contextmanager
def space_for(path: str | Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into one line that names it
    (:func:`raise_if_no_space`); every other error passes unchanged."""
    try:
        yield
    except Exception as exc:
        raise_if_no_space(exc, path)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it over ``path`` on success.

    A crash or an exception leaves ``path`` as it was (absent or the old version) and no
    temporary file behind, so readers never see a half-written file; a full disk is one
    line naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        raise_if_no_space(exc, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; on success it takes the place
    of ``path`` (and of everything in it), so ``path`` is the old folder or the complete new
    one. A failure removes the temporary folder and leaves ``path`` as it was; a full disk
    is one line naming ``path``."""
    # Symbolic links resolved: the folder a link points at is replaced, the link kept.
    target = Path(path).expanduser().resolve()
    if os.path.ismount(target):  # cannot be renamed: staged inside it, then moved in
        tmp = target / f".{target.name}.tmp-{os.getpid()}"
    else:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # one this pid left when killed
        tmp.mkdir(parents=True)
        yield tmp
        _swap_in(tmp, target)
    except Exception as exc:
        raise_if_no_space(exc, path, probe_in=tmp if tmp.is_dir() else None)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    if tmp.parent == target:  # a mount point: the new entries moved in (each rename atomic), then the old go
        new = {entry.name for entry in tmp.iterdir()}
        for name in new:
            os.replace(tmp / name, target / name)
        for entry in target.iterdir():
            if entry == tmp or entry.name in new:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return
    if not target.exists():
        os.replace(tmp, target)
        return
    # rename(2) replaces only an empty folder: the old one steps aside and goes once the new
    # one is in place, or comes back if it cannot be.
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def writable_dir(path: str | Path, what: str) -> Path:
    """``path`` as a directory raydt can write (made if missing), or a one-line error that
    names ``what`` (the flag or variable it came from) before any expensive work starts."""
    from raydt.errors import RaydtError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RaydtError(f"{what} {path} is a file; give a directory (it is made if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".raydt-write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RaydtError(f"{what} {path} cannot be written ({exc.strerror or exc}); give a writable directory") from None
    return path


def data_dir() -> Path:
    """Root of raydt's data cache: $RAYDT_DATA_DIR, else the user cache directory."""
    env = os.environ.get("RAYDT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("raydt"))


def d4rl_dir() -> Path:
    """Where D4RL files are looked for: $D4RL_DATASET_DIR, else ~/.d4rl/datasets (as d4rl)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets")).expanduser()


def minari_dir() -> Path:
    """Where Minari keeps datasets: $MINARI_DATASETS_PATH, else ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets")).expanduser()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path``: concurrent trials make a cached file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
