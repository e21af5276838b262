"""Prepared artifacts: what a run reads that something built before it, named by content.

Datasets that raydt generates or downloads, backbones it pre-trains (``pretrain:``), the
k-means centres of λ1 and tokenised text are built once, by the driver of a sweep or of
``raydt train``, before any trial starts (:mod:`raydt.prepare`). Each is an
:class:`Artifact`: what a run asks for (its ``need``, computed from the run's config alone),
the SHA-256 of its bytes, and where it lives in a node's caches (a root such as
``$RAYDT_DATA_DIR`` and a path under it, so the loaders find it where they always look).

On a cluster every node has its own disk. The driver publishes each artifact to a
:class:`Store` (a directory or URI every node reaches: the sweep's storage, or
``$RAYDT_ARTIFACTS``) under its hash; each trial pulls the ones its config needs into its
node's caches before it builds anything (:func:`activate`), so every trial of a sweep starts
from the same bytes. While a store is active, a run that finds something missing fails
once, naming it (:func:`refuse_build`), rather than generating data or pre-training on its
own node. Without a store (one machine) nothing is published and runs build what they miss,
as always. No Ray, no torch here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from raydt import storage
from raydt.errors import RaydtError
from raydt.fsutil import d4rl_dir, data_dir, locked, minari_dir

VARIABLE = "RAYDT_ARTIFACTS"
"""A directory or URI every node reaches, where prepared artifacts are published."""

ROOTS: dict[str, Callable[[], Path]] = {"data": data_dir, "d4rl": d4rl_dir, "minari": minari_dir}
"""Where an artifact lives on a node: raydt's cache, D4RL's folder, Minari's folder."""

COMPLETE = ".complete"
"""Written last into an artifact's folder in the store: the upload before it is whole."""


class MissingArtifact(RaydtError):
    """A run needs something the driver did not prepare (or the store lost)."""


@dataclass(frozen=True)
class Artifact:
    """One prepared file or folder."""

    kind: str
    """dataset, backbone, kmeans or text."""
    need: str
    """What a run asks for, from its config alone (see :mod:`raydt.prepare`)."""
    sha256: str
    """Hash of the bytes (a folder: of its files' relative paths and hashes)."""
    root: str
    """Key of :data:`ROOTS`: the node's folder the artifact lives under."""
    rel: str
    """Its path under that folder."""
    is_dir: bool = False

    @property
    def local(self) -> Path:
        return ROOTS[self.root]() / self.rel

    @property
    def short(self) -> str:
        return f"{self.kind} {self.need} (sha256 {self.sha256[:12]})"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Artifact:
        return cls(**values)


def content_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative paths and contents, in order).
    Locks and writes in progress (``.name.lock``, ``.name.tmp-*``) are not content."""
    if path.is_file():
        return _file_hash(path)
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_hash(file)}\n".encode())
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and not _transient(f.name))


def _transient(name: str) -> bool:
    return name.endswith(".lock") or ".tmp-" in name or name == COMPLETE


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def record(kind: str, need: str, root: str, path: Path) -> Artifact:
    """The :class:`Artifact` of ``path``, a file or folder under the node folder ``root``."""
    path = Path(path)
    base = ROOTS[root]().resolve()
    try:
        rel = path.resolve().relative_to(base).as_posix()
    except ValueError:
        raise RaydtError(f"{path} is not under {base}, where a prepared {kind} must be") from None
    return Artifact(kind, need, content_hash(path), root, rel, path.is_dir())


# --------------------------------------------------------------------------------------
# The store every node reaches


@dataclass(frozen=True)
class Store:
    """Artifacts by hash under ``location`` (a local directory or a URI):
    ``<location>/<kind>/<sha256>/<name>`` and a ``.complete`` marker beside it."""

    location: str

    def folder(self, artifact: Artifact) -> str:
        return storage.join(self.location, artifact.kind, artifact.sha256)

    def remote(self, artifact: Artifact) -> str:
        return storage.join(self.folder(artifact), Path(artifact.rel).name)

    def has(self, artifact: Artifact) -> bool:
        return storage.exists(storage.join(self.folder(artifact), COMPLETE))

    def publish(self, artifact: Artifact) -> bool:
        """Upload ``artifact`` from this node unless the store has it; True if uploaded."""
        if self.has(artifact):
            return False
        local, remote = artifact.local, self.remote(artifact)
        for file in _files(local) if artifact.is_dir else [local]:
            _upload_file(file, storage.join(remote, file.relative_to(local).as_posix()) if artifact.is_dir else remote)
        storage.write_text(storage.join(self.folder(artifact), COMPLETE), artifact.sha256)
        return True

    def pull(self, artifact: Artifact) -> bool:
        """Make this node's copy of ``artifact`` the store's bytes; True if it was fetched.
        A local copy with the right hash stays; one with other bytes (built on this node by
        an earlier run) is replaced whole, so every node reads the same bytes."""
        local = artifact.local
        with locked(local):
            if local.exists() and content_hash(local) == artifact.sha256:
                return False
            if not self.has(artifact):
                raise MissingArtifact(f"the prepared {artifact.short} is not in {self.location}; "
                                      "run the sweep (or raydt train) again from its driver, which prepares it")
            staging = local.with_name(f".{local.name}.tmp-{os.getpid()}")
            _remove(staging)
            try:
                if artifact.is_dir:
                    storage.Mirror(staging, self.remote(artifact)).sync_down()
                else:
                    _download_file(self.remote(artifact), staging)
                got = content_hash(staging)
                if got != artifact.sha256:
                    raise MissingArtifact(f"the copy of {artifact.short} in {self.location} has sha256 {got[:12]}: "
                                          "the store was changed after the driver prepared it; run the driver again")
                _remove(local)
                os.replace(staging, local)
            finally:
                _remove(staging)
        return True


def _upload_file(local: Path, remote: str) -> None:
    """Copy one file to the store, published whole (see :mod:`raydt.storage`)."""
    if not storage.is_uri(remote):
        from raydt.fsutil import atomic_path

        with atomic_path(remote) as tmp:
            shutil.copyfile(local, tmp)
        return
    fs, path = storage.filesystem(remote)

    def copy(out):
        with open(local, "rb") as src:
            while chunk := src.read(1 << 22):
                out.write(chunk)

    storage.put(fs, path, copy)


def _download_file(remote: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    if not storage.is_uri(remote):
        shutil.copyfile(remote, local)
        return
    fs, path = storage.filesystem(remote)
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def store_for(storage_root: str | None) -> Store | None:
    """Where a driver publishes: ``$RAYDT_ARTIFACTS``, else ``<storage_root>/prepared`` when
    the sweep's (or run's) storage is a URI, else nowhere (one machine: every run reads the
    driver's own caches)."""
    named = os.environ.get(VARIABLE)
    if named:
        return Store(named if storage.is_uri(named) else str(Path(named).expanduser().resolve()))
    if storage_root is not None and storage.is_uri(storage_root):
        return Store(storage.join(storage_root, "prepared"))
    return None


@dataclass(frozen=True)
class Prepared:
    """What a driver hands its runs: the artifacts it prepared and the store holding them
    (None: this machine's caches)."""

    artifacts: tuple[Artifact, ...] = ()
    store: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"artifacts": [a.to_dict() for a in self.artifacts], "store": self.store}

    @classmethod
    def from_dict(cls, values: dict | None) -> Prepared:
        values = values or {}
        return cls(tuple(Artifact.from_dict(a) for a in values.get("artifacts") or []), values.get("store"))


# --------------------------------------------------------------------------------------
# What a run may read (one run per process: a Ray Train worker)


@dataclass
class _Active:
    artifacts: dict[tuple[str, str], Artifact]
    store: str


_active: _Active | None = None


def activate(artifacts: Iterable[Artifact], store: Store, log: Callable[[str], None] = print) -> list[Artifact]:
    """Pull ``artifacts`` into this node's caches and make them the only prepared inputs
    this process may read: from now on a missing one fails (:func:`refuse_build`)."""
    global _active
    chosen = list(artifacts)
    for artifact in chosen:
        if store.pull(artifact):
            log(f"pulled {artifact.short} from {store.location}")
    _active = _Active({(a.kind, a.need): a for a in chosen}, store.location)
    return chosen


def deactivate() -> None:
    global _active
    _active = None


def lookup(kind: str, need: str) -> Path | None:
    """This node's path of the prepared ``kind`` for ``need``, when a store is active."""
    if _active is None:
        return None
    artifact = _active.artifacts.get((kind, need))
    return artifact.local if artifact is not None else None


def refuse_build(what: str) -> None:
    """Called where raydt would build ``what`` (generate, download, pre-train, cluster,
    tokenise): an error while a store is active, since the driver prepares everything."""
    if _active is not None:
        raise MissingArtifact(
            f"{what} was not prepared before the run started, and runs of a prepared sweep never build on "
            f"their own node (store {_active.store}); start the sweep (or raydt train) again: its driver "
            "prepares every dataset, backbone, k-means and text the search space names"
        )
