from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from raydt.data.d4rl import d4rl_filename, fetch_d4rl, read_d4rl_hdf5, write_d4rl_hdf5
from raydt.data.sampler import ACTION_PAD, WindowSampler
from raydt.data.sources import load_dataset, split_uri
from raydt.data.tasks import TASKS, get_task, make_env, task_from_env_id
from raydt.data.trajectories import Trajectories, episode_bounds, returns_to_go
from raydt.errors import DataError
from tests.helpers import RUN_SPEC, random_trajectories


def naive_returns_to_go(rewards, ends):
    """The textbook reversed loop: reset the running sum at every episode end."""
    out = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        if ends[t]:
            running = 0.0
        running += rewards[t]
        out[t] = running
    return out


def test_returns_to_go_matches_reversed_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=40)
    rewards = rng.normal(size=lengths.sum())
    ends = np.zeros(lengths.sum(), bool)
    ends[np.cumsum(lengths) - 1] = True
    np.testing.assert_allclose(returns_to_go(rewards, lengths), naive_returns_to_go(rewards, ends), atol=1e-9)


def test_returns_to_go_keeps_precision_on_long_arrays():
    lengths = np.array([500_000, 500_000])
    rewards = np.full(1_000_000, 3.3, dtype=np.float32)
    rtg = returns_to_go(rewards, lengths)
    # the first step of the second episode sees only its own episode
    assert rtg[500_000] == pytest.approx(3.3 * 500_000, rel=1e-6)
    assert rtg[-1] == pytest.approx(3.3, rel=1e-6)


def test_episode_bounds_terminals_timeouts_and_trailing_segment():
    ends = np.array([0, 0, 1, 0, 1, 1, 0, 0], bool)
    starts, lengths, trailing = episode_bounds(ends)
    assert starts.tolist() == [0, 3, 5, 6]
    assert lengths.tolist() == [3, 2, 1, 2]
    assert trailing
    starts, lengths, trailing = episode_bounds(ends[:6])
    assert lengths.tolist() == [3, 2, 1] and not trailing
    starts, lengths, trailing = episode_bounds(np.zeros(4, bool))
    assert lengths.tolist() == [4] and trailing


def hand_made_hdf5(path):
    # episodes: [0..2] ends by terminal, [3..6] by timeout, [7..8] trailing (no flag)
    n = 9
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[2] = True
    timeouts[6] = True
    with h5py.File(path, "w") as f:
        f["observations"] = np.arange(n * 11, dtype=np.float32).reshape(n, 11)
        f["actions"] = np.zeros((n, 3), np.float32)
        f["rewards"] = np.arange(1, n + 1, dtype=np.float32)
        f["terminals"] = terminals
        f["timeouts"] = timeouts
    return path


def test_d4rl_reader_splits_episodes(tmp_path):
    path = hand_made_hdf5(tmp_path / "hopper_medium-v2.hdf5")
    traj = read_d4rl_hdf5(path)
    assert traj.lengths.tolist() == [3, 4, 2]
    assert traj.truncated_tail
    assert traj.episode_returns.tolist() == [1 + 2 + 3, 4 + 5 + 6 + 7, 8 + 9]
    assert traj.terminals.sum() == 1  # the timeout is an episode end, not a terminal
    assert traj.timesteps.tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    assert traj.env_id == "Hopper-v4"  # inferred from the D4RL file name
    info = traj.info()
    assert (info["num_episodes"], info["num_steps"], info["obs_dim"], info["act_dim"]) == (3, 9, 11, 3)
    expected = get_task("hopper").normalized_score(np.array([6.0, 22.0, 17.0])).mean()
    assert info["normalized_return_mean"] == pytest.approx(expected)


def test_d4rl_reader_rejects_missing_keys_and_inconsistent_lengths(tmp_path):
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((5, 2))
        f["rewards"] = np.zeros(5)
    with pytest.raises(DataError, match="lacks required datasets actions, terminals"):
        read_d4rl_hdf5(path)
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((5, 2))
        f["actions"] = np.zeros((4, 1))
        f["rewards"] = np.zeros(5)
        f["terminals"] = np.zeros(6)
    with pytest.raises(DataError, match="inconsistent lengths: observations has 5, actions has 4, terminals has 6"):
        read_d4rl_hdf5(path)
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions"):
            f[key] = np.zeros((0, 2))
        f["rewards"] = np.zeros(0)
        f["terminals"] = np.zeros(0)
    with pytest.raises(DataError, match="holds no transitions"):
        read_d4rl_hdf5(path)
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot read"):
        read_d4rl_hdf5(tmp_path / "junk.hdf5")


def test_writer_round_trip_and_leaves_no_temporary_file(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "observations": rng.normal(size=(7, 4)).astype(np.float32),
        "actions": rng.normal(size=(7, 2)).astype(np.float32),
        "rewards": rng.normal(size=7).astype(np.float32),
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0], bool),
        "timeouts": np.array([0, 0, 0, 0, 0, 1, 0], bool),
    }
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", arrays, env_id="Walker2d-v5", metadata={"a": 1})
    traj = read_d4rl_hdf5(path)
    np.testing.assert_array_equal(traj.observations, arrays["observations"])
    assert traj.env_id == "Walker2d-v5" and traj.metadata == {"a": 1}
    assert traj.lengths.tolist() == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.hdf5"]


def test_writer_failing_midway_leaves_nothing(tmp_path):
    arrays = {"observations": np.zeros((3, 2), np.float32), "actions": np.array([object(), 1, 2], dtype=object)}
    with pytest.raises(TypeError):
        write_d4rl_hdf5(tmp_path / "x.hdf5", arrays)
    assert list(tmp_path.iterdir()) == []


def test_d4rl_names_and_missing_file_message(tmp_path, monkeypatch):
    assert d4rl_filename("hopper-medium-replay-v2") == "hopper_medium_replay-v2.hdf5"
    with pytest.raises(DataError, match="quality in random, medium"):
        d4rl_filename("hopper-great-v2")
    with pytest.raises(DataError) as err:
        load_dataset("d4rl:hopper-medium-v2")
    msg = str(err.value)
    assert f"{os.environ['D4RL_DATASET_DIR']}/hopper_medium-v2.hdf5 not found" in msg
    assert "raydt data make generated:hopper-medium" in msg
    assert "curl -fL" in msg and "rail.eecs.berkeley.edu" in msg
    with pytest.raises(DataError, match="file .*nothing.hdf5 not found"):
        load_dataset(f"d4rl:{tmp_path}/nothing.hdf5")


def test_d4rl_download_goes_through_a_temporary_file(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    hand_made_hdf5(served / "walker2d_expert-v2.hdf5")
    (served / "hopper_expert-v2.hdf5").write_text("a truncated transfer")
    monkeypatch.setenv("RAYDT_OFFLINE", "0")
    monkeypatch.setenv("RAYDT_D4RL_BASE_URL", served.as_uri())
    path = fetch_d4rl("walker2d-expert-v2")
    assert path == Path(os.environ["D4RL_DATASET_DIR"]) / "walker2d_expert-v2.hdf5"
    assert read_d4rl_hdf5(path).num_steps == 9
    with pytest.raises(DataError, match="downloading .* failed"):
        fetch_d4rl("hopper-expert-v2")
    # nothing half-written is left where the loader looks
    assert [p.name for p in path.parent.iterdir()] == ["walker2d_expert-v2.hdf5"]


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(DataError, match="d4rl:NAME.*minari:ID.*generated:TASK-QUALITY"):
        split_uri("s3:bucket/data")
    with pytest.raises(DataError, match="not understood"):
        load_dataset("hopper-medium")


def test_task_lookup():
    assert task_from_env_id("Hopper-v4") is TASKS["hopper"]
    assert task_from_env_id("mujoco/walker2d/medium-v0") is TASKS["walker2d"]
    assert task_from_env_id("HalfCheetah-v5") is TASKS["halfcheetah"]
    assert task_from_env_id("ALE/Pong-v5") is None
    with pytest.raises(DataError, match="valid tasks: hopper, halfcheetah, walker2d"):
        get_task("ant")
    # D4RL's constants: random scores 0, expert 100
    hopper = get_task("hopper")
    assert hopper.normalized_score(hopper.ref_min_score) == pytest.approx(0)
    assert hopper.normalized_score(3234.3) == pytest.approx(100)


# ---------------------------------------------------------------------------------------
# Sampler


def naive_window(traj, first, k, scale, mean, std):
    """Per-sample slicing and left padding, as the original DT's get_batch does it."""
    e = traj.episode_ids[first]
    end = traj.starts[e] + traj.lengths[e]
    sl = slice(first, min(first + k, end))
    s = (traj.observations[sl] - mean) / std
    a = traj.actions[sl]
    r = traj.returns_to_go[sl] * scale
    t = traj.timesteps[sl]
    pad = k - len(r)
    return dict(
        states=np.concatenate([np.zeros((pad, s.shape[1])), s]),
        actions=np.concatenate([np.full((pad, a.shape[1]), ACTION_PAD), a]),
        returns_to_go=np.concatenate([np.zeros(pad), r])[:, None],
        timesteps=np.concatenate([np.zeros(pad, int), t]),
        mask=np.concatenate([np.zeros(pad, bool), np.ones(len(r), bool)]),
    )


def test_sampled_windows_match_naive_slicer():
    rng = np.random.default_rng(2)
    traj = random_trajectories(rng, [1, 3, 25, 7, 60, 2])
    k = 10
    sampler = WindowSampler(traj, k, reward_scale=0.01, seed=0)
    first = torch.arange(traj.num_steps)  # every possible start, short tails included
    batch = sampler.windows(first)
    mean, std = traj.state_stats()
    for i in range(traj.num_steps):
        ref = naive_window(traj, i, k, 0.01, mean, std)
        for name, value in ref.items():
            np.testing.assert_allclose(getattr(batch, name)[i].numpy(), value, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name} of window {i}")


def test_sampler_distribution_weights_episodes_by_length():
    # DT draws an episode with probability ∝ length and a start uniformly within it.
    lengths = [10, 30, 60]
    n = sum(lengths)
    episode = np.repeat(np.arange(3), lengths).astype(np.float32)
    ends = np.zeros(n, bool)
    ends[np.cumsum(lengths) - 1] = True
    obs = np.stack([episode, np.zeros(n)], axis=1)  # state 0 names the episode
    traj = Trajectories.from_flags(obs, np.zeros((n, 1)), np.zeros(n), ends)
    sampler = WindowSampler(traj, 5, normalize_states=False, seed=0)
    eps, starts = [], []
    for _ in range(20):
        b = sampler.sample(2048)
        eps.append(b.states[:, -1, 0].long())
        first_real = (~b.mask).sum(dim=1)  # position of the first real step
        starts.append(b.timesteps.gather(1, first_real[:, None])[:, 0])
    eps_all, starts_all = torch.cat(eps).numpy(), torch.cat(starts).numpy()
    freq = np.bincount(eps_all, minlength=3) / eps_all.size
    np.testing.assert_allclose(freq, np.array(lengths) / n, atol=0.01)
    # within the longest episode, every start is about equally likely
    within = np.bincount(starts_all[eps_all == 2], minlength=60) / (eps_all == 2).sum()
    np.testing.assert_allclose(within, 1 / 60, atol=0.006)


def test_sampler_is_seeded():
    rng = np.random.default_rng(4)
    traj = random_trajectories(rng, [20, 20, 20])
    a = WindowSampler(traj, 4, seed=7).sample(16)
    b = WindowSampler(traj, 4, seed=7).sample(16)
    c = WindowSampler(traj, 4, seed=8).sample(16)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.states, c.states)


# ---------------------------------------------------------------------------------------
# Minari


def test_minari_dataset_written_in_the_test_loads_with_right_counts():
    import minari
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(5)
    env = make_env("Hopper-v4")
    lengths = [5, 9, 3]
    buffers = []
    for i, n in enumerate(lengths):
        buffers.append(EpisodeBuffer(
            observations=list(rng.normal(size=(n + 1, 11)).astype(np.float32)),
            actions=list(rng.uniform(-1, 1, (n, 3)).astype(np.float32)),
            rewards=list(np.full(n, float(i + 1))),
            terminations=[False] * (n - 1) + [i != 1],
            truncations=[False] * (n - 1) + [i == 1],
        ))
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers("raydt/hopper/tiny-v0", buffers, env=env, algorithm_name="test")
    traj = load_dataset("minari:raydt/hopper/tiny-v0")
    assert traj.lengths.tolist() == lengths
    assert traj.num_steps == sum(lengths)
    assert traj.episode_returns.tolist() == [5.0, 18.0, 9.0]
    assert traj.terminals.sum() == 2  # the truncated episode has no terminal
    assert traj.env_id == "Hopper-v4" and traj.task is TASKS["hopper"]
    assert "normalized_return_mean" in traj.info()


def test_missing_minari_dataset_says_how_to_fetch():
    with pytest.raises(DataError, match=r"minari:mujoco/hopper/medium-v0: not found locally.*minari download"):
        load_dataset("minari:mujoco/hopper/medium-v0")


def _d4rl_file(path, n=40, obs=11, act=3, **override):
    from raydt.data.d4rl import write_d4rl_hdf5

    arrays = {"observations": np.zeros((n, obs), np.float32), "actions": np.zeros((n, act), np.float32),
              "rewards": np.ones(n, np.float32), "terminals": np.eye(1, n, n - 1, dtype=bool)[0],
              "timeouts": np.zeros(n, bool)}
    arrays.update(override)
    write_d4rl_hdf5(path, arrays)
    return path


def test_non_finite_values_are_refused_at_load_naming_file_array_and_index(tmp_path):
    from raydt.data.sources import load_dataset
    from raydt.errors import DataError

    obs = np.zeros((40, 11), np.float32)
    obs[7, 2] = np.nan
    path = _d4rl_file(tmp_path / "nan.hdf5", observations=obs)
    with pytest.raises(DataError, match=r"nan.hdf5.*observations\[7, 2\] is nan \(1 non-finite"):
        load_dataset(f"d4rl:{path}")
    rewards = np.ones(40, np.float32)
    rewards[30] = np.inf
    with pytest.raises(DataError, match=r"rewards\[30\] is inf"):
        load_dataset(f"d4rl:{_d4rl_file(tmp_path / 'inf.hdf5', rewards=rewards)}")


def test_a_dataset_that_does_not_fit_the_evaluation_environment_is_refused_before_training(tmp_path):
    from raydt.config import load_config
    from raydt.errors import ConfigError
    from raydt.prepare import resolve_run_data

    path = _d4rl_file(tmp_path / "cheetah_shaped.hdf5", obs=17, act=6)
    cfg = load_config(RUN_SPEC,
                      [f"data.dataset=d4rl:{path}", "eval.env_id=Hopper-v4"])
    with pytest.raises(ConfigError, match=r"observations have 17 values and its actions 6, but Hopper-v4.*11 and 3"):
        resolve_run_data(cfg, log=lambda _: None)
