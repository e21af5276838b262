"""Datasets by URI: one entry point for every source.

- ``d4rl:hopper-medium-v2`` (looked up in $D4RL_DATASET_DIR or ~/.d4rl/datasets, downloaded
  from D4RL's public URLs when the network allows) or ``d4rl:/path/to/file.hdf5``
- ``minari:mujoco/hopper/medium-v0``
- ``generated:hopper-medium[?steps=N&seed=S&env=v4|v5]`` (made locally on first use)
- ``dqn-replay:/path/to/<Game>/<run>[?steps=N&buffers=B&per_buffer=T&seed=S&game=NAME]``
  (Atari, DQN-replay checkpoints; DT's defaults: 500k steps, 50 buffers, 10 per buffer)
- ``generated:atari-pong[?steps=N&seed=S]`` (recorded on the ROM, in the DQN-replay format)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from raydt.data.d4rl import fetch_d4rl, read_d4rl_hdf5
from raydt.data.generate import load_generated, parse_generated
from raydt.data.trajectories import Trajectories
from raydt.errors import DataError

SCHEMES = ("d4rl", "minari", "generated", "dqn-replay")
"""URI schemes :func:`load_dataset` understands."""


def split_uri(uri: str) -> tuple[str, str]:
    """``"d4rl:hopper-medium-v2"`` → ``("d4rl", "hopper-medium-v2")``, checking the scheme."""
    scheme, sep, body = uri.partition(":")
    if not sep or scheme not in SCHEMES or not body:
        raise DataError(
            f"dataset URI {uri!r} is not understood; use one of: d4rl:NAME or d4rl:/path.hdf5, "
            "minari:ID, generated:TASK-QUALITY (for example generated:hopper-medium), "
            "dqn-replay:/path/to/GAME/RUN, generated:atari-GAME"
        )
    return scheme, body


def check_dataset_uri(uri: str) -> None:
    """Refuse a URI whose scheme, generated task or D4RL name is unknown (a DataError that
    says what is valid), without reading or making anything."""
    scheme, body = split_uri(uri)
    if scheme == "generated" and body.startswith("atari-"):
        from raydt.data.atari import parse_atari

        parse_atari(body)
    elif scheme == "generated":
        parse_generated(body)
    elif scheme == "d4rl" and not (body.endswith((".hdf5", ".h5")) or "/" in body):
        from raydt.data.d4rl import d4rl_filename

        d4rl_filename(body)


def load_dataset(uri: str, download: bool = True, log: Callable[[str], None] = print) -> Trajectories:
    """Load the dataset ``uri`` names into flat :class:`Trajectories` (Atari sources:
    :class:`raydt.data.dqn_replay.AtariTrajectories`)."""
    scheme, body = split_uri(uri)
    if scheme == "dqn-replay" or (scheme == "generated" and body.startswith("atari-")):
        from raydt.data.atari import load_atari

        return load_atari(scheme, body, log=log)
    if scheme == "generated":
        return load_generated(parse_generated(body), log=log)
    if scheme == "minari":
        from raydt.data.minari_source import read_minari

        return read_minari(body, download=download)
    # d4rl: a path if it looks like one, else a D4RL dataset name
    if body.endswith((".hdf5", ".h5")) or "/" in body:
        path = Path(body).expanduser()
        if not path.is_file():
            raise DataError(f"{uri}: file {path} not found")
        return read_d4rl_hdf5(path, source=uri)
    return read_d4rl_hdf5(fetch_d4rl(body, download=download), source=uri)
