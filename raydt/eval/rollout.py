"""Return-conditioned rollouts, all episodes of a target stepped together.

The original DT code (and Reid's) evaluates one episode at a time with a batch of one: for
10 episodes of 1000 steps that is 10,000 forward passes. Here the N episodes of a target
run on one gymnasium vector env and every step is ONE forward pass of N windows. Because
all episodes share the step counter t, the K-step window is the same slice for all of
them, and finished episodes simply stop counting (the vector env resets them behind our
back; their outputs are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from raydt.data.sampler import ACTION_PAD
from raydt.data.tasks import make_env
from raydt.model.dt import DecisionTransformer
from raydt.model.inference import ActionPolicy


@dataclass
class RolloutResult:
    """Outcome of the episodes of one target return."""

    target: float
    """The return the model was conditioned on (unscaled)."""
    returns: np.ndarray
    """(N,) undiscounted episode returns."""
    lengths: np.ndarray
    """(N,) episode lengths."""
    actions: np.ndarray
    """(N, max length, act_dim) actions taken (rows past an episode's end are meaningless)."""


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

    # Histories of the whole episode behind K − 1 steps of left padding, so the window of
    # step t is the plain slice [t, t + K) of every buffer (history index = K − 1 + t).
    length = k - 1 + horizon
    states = torch.zeros(n, length, obs_dim, dtype=dtype, device=device)  # (N, K-1+T, obs), normalised
    actions = torch.full((n, length, act_dim), ACTION_PAD, dtype=dtype, device=device)  # (N, K-1+T, act)
    rtg = torch.zeros(n, length, 1, dtype=dtype, device=device)  # (N, K-1+T, 1), scaled
    timesteps = (torch.arange(length, device=device) - (k - 1)).clamp(min=0).expand(n, length)  # (N, K-1+T)
    positions = torch.arange(k, device=device)  # (K,)

    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    remaining = torch.full((n,), float(target_return) * reward_scale, dtype=dtype, device=device)  # (N,)
    obs, _ = envs.reset(seed=list(seeds))
    was_training = model.training
    model.eval()
    policy = ActionPolicy(model, rows_hint=n * 3 * k)  # packed weights on CPUs, the next action only
    try:
        for t in range(horizon):
            i = k - 1 + t
            states[:, i] = (torch.as_tensor(obs, dtype=dtype, device=device) - mean) / std
            rtg[:, i, 0] = remaining
            actions[:, i] = 0.0  # placeholder: a_t's token comes after s_t and is never seen
            mask = (positions >= k - 1 - t).expand(n, k)  # (N, K): False before the first step
            window = slice(t, t + k)
            pred = policy(
                states[:, window], actions[:, window], rtg[:, window], timesteps[:, window], mask
            )  # (N, act): the action for step t
            actions[:, i] = pred
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
    taken = actions[:, k - 1 : k - 1 + int(lengths.max())].float().cpu().numpy()
    return RolloutResult(float(target_return), returns, lengths, taken)
