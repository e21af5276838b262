"""Offline trajectories as flat arrays plus an episode index.

Every source (D4RL HDF5, Minari, generated) ends here: transitions of all episodes laid end
to end in contiguous arrays, episode ``e`` occupying ``[starts[e], starts[e] + lengths[e])``.
Everything derived (returns-to-go, timesteps, statistics) is computed once, vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raydt.data.tasks import Task, task_from_env_id
from raydt.errors import DataError


def episode_bounds(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split N transitions at episode-end flags.

    ``ends`` (N,) is true on the last transition of an episode (``terminals | timeouts``).
    Returns ``starts`` (E,), ``lengths`` (E,) and whether the final episode has no end flag
    (a truncated trailing segment, which is kept).
    """
    ends = np.asarray(ends, dtype=bool)
    n = ends.shape[0]
    last = np.flatnonzero(ends)  # index of each episode's final transition
    trailing = n > 0 and (last.size == 0 or last[-1] != n - 1)
    if trailing:
        last = np.append(last, n - 1)
    starts = np.concatenate([[0], last[:-1] + 1]).astype(np.int64) if last.size else np.zeros(0, np.int64)
    lengths = (last + 1 - starts).astype(np.int64)
    return starts, lengths, bool(trailing)


def segment_ids(lengths: np.ndarray) -> np.ndarray:
    """Episode index of every transition: (E,) lengths → (N,) ids."""
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


def returns_to_go(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go R̂_t = Σ_{t' ≥ t, same episode} r_t', for all N transitions.

    One reversed cumulative sum over the whole array, minus the sum beyond each episode's
    end, in float64 so that 1M-step datasets do not lose precision.
    """
    r = np.asarray(rewards, dtype=np.float64)
    suffix = np.cumsum(r[::-1])[::-1]  # suffix[t] = Σ_{t' ≥ t} r_t' over the whole array
    ends = np.cumsum(lengths)  # one past each episode's last index
    beyond = np.append(suffix, 0.0)[ends]  # sum of everything after each episode
    return suffix - np.repeat(beyond, lengths)


@dataclass
class Trajectories:
    """All transitions of a dataset, episodes contiguous."""

    observations: np.ndarray
    """(N, obs_dim) float32"""
    actions: np.ndarray
    """(N, act_dim) float32"""
    rewards: np.ndarray
    """(N,) float32"""
    terminals: np.ndarray
    """(N,) bool: the environment ended the episode (not a time limit)."""
    starts: np.ndarray
    """(E,) int64: first transition of each episode."""
    lengths: np.ndarray
    """(E,) int64"""
    env_id: str | None = None
    """gymnasium id of the environment the data came from, when known."""
    source: str = ""
    """Where the data was read from (a URI and a path), for messages."""
    truncated_tail: bool = False
    """The last episode had no end flag and was kept as a truncated episode."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form facts about the dataset (how it was made)."""

    def __post_init__(self) -> None:
        self.observations = np.ascontiguousarray(self.observations, dtype=np.float32)
        self.actions = np.ascontiguousarray(self.actions, dtype=np.float32)
        if self.actions.ndim == 1:
            self.actions = self.actions[:, None]
        self.rewards = np.ascontiguousarray(self.rewards, dtype=np.float32).reshape(-1)
        self.terminals = np.asarray(self.terminals, dtype=bool).reshape(-1)
        n = self.observations.shape[0]
        if n == 0:
            raise ValueError(f"dataset {self.source} holds no transitions")
        for name in ("actions", "rewards", "terminals"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, observations {n}")
        if int(self.lengths.sum()) != n:
            raise ValueError(f"episode lengths sum to {int(self.lengths.sum())}, not {n}")
        # NaN or inf here would surface only as "training diverged" much later.
        for name in ("observations", "actions", "rewards"):
            bad = ~np.isfinite(getattr(self, name))
            if bad.any():
                first = np.argwhere(bad)[0]
                where = f"[{', '.join(str(int(i)) for i in first)}]"
                raise DataError(f"dataset {self.source or '(unnamed)'}: {name}{where} is "
                                f"{getattr(self, name)[tuple(first)]} ({int(bad.sum())} non-finite values in "
                                f"{name}); clean the file or regenerate the dataset")
        # Derived once: every later consumer (sampler, statistics, info) reads these.
        self.episode_ids = segment_ids(self.lengths)  # (N,)
        self.timesteps = np.arange(n, dtype=np.int64) - np.repeat(self.starts, self.lengths)  # (N,)
        self.returns_to_go = returns_to_go(self.rewards, self.lengths)  # (N,) float64
        self.episode_returns = self.returns_to_go[self.starts]  # (E,)

    @classmethod
    def from_flags(cls, observations, actions, rewards, terminals, timeouts=None, **kwargs) -> Trajectories:
        """Build from D4RL-style flat arrays; episodes end at ``terminals | timeouts``."""
        terminals = np.asarray(terminals, dtype=bool).reshape(-1)
        ends = terminals if timeouts is None else terminals | np.asarray(timeouts, dtype=bool).reshape(-1)
        starts, lengths, trailing = episode_bounds(ends)
        return cls(observations, actions, rewards, terminals, starts, lengths,
                   truncated_tail=trailing, **kwargs)

    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def task(self) -> Task | None:
        """The locomotion task with reference scores, when the environment is one."""
        return task_from_env_id(self.env_id)

    def state_stats(self, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (+ eps, as in DT) of all states: (obs_dim,) each."""
        mean = self.observations.mean(axis=0, dtype=np.float64)
        std = self.observations.std(axis=0, dtype=np.float64) + eps
        return mean.astype(np.float32), std.astype(np.float32)

    def info(self) -> dict[str, Any]:
        """Summary statistics; ``normalized_return_mean`` when the task has reference scores."""
        returns = self.episode_returns
        out: dict[str, Any] = {
            "source": self.source,
            "env_id": self.env_id,
            "num_episodes": self.num_episodes,
            "num_steps": self.num_steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
            "episode_length_mean": float(self.lengths.mean()),
            "num_terminal_episodes": int(self.terminals.sum()),
            "truncated_tail": self.truncated_tail,
        }
        task = self.task
        if task is not None:
            scores = task.normalized_score(returns)
            out["task"] = task.name
            out["normalized_return_mean"] = float(scores.mean())
            out["normalized_return_std"] = float(scores.std())
        return out
