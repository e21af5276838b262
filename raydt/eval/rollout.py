"""Return-conditioned rollouts, all episodes of a target stepped together.

The original DT code (and Reid's) evaluates one episode at a time with a batch of one: for
10 episodes of 1000 steps that is 10,000 forward passes. Here the N episodes of a target
step together and every step is ONE forward pass over the episodes still running. Because
all episodes share the step counter t, the K-step window is the same slice for all of
them; an episode that ends leaves the batch, so neither the model nor the simulator spends
anything on it afterwards (hopper's episodes often end after a quarter of the horizon).
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


class Staging:
    """One host buffer reused for every step's upload, pinned on CUDA so that the copy to
    the device is asynchronous (a pageable copy waits for the device to drain first).

    Reusing it is safe: each step reads its actions back after this copy, and that read
    waits for the copy, so the host never rewrites the buffer while a copy reads it.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.device = device
        self.host = torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")
        """The buffer the host fills; rows past a step's count are stale."""

    def upload(self, rows: int) -> torch.Tensor:
        """The first ``rows`` rows on the device (on a CPU: the buffer itself, read at once)."""
        return self.host[:rows].to(self.device, non_blocking=True)


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
    n = len(seeds)
    device = torch.device(device)
    # One env per episode, stepped only while its episode lasts (a vector env would keep
    # simulating, and the model keep computing, finished episodes until the longest ends).
    envs = [make_env(env_id) for _ in range(n)]
    horizon = max_steps or envs[0].spec.max_episode_steps or 1000
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
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    remaining = np.full(n, float(target_return) * reward_scale, dtype=np_dtype)  # (N,) scaled, on the host
    obs = np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds)])  # (N, obs)
    # Which episodes still run is known on the host (the simulators say so): the device
    # index is rebuilt only when one ends, and nothing per step asks the device for it.
    ids = np.arange(n)  # (L,) the episodes still running, ascending
    live = torch.arange(n, device=device)  # (L,) the same, on the device
    staging = Staging((n, obs_dim + 1), dtype, device)  # a step's states and returns-to-go
    was_training = model.training
    model.eval()
    policy = ActionPolicy(model, rows_hint=n * 3 * k)  # packed weights on CPUs, the next action only
    try:
        for t in range(horizon):
            i = k - 1 + t
            rows = len(ids)
            staging.host[:rows, :obs_dim] = torch.from_numpy(obs[ids])
            staging.host[:rows, obs_dim] = torch.from_numpy(remaining[ids])
            step = staging.upload(rows)  # (L, obs + 1)
            states[live, i] = (step[:, :obs_dim] - mean) / std
            rtg[live, i, 0] = step[:, obs_dim]
            actions[live, i] = 0.0  # placeholder: a_t's token comes after s_t and is never seen
            mask = (positions >= k - 1 - t).expand(rows, k)  # (L, K): False before the first step
            window = slice(t, t + k)
            pred = policy(
                states[live, window], actions[live, window], rtg[live, window], timesteps[live, window], mask
            )  # (L, act): the action for step t of each live episode
            actions[live, i] = pred
            taken = pred.float().cpu().numpy().astype(np.float64)  # the step's one device→host copy
            reward = np.zeros(rows)
            ended = np.zeros(rows, dtype=bool)
            for row, j in enumerate(ids):
                obs[j], reward[row], terminated, truncated, _ = envs[j].step(taken[row])
                ended[row] = terminated or truncated
            returns[ids] += reward
            lengths[ids] += 1
            # As the model's dtype computes it: the reward rounded first, then scaled.
            remaining[ids] -= reward.astype(np_dtype) * np_dtype.type(reward_scale)
            if ended.any():  # compact: finished episodes leave the batch
                ids = ids[~ended]
                if len(ids) == 0:
                    break
                live = torch.from_numpy(ids).to(device)
    finally:
        model.train(was_training)
        for env in envs:
            env.close()
    taken = actions[:, k - 1 : k - 1 + int(lengths.max())].float().cpu().numpy()
    return RolloutResult(float(target_return), returns, lengths, taken)
