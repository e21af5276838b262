"""Return-conditioned rollouts, all episodes of a target stepped together.

The original DT code (and Reid's) evaluates one episode at a time with a batch of one: for
10 episodes of 1000 steps that is 10,000 forward passes. Here the N episodes of a target
run on one gymnasium vector env and every step is ONE forward pass of N windows. Because
all episodes share the step counter t, the K-step window is the same slice for all of
them, and finished episodes simply stop counting (the vector env resets them behind our
back; their outputs are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from raydt.data.sampler import ACTION_PAD
from raydt.data.tasks import make_env, task_from_env_id
from raydt.model.dt import DecisionTransformer


@dataclass
class RolloutResult:
    """Outcome of the episodes of one target return."""

    target: float
    """The return the model was conditioned on (unscaled)."""
    returns: np.ndarray
    """(N,) undiscounted episode returns."""
    lengths: np.ndarray
    """(N,) episode lengths."""


@torch.no_grad()
def rollout(
    model: DecisionTransformer,
    env_id: str,
    target_return: float,
    seeds: Sequence[int],
    state_mean: np.ndarray,
    state_std: np.ndarray,
    reward_scale: float,
    device: torch.device | str = "cpu",
    max_steps: int | None = None,
) -> RolloutResult:
    """Run ``len(seeds)`` episodes conditioned on ``target_return``, one forward per step."""
    import gymnasium as gym

    n = len(seeds)
    device = torch.device(device)
    envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(n)])
    horizon = max_steps or envs.envs[0].spec.max_episode_steps or 1000
    k = model.args.context_length
    obs_dim, act_dim = model.args.obs_dim, model.args.act_dim
    dtype = next(model.parameters()).dtype  # float64 models roll out in float64 (tests)
    mean = torch.as_tensor(state_mean, dtype=dtype, device=device)
    std = torch.as_tensor(state_std, dtype=dtype, device=device)

    # Histories of the whole episode; windows are slices of them.
    states = torch.zeros(n, horizon, obs_dim, dtype=dtype, device=device)  # (N, T, obs), normalised
    actions = torch.full((n, horizon, act_dim), ACTION_PAD, dtype=dtype, device=device)  # (N, T, act)
    rtg = torch.zeros(n, horizon, 1, dtype=dtype, device=device)  # (N, T, 1), scaled
    timesteps = torch.arange(horizon, device=device).expand(n, horizon)  # (N, T)

    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    remaining = torch.full((n,), float(target_return) * reward_scale, dtype=dtype, device=device)  # (N,)
    obs, _ = envs.reset(seed=list(seeds))
    was_training = model.training
    model.eval()
    try:
        for t in range(horizon):
            states[:, t] = (torch.as_tensor(obs, dtype=dtype, device=device) - mean) / std
            rtg[:, t, 0] = remaining
            actions[:, t] = 0.0  # placeholder: a_t's token comes after s_t and is never seen
            start = max(0, t + 1 - k)
            pad = k - (t + 1 - start)

            def window(x: torch.Tensor, fill: float) -> torch.Tensor:
                part = x[:, start : t + 1]  # (N, ≤K, ...)
                if pad == 0:
                    return part
                shape = (n, pad, *part.shape[2:])
                return torch.cat([torch.full(shape, fill, dtype=part.dtype, device=device), part], dim=1)

            mask = torch.zeros(n, k, dtype=torch.bool, device=device)
            mask[:, pad:] = True
            pred = model(
                window(states, 0.0), window(actions, ACTION_PAD), window(rtg, 0.0),
                window(timesteps, 0), mask,
            )[:, -1]  # (N, act): the action for step t
            actions[:, t] = pred
            obs, reward, terminated, truncated, _ = envs.step(pred.float().cpu().numpy().astype(np.float64))
            returns += reward * active
            lengths += active
            remaining = remaining - torch.as_tensor(reward, dtype=dtype, device=device) * reward_scale
            active &= ~(terminated | truncated)
            if not active.any():
                break
    finally:
        model.train(was_training)
        envs.close()
    return RolloutResult(float(target_return), returns, lengths)


def evaluate(
    model: DecisionTransformer,
    env_id: str,
    targets: Sequence[float],
    episodes: int,
    seed: int,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    reward_scale: float,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], list[RolloutResult]]:
    """Evaluate every target on the same episode seeds; metrics named as in docs/metrics.md."""
    seeds = [seed * 100_003 + i for i in range(episodes)]
    task = task_from_env_id(env_id)
    metrics: dict[str, float] = {}
    results = []
    for i, target in enumerate(targets):
        res = rollout(model, env_id, target, seeds, state_mean, state_std, reward_scale, device)
        results.append(res)
        prefix = f"eval/rtg{target:g}/"
        metrics[prefix + "return_mean"] = float(res.returns.mean())
        metrics[prefix + "return_std"] = float(res.returns.std())
        metrics[prefix + "length_mean"] = float(res.lengths.mean())
        if task is not None:
            scores = task.normalized_score(res.returns)
            metrics[prefix + "normalized_score"] = float(scores.mean())
            metrics[prefix + "normalized_score_std"] = float(scores.std())
        if i == 0:  # the headline numbers follow the first target
            metrics["eval/return_mean"] = metrics[prefix + "return_mean"]
            metrics["eval/return_std"] = metrics[prefix + "return_std"]
            if task is not None:
                metrics["eval/normalized_score"] = metrics[prefix + "normalized_score"]
    return metrics, results
