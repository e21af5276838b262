"""Atari: gamer-normalized scores, generated:atari-<game> from real ROMs, read back by the DQN-replay reader."""

import json

import numpy as np
import pytest

from raydt.data.atari import GAMES, game_from_env_id, generated_atari_dir, parse_atari
from raydt.data.dqn_replay import read_dqn_replay
from raydt.errors import DataError
from tests.helpers import REPO


def test_gamer_normalized_scores():
    pong = GAMES["pong"]
    np.testing.assert_allclose(pong.normalized_score([-21.0, 15.0, -3.0]), [0.0, 100.0, 50.0])
    # DT's Table 1: Breakout raw 76.9 is 267.5 gamer-normalized (Hafner's rounded 2 / 30).
    assert GAMES["breakout"].normalized_score(76.9) == pytest.approx(100 * 74.9 / 28)
    assert round(float(GAMES["breakout"].normalized_score(76.9)), 1) == 267.5
    assert game_from_env_id("ALE/Qbert-v5") is GAMES["qbert"] and game_from_env_id("Hopper-v4") is None


def test_uri_errors():
    assert parse_atari("atari-pong?steps=500&seed=2") == parse_atari("atari-pong?seed=2&steps=500")
    with pytest.raises(DataError, match="GAME one of breakout, pong, qbert, seaquest"):
        parse_atari("atari-tetris")
    with pytest.raises(DataError, match="'frames=3' not understood"):
        parse_atari("atari-pong?frames=3")


def test_generated_pong_reads_back_through_the_dqn_replay_reader():
    request = parse_atari("atari-pong?steps=600&seed=1")
    folder = generated_atari_dir(request, log=lambda _: None)
    assert generated_atari_dir(request, log=lambda _: None) == folder  # made once, then found
    made = json.loads((folder.parent / "done.json").read_text())
    data = read_dqn_replay(folder.parent, num_steps=10**6, log=lambda _: None)
    assert data.num_episodes == made["episodes"] and data.num_steps == made["transitions"] >= 600
    np.testing.assert_array_equal(data.episode_returns, made["returns"])  # clipped rewards summed
    assert data.num_actions <= 6 and set(np.unique(data.rewards)) <= {-1.0, 0.0, 1.0}
    assert data.frames.shape[1:] == (84, 84) and data.frames.std() > 1  # real screens, not padding
    stack = data.stacked(np.array([0, 10]))  # (2, 4, 84, 84)
    assert not stack[0, :3].any() and stack[0, 3].any()  # the first state is [0, 0, 0, f_0]
    np.testing.assert_array_equal(stack[1], data.frames[7:11])


def test_frame_windows_match_the_stacked_states():
    import torch

    from raydt.data.sampler import FrameWindowSampler

    data = read_dqn_replay(generated_atari_dir(parse_atari("atari-pong?steps=600&seed=1"), log=lambda _: None).parent,
                           num_steps=10**6, log=lambda _: None)
    sampler = FrameWindowSampler(data, context_length=5, reward_scale=0.5)
    last = int(data.starts[0] + data.lengths[0] - 1)
    batch = sampler.windows(torch.tensor([0, last - 1, 2]))  # a full window, a cut one (2 real steps)
    assert batch.states.shape == (3, 5, 4, 84, 84) and batch.states.dtype == torch.uint8
    assert batch.mask[0].all() and batch.mask[1].tolist() == [False, False, False, True, True]
    np.testing.assert_array_equal(batch.states[0].numpy(), data.stacked(np.arange(5)))
    np.testing.assert_array_equal(batch.states[1, 3:].numpy(), data.stacked(np.array([last - 1, last])))
    assert not batch.states[1, :3].any() and batch.actions[1, :3].tolist() == [0, 0, 0]
    assert batch.actions[0].tolist() == data.actions[:5].tolist()
    np.testing.assert_allclose(batch.returns_to_go[0, :, 0].numpy(), 0.5 * data.returns_to_go[:5])
    assert batch.timesteps[2].tolist() == [2, 3, 4, 5, 6]


def test_cross_entropy_action_loss():
    import torch

    from raydt.losses import action_loss

    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[5.0, -5.0], [1.0, 3.0]]])  # (B=2, K=2, 2 actions)
    target = torch.tensor([[0, 1], [1, 1]])
    mask = torch.tensor([[True, False], [False, True]])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-2.0)))) / 2
    torch.testing.assert_close(action_loss(logits, target, mask), expected)  # the masked steps count for nothing


def test_atari_run_trains_evaluates_and_reloads(tmp_path):
    from raydt.config import load_config
    from raydt.eval.saved import evaluate_checkpoint
    from raydt.train.loop import RunContext, fit

    cfg = load_config(REPO / "tune_specs/runs/atari_pong_cpu.yaml", [
        "data.dataset=generated:atari-pong?steps=600&seed=1", "data.context_length=4", "train.steps=4",
        "train.eval_every=2", "train.log_every=2", "train.batch_size=4", "optim.warmup_steps=2",
        "eval.episodes=2", "eval.max_steps=30", "resources.cpus_per_worker=1"])
    out = fit(cfg, tmp_path, RunContext(log=lambda _: None))
    assert out["step"] == 4 and "train/action_ce" in out
    assert out["eval/rtg20/length_mean"] == 30  # capped games
    # gamer-normalized: 100 · (return + 20.7) / 35.3
    assert out["eval/normalized_score"] == pytest.approx(100 * (out["eval/return_mean"] + 21.0) / 36.0)
    again = evaluate_checkpoint(tmp_path, episodes=1, targets=[5.0], log=lambda _: None)
    assert "eval/rtg5/normalized_score" in again


def test_prefetched_frame_batches_are_the_same_batches_and_resume_the_same():
    import torch

    from raydt.data.sampler import FrameWindowSampler

    data = read_dqn_replay(generated_atari_dir(parse_atari("atari-pong?steps=600&seed=1"), log=lambda _: None).parent,
                           num_steps=10**6, log=lambda _: None)
    plain = FrameWindowSampler(data, context_length=4, seed=3, prefetch=False)
    ahead = FrameWindowSampler(data, context_length=4, seed=3, prefetch=True)  # what a GPU run does
    for size in (6, 4, 6):  # a change of size discards the batch drawn ahead, and its draw
        a, b = plain.sample(size), ahead.sample(size)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # A checkpoint keeps the state before the batch drawn ahead: resumed, both continue alike.
    assert torch.equal(ahead.rng_state(), plain.rng_state())
    resumed = FrameWindowSampler(data, context_length=4, seed=99, prefetch=True)
    resumed.sample(6)  # draws one ahead with the old stream...
    resumed.generator.set_state(ahead.rng_state())  # ...which a restore discards
    a, b = plain.sample(6), resumed.sample(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_prefetch_refills_two_reused_host_buffers_only_after_their_copies_and_hands_each_batch_over():
    import torch

    from raydt.data.feed import HostCopies
    from raydt.data.sampler import FrameWindowSampler

    class Recorded(HostCopies):
        """The CPU protocol, logging what a CUDA run would wait on."""

        def __init__(self):
            self.log, self.copied = [], 0

        def empty(self, shape, dtype):
            self.log.append(("allocate", shape[0]))
            return super().empty(shape, dtype)

        def copy(self, host):
            self.copied += 1
            self.log.append(("copy", host["states"].data_ptr(), self.copied))
            return super().copy(host)[0], self.copied

        def wait_host(self, done):
            self.log.append(("wait_host", done))

        def hand_over(self, tensors, done):
            self.log.append(("hand_over", done))

    data = read_dqn_replay(generated_atari_dir(parse_atari("atari-pong?steps=600&seed=1"), log=lambda _: None).parent,
                           num_steps=10**6, log=lambda _: None)
    copies = Recorded()
    plain = FrameWindowSampler(data, context_length=4, seed=3, prefetch=False)
    ahead = FrameWindowSampler(data, context_length=4, seed=3, prefetch=True, copies=copies)
    for _ in range(5):
        a, b = plain.sample(6), ahead.sample(6)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    ahead._ahead[0].result()  # the sixth batch, drawn ahead
    log = copies.log
    assert [e for e in log if e[0] == "allocate"] == [("allocate", 6)] * 10  # 2 slots × 5 buffers, once
    copied = [e for e in log if e[0] == "copy"]
    assert len(copied) == 6 and len({e[1] for e in copied}) == 2  # two host buffers, taking turns
    assert [e[1] for e in copied] == [copied[0][1], copied[1][1]] * 3
    for n in range(3, 7):  # batch n refills batch n − 2's buffer after that batch's copy has ended
        assert log.index(("wait_host", n - 2)) < log.index(next(e for e in log if e[0] == "copy" and e[2] == n))
    assert [e[1] for e in log if e[0] == "hand_over"] == [1, 2, 3, 4, 5]  # every batch, before its use
