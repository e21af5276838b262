"""Files that appear complete or not at all, the cache root, and cross-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it over ``path`` on success.

    A crash or an exception leaves ``path`` as it was (absent or the old version) and no
    temporary file behind, so readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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
