"""Return-conditioned Atari episodes, all episodes of a target stepped together.

DT's Atari protocol (raydt.data.atari.make_atari_env) on N environments; each step is one
forward pass of the N windows of the last K (4-frame state, action, return-to-go) steps,
and each action is drawn from the softmax of the predicted logits, as DT's evaluation
does (seeded, so evaluations repeat). An episode ends at game over or ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raydt.data.atari import game_from_env_id, make_atari_env
from raydt.data.dqn_replay import STACK
from raydt.eval.rollout import RolloutResult
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
    # Windows of the last K steps, left-padded: shifted by one each step. States are kept
    # encoded: each new frame stack goes through the CNN once, not K times.
    state_tokens = torch.zeros(n, k, model.args.n_embd, device=device)
    actions = torch.zeros(n, k, dtype=torch.int64, device=device)
    rtg = torch.zeros(n, k, 1, device=device)
    timesteps = torch.zeros(n, k, dtype=torch.int64, device=device)
    mask = torch.zeros(n, k, dtype=torch.bool, device=device)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    remaining = np.full(n, float(target_return))
    taken = np.zeros((n, horizon), np.int64)
    generator = torch.Generator(device=device).manual_seed(int(seeds[0]) if len(seeds) else 0)
    for i, (env, seed) in enumerate(zip(envs, seeds)):
        obs, _ = env.reset(seed=int(seed))
        frames[i, -1] = obs
    was_training = model.training
    model.eval()
    policy = ActionPolicy(model, rows_hint=n * 3 * k)
    try:
        for t in range(horizon):
            for buf in (state_tokens, actions, rtg, timesteps, mask):
                buf[:] = torch.roll(buf, -1, dims=1)
            state_tokens[:, -1] = policy.encode_states(torch.from_numpy(frames).to(device)[:, None])[:, 0]
            actions[:, -1] = 0  # a_t's placeholder: never seen by the prediction of a_t
            rtg[:, -1, 0] = torch.as_tensor(remaining * reward_scale, dtype=torch.float32, device=device)
            timesteps[:, -1] = t
            mask[:, -1] = True
            logits = policy(None, actions, rtg, timesteps, mask, state_tokens=state_tokens)  # (N, n_actions)
            chosen = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0]
            actions[:, -1] = chosen
            chosen_np = chosen.cpu().numpy()
            taken[:, t] = chosen_np
            for i, env in enumerate(envs):
                if not active[i]:
                    continue
                obs, reward, terminated, truncated, _ = env.step(int(chosen_np[i]))
                frames[i] = np.roll(frames[i], -1, axis=0)
                frames[i, -1] = obs
                returns[i] += reward
                lengths[i] += 1
                remaining[i] -= reward
                active[i] = not (terminated or truncated)
            if not active.any():
                break
    finally:
        model.train(was_training)
        for env in envs:
            env.close()
    return RolloutResult(float(target_return), returns, lengths, taken[:, : int(lengths.max())])
