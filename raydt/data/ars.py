"""Augmented Random Search (Mania, Guy, Recht 2018, "V2-t") for linear behaviour policies.

raydt's generated datasets need behaviour policies of known quality along a training run
(random → medium → expert). A linear policy a = clip(W · (s − μ) / σ) trained with ARS gets
there in minutes on one CPU core, and its whole history fits in a few kilobytes, so the
trained snapshots are committed with the package and making a dataset needs rollouts only.

Nothing here imports torch: policies are plain NumPy matrices.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raydt.data.tasks import Task, make_env
from raydt.fsutil import atomic_path


@dataclass(frozen=True)
class ARSSettings:
    """Hyper-parameters of one ARS V2-t run (defaults per task in :data:`ARS_DEFAULTS`)."""

    step_size: float
    """α: learning rate of the parameter update."""
    num_directions: int
    """N: random directions explored per iteration (2N rollouts)."""
    top_directions: int
    """b: best directions kept for the update."""
    noise: float
    """ν: scale of the parameter perturbations."""
    shift: float
    """Per-step bonus removed from training rewards (ARS paper: the survival bonus)."""
    env_steps: int
    """Training budget in environment steps."""
    eval_every: int = 5
    """Iterations between evaluated snapshots."""
    eval_episodes: int = 5
    """Deterministic episodes per snapshot evaluation."""


# Table 9 of the ARS paper (V2-t) for the step size, directions and noise; the budget is
# what reaches an expert-level linear policy on one core in about half an hour.
ARS_DEFAULTS: dict[str, ARSSettings] = {
    "hopper": ARSSettings(0.01, 8, 4, 0.025, 1.0, 4_000_000),
    "halfcheetah": ARSSettings(0.02, 32, 4, 0.03, 0.0, 8_000_000),
    "walker2d": ARSSettings(0.03, 40, 30, 0.025, 1.0, 10_000_000),
}


class RunningStat:
    """Running mean and variance of observations (Chan et al.'s parallel update)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, batch: np.ndarray) -> None:
        """Fold a batch (n, dim) of observations into the statistics."""
        n = batch.shape[0]
        if n == 0:
            return
        b_mean = batch.mean(axis=0)
        b_m2 = ((batch - b_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + b_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Standard deviation, 1 where nothing has been seen or the state never varies."""
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / (self.count - 1))
        return np.where(std < 1e-8, 1.0, std)


@dataclass(frozen=True)
class LinearPolicy:
    """a = clip(W · (s − mean) / std, −1, 1)."""

    weights: np.ndarray
    """(act_dim, obs_dim)"""
    mean: np.ndarray
    """(obs_dim,)"""
    std: np.ndarray
    """(obs_dim,)"""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions for observations (..., obs_dim) → (..., act_dim)."""
        return np.clip(((obs - self.mean) / self.std) @ self.weights.T, -1.0, 1.0)


def rollout(
    env,
    act: Callable[[np.ndarray], np.ndarray],
    seed: int,
    shift: float = 0.0,
    record: list[np.ndarray] | None = None,
) -> tuple[float, float, int]:
    """One episode; returns (shifted return, true return, steps).

    Observations are appended to ``record`` when given, for the running statistics.
    """
    obs, _ = env.reset(seed=seed)
    total = shifted = 0.0
    steps = 0
    done = False
    while not done:
        if record is not None:
            record.append(obs)
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += float(reward)
        shifted += float(reward) - shift
        steps += 1
        done = terminated or truncated
    return shifted, total, steps


def train_ars(
    task: Task,
    settings: ARSSettings,
    seed: int,
    env_version: str = "v4",
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """Train a linear policy with ARS V2-t and return its evaluated snapshots.

    The result (also written to ``out`` as ``.npz`` after every evaluation, atomically) holds
    ``weights`` (S, act, obs), ``mean``/``std`` (S, obs), ``eval_return_mean``/``_std`` (S,),
    ``iteration`` and ``env_steps`` (S,) and a JSON ``meta`` string.
    """
    env_id = task.env_id(env_version)
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    weights = np.zeros((task.act_dim, task.obs_dim))
    stat = RunningStat(task.obs_dim)
    mean, std = stat.mean.copy(), stat.std.copy()
    snapshots: dict[str, list] = {k: [] for k in (
        "weights", "mean", "std", "eval_return_mean", "eval_return_std", "iteration", "env_steps"
    )}
    env_steps = 0
    iteration = 0
    started = time.time()
    meta = {
        "task": task.name,
        "env_id": env_id,
        "seed": seed,
        "settings": asdict(settings),
        "command": f"raydt data train-policy {task.name} --seed {seed} --env {env_version}",
    }

    def evaluate() -> None:
        policy = LinearPolicy(weights.copy(), mean.copy(), std.copy())
        returns = [
            rollout(env, policy.act, seed=int(rng.integers(2**31)))[1]
            for _ in range(settings.eval_episodes)
        ]
        for key, value in (
            ("weights", policy.weights), ("mean", policy.mean), ("std", policy.std),
            ("eval_return_mean", np.mean(returns)), ("eval_return_std", np.std(returns)),
            ("iteration", iteration), ("env_steps", env_steps),
        ):
            snapshots[key].append(value)
        score = float(task.normalized_score(np.mean(returns)))
        log(
            f"{task.name} iter {iteration:4d} steps {env_steps:9d} "
            f"return {np.mean(returns):8.1f} ± {np.std(returns):6.1f} "
            f"(normalized {score:5.1f}) {time.time() - started:6.0f}s"
        )
        if out is not None:
            save_snapshots(out, _stack(snapshots), meta)

    evaluate()
    while env_steps < settings.env_steps:
        deltas = rng.standard_normal((settings.num_directions, *weights.shape))
        seen: list[np.ndarray] = []
        plus = np.empty(settings.num_directions)
        minus = np.empty(settings.num_directions)
        for k in range(settings.num_directions):
            episode_seed = int(rng.integers(2**31))
            for sign, store in ((1.0, plus), (-1.0, minus)):
                policy = LinearPolicy(weights + sign * settings.noise * deltas[k], mean, std)
                shifted, _, steps = rollout(env, policy.act, episode_seed, settings.shift, seen)
                store[k] = shifted
                env_steps += steps
        # Keep the b directions whose better side scored highest (V2-t).
        top = np.argsort(-np.maximum(plus, minus))[: settings.top_directions]
        sigma = np.concatenate([plus[top], minus[top]]).std()
        step = ((plus[top] - minus[top])[:, None, None] * deltas[top]).sum(axis=0)
        weights = weights + settings.step_size / (settings.top_directions * max(sigma, 1e-8)) * step
        # Statistics move only between iterations so every rollout of one iteration sees the
        # same normalisation (ARS V2).
        stat.update(np.asarray(seen))
        mean, std = stat.mean.copy(), stat.std.copy()
        iteration += 1
        if iteration % settings.eval_every == 0:
            evaluate()
    if iteration % settings.eval_every != 0:
        evaluate()
    env.close()
    return _stack(snapshots) | {"meta": np.asarray(json.dumps(meta))}


def _stack(snapshots: dict[str, list]) -> dict[str, np.ndarray]:
    return {key: np.asarray(values) for key, values in snapshots.items()}


def save_snapshots(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write snapshots to ``path`` atomically (a temporary name, then a rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: v for k, v in arrays.items() if k != "meta"},
                            meta=np.asarray(json.dumps(meta)))
