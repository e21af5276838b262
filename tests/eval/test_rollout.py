from __future__ import annotations

import numpy as np
import pytest
import torch

from raydt.eval.protocol import EvalTask, evaluate
from raydt.eval.rollout import rollout
from tests.helpers import host_reads, tiny_model


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


def test_a_rollout_step_reads_the_device_once_whatever_ends():
    # On a GPU each read of a device tensor's values waits for the device: the rollout reads
    # the step's actions and nothing else, also at the steps where episodes end.
    model = lively_model(11, 3)
    with host_reads() as reads:
        res = rollout(model, "Hopper-v4", 3600, [11, 12, 13, 14, 15], np.zeros(11), np.ones(11), 1e-3)
    assert len(set(res.lengths.tolist())) > 1  # episodes left the batch at different steps
    steps = int(res.lengths.max())
    assert reads.count("cpu") == steps + 1  # each step's actions, and the actions taken at the end
    assert reads.count("upload") == 2  # the state statistics, once; each step's values go through staging
    assert [c for c in reads.calls if c not in ("cpu", "numpy", "upload")] == []


def test_the_staging_buffer_is_reused_and_pinned_only_for_cuda():
    from raydt.eval.rollout import Staging

    staging = Staging((4, 3), torch.float32, torch.device("cpu"))
    staging.host[:2] = torch.ones(2, 3)
    first = staging.upload(2)
    assert first.shape == (2, 3) and not staging.host.is_pinned()
    staging.host[:3] = 2.0
    assert staging.upload(3).data_ptr() == first.data_ptr() == staging.host.data_ptr()  # no new host memory


class _ShortGame:
    """A stand-in Atari game whose episodes end after a seed-dependent number of steps, with
    frames that depend on the seed, the step and the actions taken."""

    def __init__(self, _game):
        self.seed, self.t, self.total = 0, 0, 0

    def reset(self, seed):
        self.seed, self.t, self.total = seed, 0, 0
        return self._frame(), {}

    def _frame(self):
        rng = np.random.default_rng([self.seed, self.t, self.total])
        return rng.integers(0, 255, (84, 84), dtype=np.uint8)

    def step(self, action):
        self.t += 1
        self.total += int(action)
        return self._frame(), float(action % 2), self.t >= 3 + self.seed % 7, False, {}

    def close(self):
        pass


PONG = "ALE/Pong-v5"


def _atari_model():
    from raydt.model.build import build_model
    from tests.helpers import TINY_MODEL

    torch.manual_seed(0)
    model, _ = build_model(TINY_MODEL, 0, 6, 4, 100, log=lambda _: None, discrete_actions=True, frame_stack=4)
    return model.double()


def test_atari_rollout_drops_finished_games_and_each_game_plays_as_alone(monkeypatch):
    from raydt.eval import atari_rollout as module

    monkeypatch.setattr(module, "make_atari_env", _ShortGame)
    model = _atari_model()
    rows = []
    model.predict_action.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape[0]))
    seeds = [1, 4, 5, 9]  # games of 4, 7, 8 and 5 steps
    with host_reads() as reads:
        together = module.atari_rollout(model, PONG, 20, seeds, 1.0)
    assert together.lengths.tolist() == [4, 7, 8, 5]
    assert rows == [4, 4, 4, 4, 3, 2, 2, 1]  # the model sees the games still running only
    assert reads.count("cpu") == 8 and [c for c in reads.calls if c not in ("cpu", "numpy")] == []
    for i, seed in enumerate(seeds):
        alone = module.atari_rollout(model, PONG, 20, [seed], 1.0)
        assert alone.returns[0] == together.returns[i]
        np.testing.assert_array_equal(alone.actions[0], together.actions[i, : together.lengths[i]])


def test_actions_are_drawn_from_the_softmax_by_inverse_cdf():
    from raydt.eval.atari_rollout import sample_categorical

    logits = torch.log(torch.tensor([0.2, 0.3, 0.5, 0.0]))  # the last action has probability 0
    u = torch.tensor([0.0, 0.1, 0.2, 0.49, 0.5, 0.999999])
    chosen = sample_categorical(logits.expand(len(u), 4), u)
    assert chosen.tolist() == [0, 0, 1, 1, 2, 2]
    grid = (torch.arange(100_000) + 0.5) / 100_000  # evenly spread draws: frequencies = probabilities
    counts = torch.bincount(sample_categorical(logits.expand(len(grid), 4), grid), minlength=4)
    torch.testing.assert_close(counts / len(grid), torch.tensor([0.2, 0.3, 0.5, 0.0]), atol=1e-4, rtol=0)


def _tiny_run(tmp_path):
    from raydt.train.loop import fit
    from tests.helpers import quiet, tiny_config

    fit(tiny_config("train.steps=2", "train.eval_every=2", "eval.max_steps=5"), tmp_path / "run", quiet())
    return tmp_path / "run"


def test_eval_honours_or_refuses_another_environment_and_reads_a_run_at_a_uri(tmp_path, capsys):
    from raydt.cli import main

    run = _tiny_run(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run), "--env", "Walker2d-v4", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "--env Walker2d-v4: its states and actions are 17 and 6 wide, the model's 11 and 3" in err
    assert "Traceback" not in err
    # A run at a storage URI (file:// here; s3:// and gs:// go the same way) is read, not mangled.
    assert main(["eval", run.resolve().as_uri(), "--episodes", "1", "--target", "100", "--json"]) == 0
    assert '"eval/rtg100/normalized_score"' in capsys.readouterr().out


def test_eval_of_a_decision_transformer_model_names_a_dataset_of_other_sizes(tmp_path, capsys):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    from raydt.cli import main

    config = DecisionTransformerConfig(state_dim=11, act_dim=3, hidden_size=32, n_layer=2, n_head=2, max_ep_len=1000)
    DecisionTransformerModel(config).save_pretrained(tmp_path / "dt")
    status = main(["eval", str(tmp_path / "dt"), "--dataset", "generated:halfcheetah-medium?steps=2000",
                   "--episodes", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "--dataset generated:halfcheetah-medium?steps=2000: its states and actions are 17 and 6 wide" in err
