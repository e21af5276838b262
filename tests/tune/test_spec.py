"""Sweep specs, plans, stoppers and reports (no Ray needed)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml

from raydt.errors import ConfigError, RaydtError
from raydt.report import format_csv, format_table, plot_curves, summarize
from raydt.tune.spec import load_sweep
from tests.helpers import REPO


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def sweep_file(tmp_path, search: str, tune: str = "searcher: grid") -> Path:
    base = REPO / "tune_specs/runs/hopper_medium_dt.yaml"
    return write(tmp_path / "sweep.yaml", f"extends: {base}\nsearch:\n{textwrap.indent(search, '  ')}\ntune:\n  {tune}\n")


def test_grid_of_search_keys_builds_trial_configs(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, "data.context_length: {grid: [1, 20, 60]}\ntrain.seed: {grid: [0, 1]}\nloss.lambda1: {uniform: [0.0, 0.2]}"))
    assert spec.num_trials == 6 and len(spec.grid()) == 6
    assert spec.searched_keys == ["data.context_length", "train.seed", "loss.lambda1"]
    config = spec.trial_config({"data.context_length": 60, "train.seed": 1, "loss.lambda1": 0.15})
    assert (config.data.context_length, config.train.seed, config.loss.lambda1) == (60, 1, 0.15)
    assert config.optim.warmup_steps == 1000  # the run part's own values stay


@pytest.mark.parametrize(
    "search, message",
    [
        ("data.context_lenght: {grid: [1, 20]}", "unknown key in section 'data' 'data.context_lenght'.*did you mean 'context_length'"),
        ("data.context_length: {grid: [1, twenty]}", "'data.context_length' = 'twenty' is not valid; expected an integer"),
        ("model.size: {choice: [dt, huge]}", "expected one of 'dt', '3m', '18m', '84m'"),
        ("optim.lr: {normal: [0, 1]}", "unknown distribution 'normal'; valid kinds: grid, choice, uniform, loguniform, randint"),
        ("optim.lr: {loguniform: [0, 1]}", "loguniform needs low > 0"),
        ("optim.lr: {uniform: [1, 0]}", r"needs \[low, high\], two numbers with low < high"),
        ("optim.lr: 3", "give one distribution as a mapping"),
        ("optim.lr: {loguniform: [1e-5, tiny]}", r"needs \[low, high\], two numbers with low < high, got \['1e-5', 'tiny'\]"),
        ("train.batch_size: {randint: [8, 16.5]}", r"randint needs \[low, high\], two integers"),
    ],
)
def test_bad_search_entries_fail_before_any_trial(tmp_path, search, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(sweep_file(tmp_path, search))


def test_bad_tune_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown key in section 'tune' 'tune.searchr'"):
        load_sweep(sweep_file(tmp_path, "train.seed: {grid: [0]}", "searchr: grid"))
    with pytest.raises(ConfigError, match="'tune.scheduler' = 'hyperband'.*one of 'fifo', 'asha'"):
        load_sweep(sweep_file(tmp_path, "train.seed: {grid: [0]}", "scheduler: hyperband"))


def test_plan_caps_concurrency_by_resources(tmp_path):
    from raydt.tune.run import plan_sweep

    spec = load_sweep(sweep_file(tmp_path, "train.seed: {grid: [0, 1, 2, 3, 4]}"), ["resources.num_workers=2", "resources.cpus_per_worker=2"])
    plan = plan_sweep(spec, [{"CPU": 8.0}, {"CPU": 4.0}])
    assert plan.concurrency == 3  # 12 CPU // (2 workers × 2 CPU)
    gpu = load_sweep(sweep_file(tmp_path, "train.seed: {grid: [0, 1, 2, 3, 4]}"), ["resources.use_gpu=true", "resources.num_workers=2"])
    assert plan_sweep(gpu, [{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 1}]).concurrency == 2
    with pytest.raises(ConfigError, match="a worker needs 2 CPU and 1 GPU but no node type of the cluster has that much"):
        plan_sweep(gpu, [{"CPU": 16.0}])
    big = load_sweep(sweep_file(tmp_path, "train.seed: {grid: [0]}"), ["resources.num_workers=8"])
    with pytest.raises(ConfigError, match="the cluster can have 2 CPU"):
        plan_sweep(big, [{"CPU": 2.0}])
    capped = load_sweep(sweep_file(tmp_path, "train.seed: {grid: [0, 1, 2]}", "max_concurrent: 1"))
    assert plan_sweep(capped, [{"CPU": 64.0}]).concurrency == 1


def test_converged_stopper():
    from raydt.tune.run import ConvergedStopper

    stop = ConvergedStopper("m", "max", patience=2, threshold=1.0)
    decisions = [stop("t", {"m": v}) for v in (10, 12, 12.5, 12.9)]
    assert decisions == [False, False, False, True]  # 12.5 and 12.9 keep 12 within 1 of the best
    moving = ConvergedStopper("m", "max", patience=2, threshold=1.0)
    # Each new best more than 1 above the old convergence point moves that point on.
    assert [moving("t", {"m": v}) for v in (10, 12, 14, 14.5, 16, 16)] == [False] * 6
    assert stop("u", {"other": 1}) is False
    low = ConvergedStopper("loss", "min", patience=1, threshold=0.0)
    assert [low("t", {"loss": v}) for v in (3, 2, 2)] == [False, False, True]


def fake_run(root: Path, name: str, config: dict, scores: list[float]) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": 100 * (i + 1), "eval/normalized_score": s, "perf/train_seconds": 10.0 * (i + 1)} for i, s in enumerate(scores)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_groups_seeds_and_aggregates(tmp_path):
    for k in (1, 20):
        for seed, scores in enumerate([[10, 30, 20], [20, 40, 30]]):
            offset = 0 if k == 1 else 5
            fake_run(tmp_path, f"trial_k{k}_s{seed}", {"data": {"context_length": k}, "train": {"seed": seed}},
                     [s + offset for s in scores])
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"searched_keys": ["data.context_length", "train.seed"]}))
    keys, rows = summarize(tmp_path)
    assert keys == ["data.context_length"]
    k1, k20 = rows
    assert (k1["data.context_length"], k1["trials"]) == (1, 2)
    assert (k1["best_mean"], k1["best_std"]) == (35.0, 5.0)  # best of seeds: 30 and 40
    assert (k1["final_mean"], k1["final_std"]) == (25.0, 5.0)
    assert k20["best_mean"] == 40.0
    # Seed-averaged curve 15, 35, 25: converged at the second evaluation (20 training seconds).
    assert (k1["converged_step"], k1["converged_train_seconds"]) == (200, 20.0)
    table = format_table(keys, rows)
    assert "35.0 ± 5.0" in table and "data.context_length" in table and "step 200 (20 s)" in table
    assert format_csv(keys, rows).splitlines()[0] == (
        "data.context_length,trials,best_mean,best_std,final_mean,final_std,converged_step,converged_train_seconds")
    _, by_seed = summarize(tmp_path, by=["train.seed"])
    assert [r["trials"] for r in by_seed] == [2, 2]
    with pytest.raises(RaydtError, match="not a config key"):
        summarize(tmp_path, by=["train.sede"])
    png = plot_curves(tmp_path, tmp_path / "curves.png")
    assert png.stat().st_size > 10_000


def test_report_on_a_trial_that_never_evaluated(tmp_path):
    fake_run(tmp_path, "a", {"train": {"seed": 0}}, [])
    fake_run(tmp_path, "b", {"train": {"seed": 1}}, [50])
    _, rows = summarize(tmp_path, by=["train.seed"])
    assert math.isnan(rows[0]["best_mean"]) and rows[1]["best_mean"] == 50
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaydtError, match="holds no run directories"):
        summarize(tmp_path / "empty")
    with pytest.raises(RaydtError, match="not found"):
        summarize(tmp_path / "missing")


def test_sweep_progress_line_counts_trials_and_estimates_what_is_left():
    from raydt.tune.run import progress_line

    assert progress_line(0, 2, 12, 2, [], [10.0, 5.0]) == "trials: 0/12 done, 2 running, 10 pending"
    # mean trial 60 s; the running ones need 60 − 20 = 40 s more at most; 6 pending in 3 waves
    assert progress_line(4, 2, 12, 2, [50.0, 70.0], [20.0, 30.0]) == \
        "trials: 4/12 done, 2 running, 6 pending; eta 3m40s"
    assert progress_line(12, 0, 12, 2, [60.0], []) == "trials: 12/12 done, 0 running, 0 pending"


def test_range_bounds_written_without_a_dot_are_numbers(tmp_path):
    # YAML reads 1e-5 (no dot) as a string; ordinary keys convert it, and bounds do too.
    spec = load_sweep(sweep_file(tmp_path, "optim.lr: {loguniform: [1e-5, 1e-3]}\ntrain.batch_size: {randint: [8, 1e2]}"))
    lr, batch = spec.dimensions
    assert lr.values == (1e-5, 1e-3) and all(isinstance(v, float) for v in lr.values)
    assert batch.values == (8, 100) and all(isinstance(v, int) for v in batch.values)
