"""Batches of K-step training windows by index arithmetic.

The Decision Transformer's sampler (``gym/experiment.py`` of Chen et al.) picks an episode
with probability proportional to its length, a start uniformly inside it, slices up to K
steps and left-pads short windows. Drawing one flat transition index uniformly gives
exactly that distribution (episode ∝ length, start uniform within), so a whole batch is
one ``randint`` and a gather: no Python loop per sample, and the arrays can live on the GPU.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from raydt.data.trajectories import Trajectories

ACTION_PAD = -10.0
"""Action value in padded positions, as in the original DT code (never attended to)."""


class Batch(NamedTuple):
    """A batch of left-padded windows; padded positions have ``mask`` False."""

    returns_to_go: torch.Tensor
    """(B, K, 1) float32, scaled by ``reward_scale``; 0 where padded."""
    states: torch.Tensor
    """(B, K, obs_dim) float32, normalised; 0 where padded."""
    actions: torch.Tensor
    """(B, K, act_dim) float32; ``ACTION_PAD`` where padded."""
    timesteps: torch.Tensor
    """(B, K) int64 step within the episode; 0 where padded."""
    mask: torch.Tensor
    """(B, K) bool, True for real steps."""


class WindowSampler:
    """Samples :class:`Batch` es of ``context_length`` steps from :class:`Trajectories`."""

    def __init__(
        self,
        traj: Trajectories,
        context_length: int,
        reward_scale: float = 1.0,
        normalize_states: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.context_length = context_length
        self.device = torch.device(device)
        if normalize_states:
            self.state_mean, self.state_std = traj.state_stats()
        else:
            self.state_mean = np.zeros(traj.obs_dim, np.float32)
            self.state_std = np.ones(traj.obs_dim, np.float32)
        states = (traj.observations - self.state_mean) / self.state_std
        self.obs_dim, self.act_dim = traj.obs_dim, traj.act_dim
        # One packed row per transition [state | action | rtg | timestep], so a batch is a
        # single gather instead of four (small-op overhead dominates at batch 64).
        packed = np.concatenate([
            states, traj.actions, (traj.returns_to_go * reward_scale)[:, None], traj.timesteps[:, None],
        ], axis=1).astype(np.float32)  # (N, obs + act + 2); timesteps < 2^24 stay exact
        self.rows = torch.as_tensor(packed, device=self.device)  # (N, obs + act + 2)
        pad_row = np.zeros(packed.shape[1], np.float32)
        pad_row[self.obs_dim : self.obs_dim + self.act_dim] = ACTION_PAD
        self.pad_row = torch.as_tensor(pad_row, device=self.device)  # (obs + act + 2,)
        episode_end = np.repeat(traj.starts + traj.lengths, traj.lengths)  # (N,) exclusive
        self.episode_end = torch.as_tensor(episode_end, device=self.device)
        self.num_steps = traj.num_steps
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._positions = torch.arange(context_length, device=self.device)  # (K,)

    def sample(self, batch_size: int) -> Batch:
        """A batch of windows whose first steps are uniform over all transitions."""
        first = torch.randint(
            self.num_steps, (batch_size,), generator=self.generator, device=self.device
        )
        return self.windows(first)

    def windows(self, first: torch.Tensor) -> Batch:
        """Windows starting at flat transition indices ``first`` (B,), cut at episode ends."""
        k = self.context_length
        first = first.to(self.device)
        valid = torch.clamp(self.episode_end[first] - first, max=k)  # (B,) real steps
        # Real steps occupy the last `valid` positions (left padding, as in DT).
        offset = self._positions[None, :] - (k - valid)[:, None]  # (B, K), < 0 where padded
        mask = offset >= 0
        index = first[:, None] + offset.clamp(min=0)  # (B, K) flat transition index
        rows = torch.where(mask[..., None], self.rows[index], self.pad_row)  # (B, K, obs + act + 2)
        o, a = self.obs_dim, self.act_dim
        states = rows[..., :o]  # (B, K, obs)
        actions = rows[..., o : o + a]  # (B, K, act)
        rtg = rows[..., o + a : o + a + 1]  # (B, K, 1)
        timesteps = rows[..., -1].long()  # (B, K)
        return Batch(rtg, states, actions, timesteps, mask)
