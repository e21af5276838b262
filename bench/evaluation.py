"""Evaluation speed: 10 episodes × 1 target, raydt's batched evaluator vs episode by episode.

Same DT-size model, same episode seeds, same invocation. Two baselines, both one episode
at a time with a batch of one:

- ``published``: the original DT evaluation loop (``evaluate_episode_rtg`` and
  ``get_action``): histories grown with ``torch.cat`` every step, the whole state history
  re-normalised every step, the last K steps sliced and left-padded by concatenation, then
  one forward. This is the target's baseline (≥ 5×).
- ``raydt_batch1``: raydt's own evaluator given one episode at a time, which isolates what
  batching alone buys on this machine.

    python -m bench.evaluation [--episodes 10] [--env-id HalfCheetah-v4] [--smoke-test]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import record
from raydt.config import ModelConfig
from raydt.data.tasks import make_env
from raydt.eval.rollout import rollout
from raydt.model.build import build_model


@torch.no_grad()
def published_episode(model, env_id: str, target: float, seed: int, mean: np.ndarray, std: np.ndarray,
                      scale: float, max_steps: int) -> tuple[float, int, torch.Tensor]:
    """One episode the way the original DT code runs it (batch of one, growing histories)."""
    k, obs_dim, act_dim = model.args.context_length, model.args.obs_dim, model.args.act_dim
    env = make_env(env_id)
    state, _ = env.reset(seed=seed)
    state_mean, state_std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    states = torch.from_numpy(state).reshape(1, obs_dim).float()
    actions = torch.zeros((0, act_dim))
    target_return = torch.tensor(target * scale).reshape(1, 1)
    timesteps = torch.tensor(0).reshape(1, 1)
    episode_return, length = 0.0, 0
    for t in range(max_steps):
        actions = torch.cat([actions, torch.zeros((1, act_dim))], dim=0)
        # get_action: normalise the whole history, keep the last K steps, left-pad to K.
        s = ((states - state_mean) / state_std).reshape(1, -1, obs_dim)[:, -k:]
        a = actions.reshape(1, -1, act_dim)[:, -k:]
        r = target_return.reshape(1, -1, 1)[:, -k:]
        ts = timesteps.reshape(1, -1)[:, -k:]
        pad = k - s.shape[1]
        mask = torch.cat([torch.zeros(pad), torch.ones(s.shape[1])]).bool().reshape(1, -1)
        s = torch.cat([torch.zeros((1, pad, obs_dim)), s], dim=1)
        a = torch.cat([torch.ones((1, pad, act_dim)) * -10.0, a], dim=1)
        r = torch.cat([torch.zeros((1, pad, 1)), r], dim=1)
        ts = torch.cat([torch.zeros((1, pad), dtype=torch.long), ts], dim=1)
        action = model(s, a, r, ts, mask)[0, -1]
        actions[-1] = action
        state, reward, terminated, truncated, _ = env.step(action.cpu().numpy().astype(np.float64))
        states = torch.cat([states, torch.from_numpy(state).reshape(1, obs_dim).float()], dim=0)
        pred_return = target_return[0, -1] - reward * scale
        target_return = torch.cat([target_return, pred_return.reshape(1, 1)], dim=1)
        timesteps = torch.cat([timesteps, torch.ones((1, 1), dtype=torch.long) * (t + 1)], dim=1)
        episode_return += reward
        length += 1
        if terminated or truncated:
            break
    env.close()
    return episode_return, length, actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--env-id", default="HalfCheetah-v4", help="an env whose episodes all run the full horizon")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    episodes, steps = (2, 20) if args.smoke_test else (args.episodes, args.max_steps)
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), 17, 6, 20, 1000)
    model.eval()
    mean, std = np.zeros(17), np.ones(17)
    seeds = list(range(episodes))
    target, scale = 6000.0, 1e-3

    start = time.perf_counter()
    batched = rollout(model, args.env_id, target, seeds, mean, std, scale, max_steps=steps)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    alone = [rollout(model, args.env_id, target, [s], mean, std, scale, max_steps=steps) for s in seeds]
    t_alone = time.perf_counter() - start
    start = time.perf_counter()
    published = [published_episode(model, args.env_id, target, s, mean, std, scale, steps) for s in seeds]
    t_published = time.perf_counter() - start

    env_steps = int(batched.lengths.sum())
    assert env_steps == sum(int(a.lengths.sum()) for a in alone) == sum(n for _, n, _ in published)
    # Same model, same seeds: the loops start the same episodes with the same actions (later
    # steps drift apart: rounding differences grow chaotically over 1000 steps).
    first = np.stack([acts[:10].numpy() for _, _, acts in published])  # (N, 10, act)
    np.testing.assert_allclose(batched.actions[:, :10], first, atol=1e-3)
    result = {
        "env_id": args.env_id, "episodes": episodes, "env_steps": env_steps,
        "batched_seconds": t_batched, "published_seconds": t_published, "raydt_batch1_seconds": t_alone,
        "speedup": t_published / t_batched, "speedup_vs_raydt_batch1": t_alone / t_batched,
    }
    print(f"batched (raydt):          {t_batched:7.2f} s for {episodes} episodes ({env_steps} env steps)")
    print(f"one by one (published):   {t_published:7.2f} s")
    print(f"one by one (raydt loop):  {t_alone:7.2f} s")
    print(f"speedup:    {result['speedup']:.1f}x vs the published loop (target >= 5x); "
          f"{result['speedup_vs_raydt_batch1']:.1f}x vs raydt's own loop with batch 1")
    if not args.smoke_test:
        print(record("evaluation", result))


if __name__ == "__main__":
    main()
