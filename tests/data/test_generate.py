from __future__ import annotations

import os
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from raydt.data.d4rl import read_d4rl_hdf5
from raydt.data.generate import (
    EXPECTED_NORMALIZED,
    QUALITIES,
    generated_path,
    load_policy_bank,
    make_dataset,
    parse_generated,
)
from raydt.data.sources import load_dataset
from raydt.data.tasks import TASKS
from raydt.errors import DataError


def test_uri_parameters_and_canonical_form():
    spec = parse_generated("hopper-medium?steps=1_000&seed=3&env=v5")
    assert (spec.task, spec.quality, spec.steps, spec.seed, spec.env_id) == ("hopper", "medium", 1000, 3, "Hopper-v5")
    assert spec.uri == "generated:hopper-medium?steps=1000&seed=3&env=v5"
    default = parse_generated("walker2d-medium-replay")
    assert default.steps == 302_000 and default.uri == "generated:walker2d-medium-replay"
    assert parse_generated("hopper-medium-expert").steps == 2_000_000
    # arguments (the CLI's --steps/--seed) win over the query
    assert parse_generated("hopper-medium?steps=10", steps=20, seed=1).steps == 20


@pytest.mark.parametrize(
    "body, message",
    [
        ("ant-medium", "unknown task 'ant'; valid tasks: hopper, halfcheetah, walker2d"),
        ("hopper-okay", "unknown quality 'okay'; valid qualities: random, medium, medium-replay, expert, medium-expert"),
        ("hopper-medium?stepz=5", "unknown parameter"),
        ("hopper-medium?steps=many", "steps='many' is not an integer"),
        ("hopper-medium?steps=0", "must be > 0"),
        ("hopper-medium?env=v2", "valid versions: v4, v5"),
    ],
)
def test_bad_generated_uris(body, message):
    with pytest.raises(DataError, match=message.replace("?", r"\?")):
        parse_generated(body)


def test_every_task_ships_policies_with_medium_and_expert_snapshots():
    for name in TASKS:
        bank = load_policy_bank(name)
        assert bank.medium() and bank.expert()
        # medium comes before expert in training, and scores well below it
        assert max(bank.scores[bank.medium()]) < 0.7 * min(bank.scores[bank.expert()])
        assert bank.policies[0].weights.shape == (TASKS[name].act_dim, TASKS[name].obs_dim)


def test_every_task_and_quality_has_a_band():
    assert set(EXPECTED_NORMALIZED) == set(TASKS)
    assert all(set(bands) == set(QUALITIES) for bands in EXPECTED_NORMALIZED.values())


@pytest.mark.parametrize("task, quality", [(t, q) for t in EXPECTED_NORMALIZED for q in QUALITIES])
def test_made_data_lies_in_the_quality_band(task, quality):
    steps = 6000
    path = make_dataset(parse_generated(f"{task}-{quality}?steps={steps}"), log=lambda _: None)
    traj = read_d4rl_hdf5(path)
    assert traj.num_steps == steps
    assert traj.env_id == TASKS[task].env_id("v4")
    lo, hi = EXPECTED_NORMALIZED[task][quality]
    score = traj.info()["normalized_return_mean"]
    assert lo <= score <= hi, f"{quality}: {score:.1f} outside [{lo}, {hi}]"
    with h5py.File(path) as f:  # the full D4RL layout, so other D4RL tools read it too
        for key in ("next_observations", "infos/qpos", "infos/qvel", "timeouts", "metadata/raydt"):
            assert key in f
        np.testing.assert_array_equal(f["next_observations"][:-1][~(f["terminals"][:-1] | f["timeouts"][:-1])],
                                      f["observations"][1:][~(f["terminals"][:-1] | f["timeouts"][:-1])])
    assert traj.metadata["quality"] == quality


def test_medium_expert_is_medium_then_expert():
    me = read_d4rl_hdf5(make_dataset(parse_generated("hopper-medium-expert?steps=4000"), log=lambda _: None))
    m = read_d4rl_hdf5(make_dataset(parse_generated("hopper-medium?steps=2000"), log=lambda _: None))
    np.testing.assert_array_equal(me.observations[:2000], m.observations)
    assert me.num_steps == 4000
    assert 2000 in me.starts  # the cut medium episode does not run on into the expert part


def test_same_seed_same_file_other_seed_other_data():
    a = read_d4rl_hdf5(make_dataset(parse_generated("hopper-expert?steps=1500"), log=lambda _: None))
    path = generated_path(parse_generated("hopper-expert?steps=1500"))
    path.unlink()
    b = read_d4rl_hdf5(make_dataset(parse_generated("hopper-expert?steps=1500"), log=lambda _: None))
    c = read_d4rl_hdf5(make_dataset(parse_generated("hopper-expert?steps=1500&seed=1"), log=lambda _: None))
    np.testing.assert_array_equal(a.observations, b.observations)
    assert not np.array_equal(a.observations, c.observations)


def test_generated_uri_is_made_on_first_use_and_cached():
    logs: list[str] = []
    traj = load_dataset("generated:hopper-random?steps=500", log=logs.append)
    assert traj.num_steps == 500 and any("making" in line for line in logs)
    logs.clear()
    load_dataset("generated:hopper-random?steps=500", log=logs.append)
    assert not any("making" in line for line in logs)


def test_concurrent_makers_write_one_complete_file():
    spec = parse_generated("hopper-random?steps=800")
    before = {p.name for p in generated_path(spec).parent.glob("*")}  # the session's shared datasets
    made: list[str] = []
    threads = [threading.Thread(target=make_dataset, args=(spec,), kwargs={"log": made.append}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum("making" in line for line in made) == 1
    folder = generated_path(spec).parent
    made_here = [p.name for p in folder.iterdir() if not p.name.endswith(".lock") and p.name not in before]
    assert made_here == [generated_path(spec).name]  # no temporary file left beside it


def test_failed_make_leaves_nothing_the_loader_finds(monkeypatch):
    import raydt.data.generate as generate

    def boom(*args, **kwargs):
        raise RuntimeError("simulator crashed")

    monkeypatch.setattr(generate, "_rollouts", boom)
    spec = parse_generated("hopper-medium?steps=100")
    root = Path(os.environ["RAYDT_DATA_DIR"])
    before = set(root.rglob("*"))  # the session's shared datasets
    with pytest.raises(RuntimeError):
        make_dataset(spec, log=lambda _: None)
    assert not generated_path(spec).exists()
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock") and p not in before]
    assert files == []
