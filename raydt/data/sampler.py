"""Batches of K-step training windows by index arithmetic.

The Decision Transformer's sampler (``gym/experiment.py`` of Chen et al.) picks an episode
with probability proportional to its length, a start uniformly inside it, slices up to K
steps and left-pads short windows. Drawing one flat transition index uniformly gives
exactly that distribution (episode ∝ length, start uniform within), so a whole batch is
one ``randint`` and a gather: no Python loop per sample, and the arrays can live on the GPU.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from raydt.data.dqn_replay import STACK
from raydt.data.feed import CudaCopies, Feeder, HostCopies, Sent, copies_for
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
        # single gather instead of four (small-op overhead dominates at batch 64). K padding
        # rows come first: row K + j is transition j, and index 0 is a padding row.
        packed = np.concatenate([
            states, traj.actions, (traj.returns_to_go * reward_scale)[:, None], traj.timesteps[:, None],
        ], axis=1).astype(np.float32)  # (N, obs + act + 2); timesteps < 2^24 stay exact
        pad_row = np.zeros(packed.shape[1], np.float32)
        pad_row[self.obs_dim : self.obs_dim + self.act_dim] = ACTION_PAD
        self.rows = torch.as_tensor(np.concatenate([np.tile(pad_row, (context_length, 1)), packed]),
                                    device=self.device)  # (K + N, obs + act + 2)
        self.row_width = packed.shape[1]
        # Real steps of the window starting at each transition: min(K, steps left in its episode).
        episode_end = np.repeat(traj.starts + traj.lengths, traj.lengths)  # (N,) exclusive
        valid = np.minimum(episode_end - np.arange(traj.num_steps), context_length)
        self.valid = torch.as_tensor(valid, device=self.device)  # (N,) in 1..K
        self.num_steps = traj.num_steps
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._positions = torch.arange(context_length, device=self.device)  # (K,)
        # Row v: the mask of a window with v real steps, left-padded (K + 1, K).
        self._masks = self._positions[None, :] >= (context_length - torch.arange(context_length + 1, device=self.device))[:, None]

    def rng_state(self) -> torch.Tensor:
        """The window stream's generator state (what checkpoints keep)."""
        return self.generator.get_state()

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
        valid = self.valid[first]  # (B,) real steps
        mask = self._masks[valid]  # (B, K): real steps occupy the last `valid` positions
        # Position p holds transition first + valid − K + p, i.e. row first + valid + p of
        # the padded table; padded positions are sent to row 0, a padding row.
        index = ((first + valid)[:, None] + self._positions) * mask  # (B, K)
        rows = self.rows.index_select(0, index.view(-1)).view(len(first), k, self.row_width)  # (B, K, obs + act + 2)
        o, a = self.obs_dim, self.act_dim
        states = rows[..., :o]  # (B, K, obs)
        actions = rows[..., o : o + a]  # (B, K, act)
        rtg = rows[..., o + a : o + a + 1]  # (B, K, 1)
        timesteps = rows[..., -1].long()  # (B, K)
        return Batch(rtg, states, actions, timesteps, mask)


class FrameWindowSampler:
    """:class:`Batch` es of K-step windows of Atari data (:class:`AtariTrajectories`).

    Same distribution and left padding as :class:`WindowSampler`; states are stacks of 4
    frames built on the host from single frames (B, K, 4, 84, 84) uint8 and actions are ids
    (B, K) int64 (0 where padded; padded steps are masked out of attention and loss).
    """

    def __init__(self, traj, context_length: int, reward_scale: float = 1.0,
                 device: str | torch.device = "cpu", seed: int = 0, prefetch: bool | None = None,
                 copies: CudaCopies | HostCopies | None = None) -> None:
        self.traj, self.context_length, self.reward_scale = traj, context_length, reward_scale
        self.device = torch.device(device)
        # A batch is ~100 MB of frames built on the host: on a GPU, the next one is built
        # (into a reused page-locked buffer, copied on a side stream) while the device runs
        # this step. ``copies``: the device half of that (tests pass their own).
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="raydt-frames") if self.prefetch else None
        self._feeder = Feeder(copies or copies_for(self.device)) if self.prefetch else None
        self._ahead: tuple[Future, torch.Tensor, torch.Tensor, int] | None = None
        """The batch drawn ahead: (its future, generator state before and after its draw, size)."""
        self.num_steps = traj.num_steps
        # States are pixels scaled inside the model; the run's "state statistics" are unused.
        self.state_mean, self.state_std = np.zeros(1, np.float32), np.ones(1, np.float32)
        episode_end = np.repeat(traj.starts + traj.lengths, traj.lengths)  # (N,) exclusive
        self.valid = np.minimum(episode_end - np.arange(traj.num_steps), context_length)  # (N,) in 1..K
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> Batch:
        if not self.prefetch:
            return self.windows(self._draw(batch_size))
        ahead = self._ahead
        # A batch drawn ahead is used only if nothing has reset the generator since (a resume).
        if ahead is None or ahead[3] != batch_size or not torch.equal(ahead[2], self.generator.get_state()):
            if ahead is not None and torch.equal(ahead[2], self.generator.get_state()):
                self.generator.set_state(ahead[1])  # another size: undo the unused draw
            if ahead is not None:
                ahead[0].result()  # its slot is the feeder's: let its copy be issued in order
            ahead = self._draw_ahead(batch_size)
        assert self._feeder is not None
        batch = Batch(**self._feeder.receive(ahead[0].result()))
        self._ahead = self._draw_ahead(batch_size)
        return batch

    def rng_state(self) -> torch.Tensor:
        """The generator's state as if no batch had been drawn ahead (what checkpoints keep),
        so a resumed run draws the same batches whether or not it prefetches."""
        if self._ahead is not None and torch.equal(self._ahead[2], self.generator.get_state()):
            return self._ahead[1]
        return self.generator.get_state()

    def _draw(self, batch_size: int) -> torch.Tensor:
        return torch.randint(self.num_steps, (batch_size,), generator=self.generator)

    def _draw_ahead(self, batch_size: int) -> tuple[Future, torch.Tensor, torch.Tensor, int]:
        before = self.generator.get_state()
        first = self._draw(batch_size)  # drawn here, in order: the stream never depends on timing
        assert self._pool is not None
        return self._pool.submit(self._send, first), before, self.generator.get_state(), batch_size

    def _layout(self, b: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        k, frames = self.context_length, self.traj.frames.shape[1:]
        return {"returns_to_go": ((b, k, 1), torch.float32), "states": ((b, k, STACK, *frames), torch.uint8),
                "actions": ((b, k), torch.int64), "timesteps": ((b, k), torch.int64), "mask": ((b, k), torch.bool)}

    def _send(self, first: torch.Tensor) -> Sent:
        """(The prefetch thread) the windows of ``first`` built in the feeder's next host
        buffers, on their way to the device."""
        assert self._feeder is not None
        host = self._feeder.buffers(self._layout(len(first)))
        self._fill(first, {name: t.numpy() for name, t in host.items()})
        return self._feeder.send()

    def windows(self, first: torch.Tensor) -> Batch:
        """The windows starting at transitions ``first`` (B,), built and moved at once."""
        host = {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in self._layout(len(first)).items()}
        self._fill(first, {name: t.numpy() for name, t in host.items()})
        return Batch(**{name: t.to(self.device) for name, t in host.items()})

    def _fill(self, first: torch.Tensor, out: dict[str, np.ndarray]) -> None:
        """Write the windows of ``first`` into ``out`` (arrays of :meth:`_layout`)."""
        k, traj = self.context_length, self.traj
        first = first.cpu().numpy()
        valid = self.valid[first]  # (B,)
        positions = np.arange(k)
        mask = positions[None, :] >= (k - valid)[:, None]  # (B, K)
        index = np.where(mask, (first + valid)[:, None] - k + positions, 0)  # (B, K) transition ids
        states = out["states"]  # (B, K, 4, 84, 84), gathered in place
        traj.stacked(index.reshape(-1), out=states.reshape(-1, *states.shape[2:]))
        states[~mask] = 0
        out["actions"][:] = np.where(mask, traj.actions[index], 0)  # (B, K)
        out["returns_to_go"][:] = np.where(mask, traj.returns_to_go[index] * self.reward_scale, 0.0)[..., None]
        out["timesteps"][:] = np.where(mask, traj.timesteps[index], 0)  # (B, K)
        out["mask"][:] = mask
