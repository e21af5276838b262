"""The DQN-replay reader on synthetic Dopamine checkpoints with known episodes."""

import gzip

import numpy as np
import pytest

from raydt.data.dqn_replay import (
    checkpoint_file,
    dopamine_layout,
    read_dqn_replay,
    write_checkpoint,
)
from raydt.errors import DataError


def episode(tag: int, length: int):
    """Frames whose pixels all equal tag + step (never 0, so padding is recognisable)."""
    steps = np.arange(length)
    frames = np.broadcast_to(((tag + steps) % 250 + 1).astype(np.uint8)[:, None, None], (length, 84, 84)).copy()
    actions = (tag + steps) % 6
    rewards = ((steps % 3) == 0).astype(np.float32)  # 1, 0, 0, 1, 0, 0, ...
    return frames, actions, rewards


def write_run(root, layout_by_ckpt):
    """layout_by_ckpt: {index: (list of (tag, length) episodes, partial tail length)}."""
    for index, (episodes, tail) in layout_by_ckpt.items():
        obs, act, rew, term = dopamine_layout([episode(t, n) for t, n in episodes])
        if tail:  # an unfinished episode at the end of the buffer
            f, a, r = episode(200, tail)
            obs = np.concatenate([obs, np.zeros((3, 84, 84), np.uint8), f])
            act, rew = np.concatenate([act, np.zeros(3, np.int32), a]), np.concatenate([rew, np.zeros(3), r])
            term = np.concatenate([term, np.zeros(3 + tail, np.uint8)])
        write_checkpoint(root, index, obs, act, rew, term)


def test_padding_dropped_frames_stacked_returns_to_go(tmp_path):
    write_run(tmp_path / "replay_logs", {0: ([(10, 5), (20, 7), (30, 4)], 6), 1: ([(40, 6)], 0)})
    messages = []
    data = read_dqn_replay(tmp_path, num_steps=10_000, trajectories_per_buffer=2, seed=0, log=messages.append)
    assert sorted(data.lengths.tolist()) == [4, 5, 6, 7]  # every whole episode, never the tail
    assert data.num_steps == 22 and "every checkpoint spent" in messages[0]
    for start, length in zip(data.starts, data.lengths):
        tag = int(data.frames[start, 0, 0]) - 1
        f, a, r = episode(tag, length)
        np.testing.assert_array_equal(data.frames[start:start + length], f)  # no padding frames
        np.testing.assert_array_equal(data.actions[start:start + length], a)
        np.testing.assert_array_equal(data.timesteps[start:start + length], np.arange(length))
        # rewards 1, 0, 0, 1, ... → returns-to-go counted by hand
        expected = [sum(1 for j in range(t, length) if j % 3 == 0) for t in range(length)]
        np.testing.assert_array_equal(data.returns_to_go[start:start + length], expected)
    start = int(data.starts[np.flatnonzero(data.lengths == 7)[0]])
    stacks = data.stacked(np.array([start, start + 2, start + 4]))  # (3, 4, 84, 84)
    first, third, fifth = (s[:, 0, 0].tolist() for s in stacks)
    assert first == [0, 0, 0, 21]  # [0, 0, 0, f_0]: what Dopamine's padding gives
    assert third == [0, 21, 22, 23]
    assert fifth == [22, 23, 24, 25]


def test_selection_stops_after_the_visit_that_reaches_num_steps(tmp_path):
    write_run(tmp_path, {0: ([(1, 10)] * 6, 0), 1: ([(2, 10)] * 6, 0)})
    data = read_dqn_replay(tmp_path, num_steps=25, trajectories_per_buffer=2, seed=3)
    assert data.num_steps == 40 and data.num_episodes == 4  # whole visits of 2 episodes: 20 < 25, then 40
    again = read_dqn_replay(tmp_path, num_steps=25, trajectories_per_buffer=2, seed=3)
    np.testing.assert_array_equal(data.frames, again.frames)  # the seed fixes the selection


def test_wrapped_buffer_and_capacity(tmp_path):
    # A ring buffer that starts mid-episode: its first transitions are not padding.
    obs, act, rew, term = dopamine_layout([episode(10, 4), episode(50, 5), episode(90, 6)])
    write_checkpoint(tmp_path, 7, obs[5:], act[5:], rew[5:], term[5:])
    data = read_dqn_replay(tmp_path, num_steps=100, trajectories_per_buffer=5, log=lambda _: None)
    assert data.lengths.tolist() == [5, 6]  # the cut first episode is skipped
    small = read_dqn_replay(tmp_path, num_steps=100, trajectories_per_buffer=5, buffer_capacity=12,
                            log=lambda _: None)
    assert small.lengths.tolist() == [5]  # the second episode ends beyond the capacity


def test_bad_files_are_named(tmp_path):
    write_run(tmp_path, {0: ([(1, 5)], 0)})
    checkpoint_file(tmp_path, "reward", 0).unlink()
    with pytest.raises(DataError, match=r"reward_ckpt\.0\.gz not found"):
        read_dqn_replay(tmp_path)
    write_run(tmp_path / "b", {0: ([(1, 5)], 0)})
    path = checkpoint_file(tmp_path / "b", "observation", 0)
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(DataError, match="truncated"):
        read_dqn_replay(tmp_path / "b")
    with pytest.raises(DataError, match="no \\$store\\$_observation_ckpt"):
        read_dqn_replay(tmp_path / "nowhere")
