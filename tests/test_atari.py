"""Atari: gamer-normalized scores, generated:atari-<game> from real ROMs, read back by the DQN-replay reader."""

import json

import numpy as np
import pytest

from raydt.data.atari import GAMES, game_from_env_id, generated_atari_dir, parse_atari
from raydt.data.dqn_replay import read_dqn_replay
from raydt.errors import DataError


def test_gamer_normalized_scores():
    pong = GAMES["pong"]
    np.testing.assert_allclose(pong.normalized_score([-20.7, 14.6, -3.05]), [0.0, 100.0, 50.0])
    assert GAMES["breakout"].normalized_score(30.5) == pytest.approx(100.0)
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
