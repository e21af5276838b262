"""The locomotion tasks raydt knows: environments, reference scores, evaluation targets.

Reference scores are D4RL's (``d4rl/infos.py``): normalized score = 100 · (return − min) /
(max − min), so 0 is a random policy and 100 is D4RL's expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raydt.errors import DataError

ENV_VERSIONS = ("v4", "v5")
"""gymnasium versions of the MuJoCo environments; v4 is closest to D4RL's v2."""


@dataclass(frozen=True)
class Task:
    """One MuJoCo locomotion task as D4RL and gymnasium name it."""

    name: str
    """Short name used in dataset URIs (``hopper``)."""
    gym_name: str
    """gymnasium environment name without version (``Hopper``)."""
    obs_dim: int
    """Observation size."""
    act_dim: int
    """Action size (actions lie in [-1, 1])."""
    ref_min_score: float
    """D4RL's random-policy return."""
    ref_max_score: float
    """D4RL's expert return."""
    target_returns: tuple[float, ...]
    """Decision Transformer's evaluation targets; the first is Reid et al.'s (Table 7)."""
    max_episode_steps: int = 1000
    """Time limit of the environment, as in D4RL."""

    def env_id(self, version: str = "v4") -> str:
        """The gymnasium id for this task at ``version`` (``Hopper-v4``)."""
        if version not in ENV_VERSIONS:
            raise DataError(
                f"unknown environment version {version!r} for {self.name}; "
                f"valid versions: {', '.join(ENV_VERSIONS)}"
            )
        return f"{self.gym_name}-{version}"

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray:
        """D4RL normalized score of raw ``returns`` (any shape)."""
        returns = np.asarray(returns, dtype=np.float64)
        return 100.0 * (returns - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("hopper", "Hopper", 11, 3, -20.272305, 3234.3, (3600.0, 1800.0)),
        Task("halfcheetah", "HalfCheetah", 17, 6, -280.178953, 12135.0, (6000.0, 12000.0)),
        Task("walker2d", "Walker2d", 17, 6, 1.629008, 4592.3, (5000.0, 2500.0)),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``, or an error listing the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def task_from_env_id(env_id: str | None) -> Task | None:
    """The task a gymnasium or Minari id refers to (``Hopper-v4``, ``mujoco/hopper/...``)."""
    if not env_id:
        return None
    key = env_id.lower().replace("_", "").replace("-", "/")
    for task in TASKS.values():
        if key.startswith(task.gym_name.lower() + "/") or f"/{task.name}/" in f"/{key}/":
            return task
    return None


def make_env(env_id: str, **kwargs):
    """``gymnasium.make`` without the notice that v4 is out of date.

    raydt uses the v4 MuJoCo environments on purpose (closest to D4RL's v2 data), so the
    deprecation notice gymnasium prints for each of them is noise.
    """
    import warnings

    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
        return gym.make(env_id, **kwargs)
