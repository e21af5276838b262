from __future__ import annotations

import numpy as np
import pytest
import torch

from raydt.eval.protocol import EvalTask, evaluate
from raydt.eval.rollout import rollout
from tests.helpers import tiny_model


def lively_model(obs_dim, act_dim, k=4):
    # Seed and scale chosen so Hopper episodes outlast the context and end at different steps.
    model = tiny_model(context_length=k, obs_dim=obs_dim, act_dim=act_dim, seed=3).double()
    with torch.no_grad():
        model.predict_action[0].weight.mul_(0.5)
    return model


@pytest.mark.parametrize("env_id, obs_dim, act_dim, max_steps", [("Hopper-v4", 11, 3, None), ("HalfCheetah-v4", 17, 6, 25)])
def test_batched_rollout_equals_episodes_run_one_by_one(env_id, obs_dim, act_dim, max_steps):
    model = lively_model(obs_dim, act_dim)
    mean, std = np.zeros(obs_dim), np.ones(obs_dim)
    seeds = [11, 12, 13, 14, 15]
    together = rollout(model, env_id, 3600, seeds, mean, std, 1e-3, max_steps=max_steps)
    alone = [rollout(model, env_id, 3600, [s], mean, std, 1e-3, max_steps=max_steps) for s in seeds]
    np.testing.assert_array_equal(together.returns, np.concatenate([a.returns for a in alone]))
    np.testing.assert_array_equal(together.lengths, np.concatenate([a.lengths for a in alone]))
    assert together.lengths.min() > model.args.context_length  # windows slid past K
    if env_id.startswith("Hopper"):
        assert len(set(together.lengths.tolist())) > 1  # episodes ended at different steps
    # every episode takes the same actions as alone, also after others left the batch
    for i, a in enumerate(alone):
        n = int(a.lengths[0])
        np.testing.assert_array_equal(together.actions[i, :n], a.actions[0, :n])


def test_evaluate_names_metrics_and_normalizes():
    model = lively_model(11, 3)
    metrics, results = evaluate(model, EvalTask("Hopper-v4", (3600, 1800), np.zeros(11), np.ones(11), 1e-3), 3, 0)
    assert [r.target for r in results] == [3600.0, 1800.0]
    assert metrics["eval/return_mean"] == metrics["eval/rtg3600/return_mean"]
    score = 100 * (results[0].returns.mean() + 20.272305) / (3234.3 + 20.272305)
    assert metrics["eval/normalized_score"] == pytest.approx(score)
    for key in ("eval/rtg1800/return_mean", "eval/rtg1800/normalized_score", "eval/rtg3600/length_mean"):
        assert key in metrics


def test_rollout_actions_match_a_naive_unpadded_replay():
    """Reference: replay the episode by hand, feeding the model the unpadded last ≤ K steps."""
    from raydt.data.tasks import make_env

    model = lively_model(11, 3, k=4).eval()
    res = rollout(model, "Hopper-v4", 3600, [21], np.zeros(11), np.ones(11), 1e-3)
    env = make_env("Hopper-v4")
    obs, _ = env.reset(seed=21)
    states, actions, rtg, remaining = [], [], [], 3600 * 1e-3
    with torch.no_grad():
        for t in range(int(res.lengths[0])):
            states.append(obs)
            rtg.append(remaining)
            actions.append(np.zeros(3))
            lo = max(0, t + 1 - 4)
            window = dict(
                states=torch.tensor(np.array(states[lo:]))[None],
                actions=torch.tensor(np.array(actions[lo:]))[None],
                returns_to_go=torch.tensor(rtg[lo:], dtype=torch.float64)[None, :, None],
                timesteps=torch.arange(lo, t + 1)[None],
                mask=torch.ones(1, t + 1 - lo, dtype=torch.bool),
            )
            action = model(**window)[0, -1].numpy()
            np.testing.assert_allclose(res.actions[0, t], action, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
            actions[-1] = action
            obs, reward, *_ = env.step(action.astype(np.float32).astype(np.float64))
            remaining -= reward * 1e-3
