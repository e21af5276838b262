"""Minari datasets (the maintained successor of D4RL) into :class:`Trajectories`.

Offline, ``minari.load_dataset`` finds datasets under $MINARI_DATASETS_PATH or
~/.minari/datasets; raydt asks Minari to download only when the dataset is not there and
the network is allowed ($RAYDT_OFFLINE unset).
"""

from __future__ import annotations

import numpy as np

from raydt.artifacts import refuse_build
from raydt.data.trajectories import Trajectories
from raydt.errors import DataError
from raydt.fsutil import minari_dir
from raydt.offline import is_offline


def read_minari(dataset_id: str, download: bool = True) -> Trajectories:
    """Load Minari dataset ``dataset_id`` (``mujoco/hopper/medium-v0``) as flat trajectories."""
    import minari

    source = f"minari:{dataset_id}"
    local = set(minari.list_local_datasets())
    if dataset_id not in local:
        root = minari_dir()
        hint = (
            f"looked in {root}; fetch it with `minari download {dataset_id}` "
            "(needs the network), or point $MINARI_DATASETS_PATH at a folder that holds it"
        )
        if not download or is_offline():
            raise DataError(f"{source}: not found locally; {hint}")
        refuse_build(f"the dataset {source}")
        try:
            minari.download_dataset(dataset_id)
        except Exception as exc:  # Minari raises several types for unknown ids and no network
            raise DataError(f"{source}: not found locally and download failed ({exc}); {hint}") from None
    dataset = minari.load_dataset(dataset_id)

    observations, actions, rewards, terminals, lengths = [], [], [], [], []
    for episode in dataset.iterate_episodes():
        if not isinstance(episode.observations, np.ndarray):
            raise DataError(
                f"{source}: observations are {type(episode.observations).__name__}, not arrays; "
                "raydt reads datasets with Box observation spaces only"
            )
        steps = len(episode.rewards)
        # Minari stores T + 1 observations per episode (the final one has no action).
        observations.append(episode.observations[:steps])
        actions.append(np.asarray(episode.actions).reshape(steps, -1))
        rewards.append(episode.rewards)
        terminals.append(episode.terminations)
        lengths.append(steps)
    if not lengths:
        raise DataError(f"{source}: the dataset holds no episodes")
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64)
    env_spec = dataset.spec.env_spec
    return Trajectories(
        np.concatenate(observations),
        np.concatenate(actions),
        np.concatenate(rewards),
        np.concatenate(terminals),
        starts,
        lengths_arr,
        env_id=env_spec.id if env_spec is not None else None,
        source=source,
        metadata={"minari_id": dataset_id},
    )
