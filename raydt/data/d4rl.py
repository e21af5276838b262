"""raydt's own reader and writer of D4RL's HDF5 layout (no ``d4rl`` package).

Layout: flat datasets ``observations (N, obs)``, ``actions (N, act)``, ``rewards (N,)``,
``terminals (N,)`` and ``timeouts (N,)`` (absent in D4RL's oldest files), optionally
``next_observations``, ``infos/*`` and ``metadata/*``. An episode ends at ``terminals |
timeouts``. raydt's generated datasets use the same layout and add ``metadata/env_id`` and
``metadata/raydt`` (a JSON description of how the file was made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from raydt.artifacts import refuse_build
from raydt.data.tasks import TASKS, get_task
from raydt.data.trajectories import Trajectories
from raydt.errors import DataError
from raydt.fsutil import atomic_path, d4rl_dir
from raydt.offline import is_offline

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
"""Datasets every D4RL-layout file must hold."""

D4RL_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"
"""Where D4RL's MuJoCo v2 files are published (override with $RAYDT_D4RL_BASE_URL)."""

D4RL_QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")
"""Dataset kinds D4RL publishes for each MuJoCo task."""

_NAME = re.compile(r"^(?P<task>[a-z0-9]+)-(?P<quality>[a-z-]+)-v2$")


def d4rl_filename(name: str) -> str:
    """``hopper-medium-replay-v2`` → ``hopper_medium_replay-v2.hdf5`` (D4RL's file names)."""
    match = _NAME.match(name)
    if not match or match["task"] not in TASKS or match["quality"] not in D4RL_QUALITIES:
        raise DataError(
            f"unknown D4RL dataset {name!r}; expected <task>-<quality>-v2 with task in "
            f"{', '.join(TASKS)} and quality in {', '.join(D4RL_QUALITIES)} "
            "(or give a path: d4rl:/path/to/file.hdf5)"
        )
    return f"{match['task']}_{match['quality'].replace('-', '_')}-v2.hdf5"


def d4rl_env_id(name: str) -> str | None:
    """The gymnasium environment closest to a D4RL file's (v4 for D4RL's v2 data)."""
    stem = Path(name).name.lower()
    for task in TASKS.values():
        if stem.startswith(task.name):
            return get_task(task.name).env_id("v4")
    return None


def fetch_d4rl(name: str, download: bool = True) -> Path:
    """Local path of D4RL dataset ``name``, downloading it first when allowed and possible."""
    filename = d4rl_filename(name)
    path = d4rl_dir() / filename
    if path.is_file():
        return path
    base = os.environ.get("RAYDT_D4RL_BASE_URL", D4RL_BASE_URL).rstrip("/")
    url = f"{base}/{filename}"
    task, quality = name[: -len("-v2")].split("-", 1)
    hint = (
        f"download it with `curl -fL -o {path} {url}`, set $D4RL_DATASET_DIR to the folder "
        f"that holds {filename}, or use raydt's offline stand-in: "
        f"`raydt data make generated:{task}-{quality}`"
    )
    if not download or is_offline():
        raise DataError(f"d4rl:{name}: {path} not found; {hint}")
    refuse_build(f"the dataset d4rl:{name}")
    try:
        _download(url, path)
    except (urllib.error.URLError, OSError, TimeoutError, DataError) as exc:
        raise DataError(f"d4rl:{name}: {path} not found and downloading {url} failed ({exc}); {hint}") from None
    return path


def _download(url: str, path: Path) -> None:
    """Fetch ``url`` to ``path`` through a temporary name, so a cut transfer leaves nothing."""
    with atomic_path(path) as tmp:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        read_d4rl_hdf5(tmp)  # refuse to install a file the reader would reject


def read_d4rl_hdf5(path: str | Path, source: str | None = None) -> Trajectories:
    """Load a D4RL-layout HDF5 file into :class:`Trajectories`, checking keys and lengths."""
    import h5py

    path = Path(path)
    label = source or str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{label}: cannot read {path} as HDF5 ({exc})") from None
    with f:
        missing = [key for key in REQUIRED_KEYS if key not in f]
        if missing:
            raise DataError(
                f"{label}: {path} lacks required datasets {', '.join(missing)}; "
                f"a D4RL-layout file needs {', '.join(REQUIRED_KEYS)} (and usually timeouts)"
            )
        keys = [*REQUIRED_KEYS, *(["timeouts"] if "timeouts" in f else [])]
        lengths = {key: f[key].shape[0] if f[key].shape else 0 for key in keys}
        n = lengths["observations"]
        wrong = {key: length for key, length in lengths.items() if length != n}
        if wrong:
            detail = ", ".join(f"{key} has {length}" for key, length in wrong.items())
            raise DataError(f"{label}: {path} has inconsistent lengths: observations has {n}, {detail}")
        if n == 0:
            raise DataError(f"{label}: {path} holds no transitions")
        if f["observations"].ndim != 2:
            raise DataError(f"{label}: observations must be (N, obs_dim), got shape {f['observations'].shape}")
        for key in keys:  # strings or compound records would fail deep inside training
            kind = f[key].dtype.kind
            if kind not in "fiub":
                raise DataError(f"{label}: {path} stores {key} as {f[key].dtype} values; a D4RL-layout file "
                                f"holds numbers ({key} as floats{' or booleans' if key in ('terminals', 'timeouts') else ''})")
        arrays = {key: f[key][()] for key in keys}
        metadata: dict[str, Any] = {}
        if "metadata/raydt" in f:
            metadata = json.loads(_as_str(f["metadata/raydt"][()]))
        env_id = _as_str(f["metadata/env_id"][()]) if "metadata/env_id" in f else d4rl_env_id(path.name)
    return Trajectories.from_flags(
        arrays["observations"], arrays["actions"], arrays["rewards"], arrays["terminals"],
        arrays.get("timeouts"), env_id=env_id, source=label, metadata=metadata,
    )


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_d4rl_hdf5(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    env_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``arrays`` (D4RL keys; ``infos/qpos`` style names allowed) atomically.

    The file appears under its final name only once complete, so a loader never sees a
    half-written dataset.
    """
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression="gzip", compression_opts=1)
        if env_id is not None:
            f["metadata/env_id"] = env_id
        if metadata is not None:
            f["metadata/raydt"] = json.dumps(metadata, sort_keys=True)
    return path
