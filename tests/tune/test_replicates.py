"""Replicated search points: the searcher sees exactly each point's aggregate, never a seed;
the study persists; the spec refuses a searched seed."""

from __future__ import annotations

import numpy as np
import pytest

from raydt.errors import ConfigError
from raydt.tune.replicates import aggregate, bootstrap_interval, replicate_score
from raydt.tune.spec import load_sweep
from tests.helpers import RUN_SPEC

METRIC = "eval/normalized_score"


def _spec(tmp_path, tune: str, search: str = "  loss.lambda1: {uniform: [0.0, 0.2]}\n  data.context_length: {choice: [5, 10]}\n"):
    path = tmp_path / "search.yaml"
    path.write_text(f"extends: {RUN_SPEC}\nsearch:\n{search}tune:\n{tune}")
    return load_sweep(path)


def test_scores_and_aggregates_have_known_values():
    assert replicate_score([1.0, 5.0, 3.0], "final") == 3.0
    assert replicate_score([1.0, 5.0, 3.0], "best") == 5.0
    assert replicate_score([1.0, 5.0, 3.0], "best", mode="min") == 1.0
    assert replicate_score([1.0, 5.0, 3.0], "auc") == 3.0
    assert aggregate([1.0, 2.0, 3.0, 10.0], "mean") == 4.0
    assert aggregate([1.0, 2.0, 3.0, 10.0], "iqm") == 2.5  # the middle half: 2 and 3
    assert aggregate([4.0, 1.0, 2.0, 3.0, 100.0, 5.0, 6.0, 0.0], "iqm") == 3.5  # 2, 3, 4, 5
    # n = 3: the middle half is 3/4 of the middle value and 1/8 of each neighbour
    assert aggregate([0.0, 8.0, 16.0], "iqm") == pytest.approx(8.0)
    assert aggregate([0.0, 8.0, 100.0], "iqm") == pytest.approx((0.25 * 0 + 1.0 * 8 + 0.25 * 100) / 1.5)
    lo, hi = bootstrap_interval([1.0, 2.0, 3.0, 4.0, 5.0], "mean")
    assert 1.0 <= lo < 3.0 < hi <= 5.0


def test_optuna_receives_exactly_each_points_aggregate_and_never_a_seed(tmp_path):
    import optuna
    from ray.tune.search import Searcher

    from raydt.tune.replicates import STUDY_JOURNAL, make_searcher, open_study, study_points

    spec = _spec(tmp_path, "  searcher: optuna\n  num_samples: 5\n  replicates: {seeds: 3, datasets: "
                           "['generated:hopper-medium', 'generated:walker2d-medium']}\n")
    assert spec.num_points == 5 and spec.num_trials == 30
    sweep = tmp_path / "sweep"
    searcher = make_searcher(spec, str(sweep))
    rng = np.random.default_rng(0)

    def objective(params):  # what the search should find, under seed noise 10× larger
        return 100 * params["loss.lambda1"] + (5 if params["data.context_length"] == 10 else 0)

    configs = {}
    for i in range(40):  # more asks than trials: the searcher stops handing out
        config = searcher.suggest(f"abc_{i:05d}")
        if config is None or config == Searcher.FINISHED:
            break
        configs[f"abc_{i:05d}"] = config
    assert len(configs) == 30
    finals: dict[tuple, list[float]] = {}
    for trial_id in rng.permutation(list(configs)):  # replicates end in any order
        config = configs[trial_id]
        value = objective(config) + rng.normal(0, 50)
        searcher.on_trial_result(trial_id, {METRIC: value - 7, "step": 4})
        searcher.on_trial_result(trial_id, {METRIC: value, "step": 8})
        searcher.on_trial_complete(trial_id, {METRIC: value, "step": 8})
        key = (config["loss.lambda1"], config["data.context_length"])
        finals.setdefault(key, []).append(value)
    # Every point: 2 datasets × 3 seeds, seeds 0..2 on each dataset.
    for key in finals:
        mine = [c for c in configs.values() if (c["loss.lambda1"], c["data.context_length"]) == key]
        assert sorted((c["data.dataset"], c["train.seed"]) for c in mine) == [
            (d, s) for d in ("generated:hopper-medium", "generated:walker2d-medium") for s in range(3)]

    assert (sweep / STUDY_JOURNAL).is_file()
    points = study_points(open_study(spec, str(sweep), spec.name))  # as a new process reads it
    assert len(points) == 5 and all(p["state"] == "COMPLETE" for p in points)
    for point in points:
        assert set(point["params"]) == {"loss.lambda1", "data.context_length"}  # no seed, no dataset
        key = (point["params"]["loss.lambda1"], point["params"]["data.context_length"])
        # the mean of the replicates in sorted order (the same whatever order they ended in)
        assert point["value"] == float(np.mean(sorted(finals[key]))) == point["aggregate"]
        assert len(point["replicates"]) == 6 and all(n.startswith("trial_") for n in point["replicates"])
    loaded = optuna.load_study(study_name=spec.name, storage=optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / STUDY_JOURNAL))))
    assert len(loaded.trials) == 5


def test_a_failed_replicate_fails_its_point_and_a_stopped_one_counts_as_far_as_it_got(tmp_path):
    from raydt.tune.replicates import make_searcher, open_study, study_points

    spec = _spec(tmp_path, "  searcher: optuna\n  num_samples: 2\n  replicates: {seeds: 2, score: best}\n")
    sweep = tmp_path / "sweep"
    searcher = make_searcher(spec, str(sweep))
    ids = [f"x_{i:05d}" for i in range(4)]
    configs = [searcher.suggest(t) for t in ids]
    assert [c["train.seed"] for c in configs] == [0, 1, 0, 1] and "data.dataset" not in configs[0]
    # point 0: one replicate stopped early (ASHA) after one evaluation, the other ran on
    searcher.on_trial_result(ids[0], {METRIC: 30.0})
    searcher.on_trial_complete(ids[0], {METRIC: 30.0})
    for v in (10.0, 50.0, 20.0):
        searcher.on_trial_result(ids[1], {METRIC: v})
    searcher.on_trial_complete(ids[1], {METRIC: 20.0})
    # point 1: one replicate failed
    searcher.on_trial_result(ids[2], {METRIC: 90.0})
    searcher.on_trial_complete(ids[2], {METRIC: 90.0})
    searcher.on_trial_complete(ids[3], None, error=True)
    first, second = sorted(study_points(open_study(spec, str(sweep), spec.name)), key=lambda p: p["number"])
    assert first["state"] == "COMPLETE" and first["value"] == 40.0  # best of each: 30 and 50
    assert second["state"] == "FAIL" and second["failed_replicates"] == ["trial_00003"]


def test_the_searcher_survives_a_lost_driver(tmp_path):
    import pickle

    from raydt.tune.replicates import make_searcher, open_study, study_points

    spec = _spec(tmp_path, "  searcher: optuna\n  num_samples: 2\n  replicates: {seeds: 2}\n")
    sweep = tmp_path / "sweep"
    searcher = make_searcher(spec, str(sweep))
    first = [searcher.suggest(t) for t in ("a_00000", "a_00001")]
    searcher.on_trial_result("a_00000", {METRIC: 1.0})
    searcher.on_trial_complete("a_00000", {METRIC: 1.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    pickled = pickle.dumps(searcher)  # Tune pickles the searcher with its Tuner

    restored = pickle.loads(pickled)  # a new driver: --resume
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a_00001", {METRIC: 3.0})
    restored.on_trial_complete("a_00001", {METRIC: 3.0})
    nxt = restored.suggest("a_00002")
    assert nxt["train.seed"] == 0 and nxt["loss.lambda1"] != first[0]["loss.lambda1"]
    points = study_points(open_study(spec, str(sweep), spec.name))
    assert [p["state"] for p in points] == ["COMPLETE", "RUNNING"] and points[0]["value"] == 2.0


@pytest.mark.parametrize("tune, search, message", [
    ("  searcher: optuna\n", "  train.seed: {randint: [0, 1000]}\n", "a seed is a replicate.*tune.replicates.seeds"),
    ("  searcher: grid\n", "  train.seed: {choice: [0, 1]}\n", "a seed is a replicate"),
    ("  searcher: grid\n  replicates: {seeds: 2}\n", "  train.seed: {grid: [0, 1]}\n", "seeds come from tune.replicates.seeds"),
    ("  replicates: {seeds: 0}\n", "", "tune.replicates.seeds"),
    ("  replicates: {datasets: ['hopper-medium']}\n", "", "tune.replicates.datasets: dataset URI 'hopper-medium'"),
    ("  replicates: {datasets: ['generated:hopper-medium']}\n", "  data.dataset: {grid: ['generated:hopper-medium']}\n",
     "datasets come from tune.replicates.datasets"),
    ("  replicates: {seeds: 2, aggregate: median}\n", "", "tune.replicates.aggregate"),
])
def test_replicate_spec_errors_are_one_line(tmp_path, tune, search, message):
    with pytest.raises(ConfigError, match=message) as info:
        _spec(tmp_path, tune, search or "  loss.lambda1: {uniform: [0.0, 0.2]}\n")
    assert "\n" not in str(info.value)


def test_a_grid_with_replicates_runs_the_trials_the_spelled_out_grid_runs(tmp_path):
    from raydt.tune.run import _param_space

    replicated = load_sweep(RUN_SPEC.parents[1] / "size_scaling.yaml")
    spelled = tmp_path / "spelled.yaml"
    spelled.write_text(f"""\
extends: {RUN_SPEC.parents[1] / 'base/gpu.yaml'}
search:
  model.size: {{grid: [dt, 3m, 18m, 84m]}}
  model.backbone: {{grid: [random, "pretrain:{RUN_SPEC.parents[1] / 'pretrain/chibit.yaml'}"]}}
  data.dataset: {{grid: [d4rl:hopper-medium-expert-v2, d4rl:halfcheetah-medium-expert-v2, d4rl:walker2d-medium-expert-v2]}}
  train.seed: {{grid: [0, 1, 2]}}
tune:
  searcher: grid
""")
    by_hand = load_sweep(spelled)
    assert replicated.num_trials == by_hand.num_trials == 72
    assert replicated.grid() == by_hand.grid()
    assert _param_space(replicated) == _param_space(by_hand)
    assert [replicated.trial_config(p) for p in replicated.grid()] == [by_hand.trial_config(p) for p in by_hand.grid()]
