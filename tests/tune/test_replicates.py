"""Replicated search points: the searcher sees exactly each point's aggregate, never a seed;
the study persists; the spec refuses a searched seed."""

from __future__ import annotations

import numpy as np
import pytest

from raydt.errors import ConfigError
from raydt.replicates import aggregate, bootstrap_interval, replicate_score
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
    ("  replicates: {datasets: ['generated:hopper-medium', 'd4rl:hopper-mediun-v2']}\n", "",
     "tune.replicates.datasets: unknown D4RL dataset 'hopper-mediun-v2'"),
    ("  replicates: {datasets: ['generated:hoper-medium']}\n", "", "unknown task 'hoper'"),
    ("  searcher: grid\n  study_storage: sqlite:///x.db\n", "", "tune.study_storage.*tune.searcher: optuna"),
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


def _replicated_sweep(root):
    """Three points (λ1) × 2 datasets × 2 seeds, written as runs; one replicate failed."""
    import json

    import yaml

    finals = {0.0: [50, 54, 60, 64], 0.1: [70, 71, 72, 73], 0.2: [69, 72, 70, 74]}
    i = 0
    for lam, values in finals.items():
        for j, final in enumerate(values):
            if lam == 0.0 and j == 3:
                final = None  # never evaluated
            run = root / f"trial_{i:05d}"
            run.mkdir(parents=True)
            (run / "config.resolved.yaml").write_text(yaml.safe_dump({
                "loss": {"lambda1": lam}, "data": {"dataset": ["generated:hopper-medium", "generated:walker2d-medium"][j // 2]},
                "train": {"seed": j % 2}}))
            rows = [] if final is None else [{"step": 4, METRIC: final - 10, "perf/train_seconds": 1800.0},
                                             {"step": 8, METRIC: final, "perf/train_seconds": 3600.0}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "timing.json").write_text(json.dumps({"finished": 1000.0 + i}))
            i += 1
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "searched_keys": ["loss.lambda1", "data.dataset", "train.seed"],
        "tune": {"searcher": "optuna", "metric": METRIC, "mode": "max",
                 "replicates": {"seeds": 2, "datasets": ["generated:hopper-medium", "generated:walker2d-medium"],
                                "aggregate": "mean", "score": "final"}}}))
    return root


def test_report_prints_one_row_per_point_with_intervals_and_the_search_progress(tmp_path, capsys):
    from raydt.cli import main
    from raydt.points import point_rows, replicated_settings, search_progress

    root = _replicated_sweep(tmp_path / "sweep")
    settings = replicated_settings(root)
    assert settings.keys == ("loss.lambda1",) and settings.replicates == 4
    rows = point_rows(root, settings, reps=500)
    assert [r.params["loss.lambda1"] for r in rows] == [0.1, 0.2, 0.0]  # sorted, best first
    assert [r.value for r in rows] == [71.5, 71.25, float(np.mean([50, 54, 60]))]
    assert [len(r.scores) for r in rows] == [4, 4, 3]
    assert rows[0].interval[0] <= 71.5 <= rows[0].interval[1]
    # best so far after each complete point (the incomplete λ1=0 point does not count)
    # (trial_00003 never evaluated: its training hours are not known, counted as 0)
    assert search_progress(settings, rows) == [(8, 7.0, 71.5), (12, 11.0, 71.5)]

    assert main(["report", str(root), "--search-plot", str(tmp_path / "search.png"), "--reps", "500"]) == 0
    out = capsys.readouterr().out
    assert "search points: 3, 4 replicate(s) each" in out
    lines = out.splitlines()
    assert lines[3].split()[:2] == ["0.1", "71.5"] and lines[3].split()[-1] == "4/4"
    assert lines[5].split()[-1] == "3/4"
    assert "best point: loss.lambda1=0.1 (71.5" in out
    assert "overlaps the runner-up's" in out
    assert (tmp_path / "search.png").stat().st_size > 0
    assert main(["report", str(root), "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "loss.lambda1,value,ci_low,ci_high,replicates_done,replicates"


@pytest.mark.ray
def test_an_optuna_search_with_replicates_persists_its_study_across_a_lost_driver(tmp_path, capsys):
    import json
    import os
    import signal
    import time

    from raydt.cli import main
    from raydt.tune.replicates import open_study, study_points
    from tests.helpers import REPO, eval_steps, raydt_sweep, tiny_run_yaml, wait_for

    run = tiny_run_yaml("data.dataset", "train.steps")
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(f"""\
extends: {REPO / 'tune_specs/optuna_cpu.yaml'}
{run}
train.steps: 8
tune:
  num_samples: 3
  max_concurrent: 2
  storage_path: {tmp_path}
  name: search
  replicates:
    datasets: ["generated:hopper-medium?steps=3000", "generated:walker2d-medium?steps=3000"]
    seeds: 2
""")
    spec = load_sweep(spec_path)
    sweep = tmp_path / "search"
    proc = raydt_sweep(str(spec_path), start_new_session=True)

    def complete_points():
        if not (sweep / "optuna_study.journal").exists():
            return []
        return [p for p in study_points(open_study(spec, str(sweep), spec.name)) if p["state"] == "COMPLETE"]

    wait_for(lambda: complete_points() or proc.poll() is not None, timeout=600, every=1.0)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray
    proc.wait()
    finished = complete_points()
    kept = {name: (sweep / name / "metrics.jsonl").read_text() for p in finished for name in p["replicates"]}
    time.sleep(1)

    resumed = raydt_sweep(str(spec_path), "--resume")
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    points = study_points(open_study(spec, str(sweep), spec.name))
    done = [p for p in points if p["state"] == "COMPLETE"]
    assert len(done) == 3, points  # the same study, continued: every point told once
    for point in done:
        assert set(point["params"]) == {"optim.lr", "model.dropout", "data.context_length"}
        finals = [json.loads((sweep / n / "metrics.jsonl").read_text().splitlines()[-1])["eval/normalized_score"]
                  for n in point["replicates"]]
        assert len(finals) == 4 and point["value"] == pytest.approx(float(np.mean(sorted(finals))))
        for name in point["replicates"]:
            assert eval_steps(sweep / name) == [4, 8]
    # The points finished before the driver was lost were not run again: not a row added.
    assert kept and all((sweep / n / "metrics.jsonl").read_text() == rows for n, rows in kept.items())
    assert main(["report", str(sweep)]) == 0
    report = capsys.readouterr().out
    assert "search points: 3, 4 replicate(s) each" in report and "4/4" in report and "best point:" in report


def test_optuna_dashboard_opens_the_sweeps_study(tmp_path):
    """The README's `optuna-dashboard SWEEP/optuna_study.journal`."""
    import json
    import shutil
    import socket
    import subprocess
    import urllib.request

    from raydt.tune.replicates import STUDY_JOURNAL, make_searcher
    from tests.helpers import wait_for

    spec = _spec(tmp_path, "  searcher: optuna\n  num_samples: 1\n  replicates: {seeds: 2}\n")
    searcher = make_searcher(spec, str(tmp_path / "sweep"))
    for trial_id in ("d_00000", "d_00001"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {METRIC: 10.0})
        searcher.on_trial_complete(trial_id, {METRIC: 10.0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = subprocess.Popen([shutil.which("optuna-dashboard"), str(tmp_path / "sweep" / STUDY_JOURNAL),
                                  "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def studies():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    return json.load(response)["study_summaries"]
            except OSError:
                return None

        wait_for(lambda: studies() or dashboard.poll() is not None, timeout=60, every=0.5)
        assert [s["study_name"] for s in studies()] == [spec.name]
    finally:
        dashboard.kill()
        dashboard.wait()


def test_a_point_told_after_tunes_last_checkpoint_is_not_told_twice(tmp_path):
    import pickle

    from raydt.tune.replicates import make_searcher, open_study, study_points

    spec = _spec(tmp_path, "  searcher: optuna\n  num_samples: 1\n  replicates: {seeds: 2}\n")
    searcher = make_searcher(spec, str(tmp_path / "sweep"))
    for trial_id in ("b_00000", "b_00001"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {METRIC: 4.0})
    searcher.on_trial_complete("b_00000", {METRIC: 4.0})
    searcher.save(str(tmp_path / "state.pkl"))  # Tune's checkpoint, before the point ended
    pickled = pickle.dumps(searcher)
    searcher.on_trial_complete("b_00001", {METRIC: 4.0})  # told; then the driver is lost
    restored = pickle.loads(pickled)
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_result("b_00001", {METRIC: 4.0})  # the restarted replicate reports again
    restored.on_trial_complete("b_00001", {METRIC: 4.0})
    [point] = study_points(open_study(spec, str(tmp_path / "sweep"), spec.name))
    assert point["state"] == "COMPLETE" and point["value"] == 4.0


def test_the_study_in_an_rdb_and_in_uri_storage(tmp_path, monkeypatch):
    from raydt.tune.replicates import STUDY_JOURNAL, make_searcher, open_study, study_points

    db = tmp_path / "studies.db"
    spec = _spec(tmp_path, f"  searcher: optuna\n  num_samples: 1\n  study_storage: sqlite:///{db}\n")
    searcher = make_searcher(spec, str(tmp_path / "sweep"))
    searcher.suggest("r_00000")
    searcher.on_trial_result("r_00000", {METRIC: 3.0})
    searcher.on_trial_complete("r_00000", {METRIC: 3.0})
    assert db.is_file() and not (tmp_path / "sweep").exists()
    assert [p["value"] for p in study_points(open_study(spec, str(tmp_path / "sweep"), spec.name))] == [3.0]

    # URI storage: the journal is copied there after each change; a driver on another
    # machine (an empty data directory) continues from the copy.
    spec = _spec(tmp_path, "  searcher: optuna\n  num_samples: 2\n")
    uri = f"file://{tmp_path / 'bucket' / 'sweep'}"
    searcher = make_searcher(spec, uri)
    searcher.suggest("u_00000")
    searcher.on_trial_result("u_00000", {METRIC: 5.0})
    searcher.on_trial_complete("u_00000", {METRIC: 5.0})
    assert (tmp_path / "bucket" / "sweep" / STUDY_JOURNAL).is_file()
    monkeypatch.setenv("RAYDT_DATA_DIR", str(tmp_path / "elsewhere"))
    points = study_points(open_study(spec, uri, spec.name))
    assert [(p["state"], p["value"]) for p in points] == [("COMPLETE", 5.0)]
