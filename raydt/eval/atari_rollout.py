"""Return-conditioned Atari episodes, all episodes of a target stepped together.

DT's Atari protocol (raydt.data.atari.make_atari_env) on N environments; each step is one
forward pass of the windows of the last K (4-frame state, action, return-to-go) steps of
the episodes still running (a finished game leaves the batch), and each action is drawn
from the softmax of the predicted logits, as DT's evaluation does. An episode ends at game
over or ``max_steps``.

Each episode draws its actions with its own host generator seeded by its seed (one
uniform per step, mapped through the cumulative softmax on the device), so an episode's
actions do not depend on which other episodes run beside it, evaluations repeat, and no
device generator state exists to differ between a GPU and the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raydt.data.atari import game_from_env_id, make_atari_env
from raydt.data.dqn_replay import STACK
from raydt.eval.rollout import RolloutResult, Staging
from raydt.model.dt import DecisionTransformer
from raydt.model.inference import ActionPolicy


@torch.no_grad()
def atari_rollout(model: DecisionTransformer, env_id: str, target_return: float, seeds: Sequence[int],
                  reward_scale: float, device: torch.device | str = "cpu", max_steps: int | None = None,
                  ) -> RolloutResult:
    """Run ``len(seeds)`` episodes conditioned on ``target_return`` (in unclipped game points)."""
    game = game_from_env_id(env_id)
    if game is None:
        raise ValueError(f"{env_id} is not one of raydt's Atari games")
    n, k = len(seeds), model.args.context_length
    device = torch.device(device)
    horizon = max_steps or 27_000  # ALE's own cap: 108k frames at frame skip 4
    envs = [make_atari_env(game) for _ in range(n)]
    frames = np.zeros((n, STACK, 84, 84), np.uint8)  # the current 4-frame state of each env
    # Windows of the last K steps of the live episodes, left-padded: shifted by one each
    # step. States are kept encoded: each new frame stack goes through the CNN once, not K times.
    state_tokens = torch.zeros(n, k, model.args.n_embd, device=device)  # (L, K, h)
    actions = torch.zeros(n, k, dtype=torch.int64, device=device)  # (L, K)
    rtg = torch.zeros(n, k, 1, device=device)  # (L, K, 1)
    timesteps = torch.zeros(n, k, dtype=torch.int64, device=device)  # (L, K)
    mask = torch.zeros(n, k, dtype=torch.bool, device=device)  # (L, K)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    remaining = np.full(n, float(target_return))
    taken = np.zeros((n, horizon), np.int64)
    # Salted so the action draws are not the stream the seed also gives the game.
    draws = [np.random.default_rng([int(seed), 1]) for seed in seeds]
    for i, (env, seed) in enumerate(zip(envs, seeds)):
        obs, _ = env.reset(seed=int(seed))
        frames[i, -1] = obs
    ids = np.arange(n)  # (L,) the episodes still running, known on the host
    frame_stage = Staging((n, STACK, 84, 84), torch.uint8, device)
    value_stage = Staging((n, 2), torch.float32, device)  # return-to-go and the action draw
    was_training = model.training
    model.eval()
    policy = ActionPolicy(model, rows_hint=n * 3 * k)
    try:
        for t in range(horizon):
            rows = len(ids)
            for buf in (state_tokens, actions, rtg, timesteps, mask):
                buf[:] = torch.roll(buf, -1, dims=1)
            frame_stage.host[:rows] = torch.from_numpy(frames[ids])
            value_stage.host[:rows, 0] = torch.from_numpy(remaining[ids] * reward_scale)
            value_stage.host[:rows, 1] = torch.from_numpy(np.array([draws[j].random() for j in ids]))
            step_frames, step_values = frame_stage.upload(rows), value_stage.upload(rows)  # (L, 4, 84, 84), (L, 2)
            state_tokens[:, -1] = policy.encode_states(step_frames[:, None])[:, 0]
            actions[:, -1] = 0  # a_t's placeholder: never seen by the prediction of a_t
            rtg[:, -1, 0] = step_values[:, 0]
            timesteps[:, -1] = t
            mask[:, -1] = True
            logits = policy(None, actions, rtg, timesteps, mask, state_tokens=state_tokens)  # (L, n_actions)
            chosen = sample_categorical(logits, step_values[:, 1])  # (L,)
            actions[:, -1] = chosen
            chosen_np = chosen.cpu().numpy()  # the step's one device→host copy
            taken[ids, t] = chosen_np
            ended = np.zeros(rows, dtype=bool)
            for row, j in enumerate(ids):
                obs, reward, terminated, truncated, _ = envs[j].step(int(chosen_np[row]))
                frames[j] = np.roll(frames[j], -1, axis=0)
                frames[j, -1] = obs
                returns[j] += reward
                lengths[j] += 1
                remaining[j] -= reward
                ended[row] = terminated or truncated
            if ended.any():  # compact: finished games leave the batch
                ids = ids[~ended]
                if len(ids) == 0:
                    break
                keep = torch.from_numpy(np.flatnonzero(~ended)).to(device)
                state_tokens, actions, rtg, timesteps, mask = (
                    buf[keep] for buf in (state_tokens, actions, rtg, timesteps, mask))
    finally:
        model.train(was_training)
        for env in envs:
            env.close()
    return RolloutResult(float(target_return), returns, lengths, taken[:, : int(lengths.max())])


def sample_categorical(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Action ids (B,) drawn from softmax(``logits``) (B, A) by inverse CDF of ``uniform``
    (B,) in [0, 1): id i when cdf[i-1] ≤ u < cdf[i], so each id has its softmax probability."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)  # (B, A)
    chosen = torch.searchsorted(cdf, uniform.float()[:, None].contiguous(), right=True)[:, 0]  # (B,)
    return chosen.clamp(max=logits.shape[-1] - 1)  # u above a cdf that rounds to just under 1
