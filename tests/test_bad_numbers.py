"""Numeric options out of range: one ``error:`` line naming the option and its value and
what to give, exit status 2, before any run is read (so most tests pass a folder that does
not exist: the option must be refused first)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydt import stats
from raydt.convergence import convergence
from raydt.errors import RaydtError
from tests.test_bad_input import one_line, run


@pytest.mark.parametrize("seed", ["-1", "-100"])
def test_eval_refuses_a_negative_seed(tmp_path, capsys, seed):
    status, err = run(capsys, "eval", str(tmp_path), "--seed", seed)
    assert status == 2 and f"--seed {seed}: give 0 or a positive number" in one_line(err)


@pytest.mark.parametrize("target", ["nan", "inf", "-inf", "NaN"])
def test_eval_refuses_a_target_that_is_not_finite(tmp_path, capsys, target):
    status, err = run(capsys, "eval", str(tmp_path), "--target", "3600", f"--target={target}")
    assert status == 2 and f"--target {target}: give a finite number" in one_line(err)


@pytest.mark.parametrize("reps", ["0", "-5"])
def test_report_refuses_no_or_negative_bootstrap_replications(tmp_path, capsys, reps):
    status, err = run(capsys, "report", str(tmp_path / "nowhere"), "--intervals", "--reps", reps)
    assert status == 2 and f"--reps {reps}: give a positive number" in one_line(err)


def test_bootstrap_functions_refuse_no_replications():
    scores = {"a": np.array([[50.0, 60.0], [55.0, 70.0]])}
    for call in (lambda: stats.interval_estimates(scores, reps=0),
                 lambda: stats.probability_of_improvement(scores["a"], scores["a"], reps=0),
                 lambda: stats.performance_profiles(scores, np.linspace(0, 100, 5), reps=-1)):
        with pytest.raises(RaydtError, match="give a positive number"):
            call()


@pytest.mark.parametrize("threshold", ["-1", "nan", "inf"])
def test_convergence_threshold_is_a_finite_number_not_below_zero(tmp_path, capsys, threshold):
    status, err = run(capsys, "bench", "convergence", str(tmp_path / "nowhere"), "--threshold", threshold)
    assert status == 2 and f"--threshold {threshold}: give a finite number ≥ 0" in one_line(err)
    with pytest.raises(RaydtError, match="--threshold"):
        convergence(tmp_path / "nowhere", threshold=float(threshold))


@pytest.mark.parametrize(("what", "windows", "says"), [
    ("cka", "0", "give a positive number"),  # was: silently the default 512
    ("cka", "1", "give 4 or more for cka"),
    ("cka", "3", "give 4 or more for cka"),
    ("attention", "-5", "give a positive number"),
    ("mi", "3", "give 4 or more for mi"),
    ("grads", "1", "give 2 or more for grads"),
    ("grads", "2.5", "not a whole number"),
])
def test_analyze_refuses_windows_the_analysis_cannot_measure_on(tmp_path, capsys, what, windows, says):
    status, err = run(capsys, "analyze", what, str(tmp_path / "nowhere"), "--windows", windows)
    assert status == 2 and f"--windows {windows}: {says}" in one_line(err)


def test_analyze_checks_windows_given_in_python_too():
    from raydt.analyze import Options, check

    with pytest.raises(RaydtError, match="--windows 0: give 1 or more for attention"):
        check("attention", Options(windows=0))
    with pytest.raises(RaydtError, match="--mine-steps 0"):
        check("mi", Options(mine_steps=0))
    check("params", Options(windows=1))  # params reads no windows


def test_analyze_mi_refuses_no_mine_steps(tmp_path, capsys):
    status, err = run(capsys, "analyze", "mi", str(tmp_path / "nowhere"), "--mine-steps", "0")
    assert status == 2 and "--mine-steps 0: give a positive number" in one_line(err)


@pytest.mark.parametrize("argv", [
    ["data", "make", "generated:hopper-medium", "--steps", "0"],
    ["data", "make", "generated:hopper-medium", "--seed", "-1"],
    ["data", "train-policy", "hopper", "--seed", "-1", "--out", "{tmp}/policy.npz"],
    ["data", "train-policy", "hopper", "--env-steps", "0", "--out", "{tmp}/policy.npz"],
    ["reproduce", "{tmp}/nowhere", "--steps", "0"],
    ["eval", "{tmp}/nowhere", "--episodes", "many"],
    ["analyze", "cka", "{tmp}/nowhere", "--pre", "-1"],
    ["analyze", "cka", "{tmp}/nowhere", "--post", "end"],
    ["analyze", "grads", "{tmp}/nowhere", "--step", "-8"],
], ids=["make-steps", "make-seed", "train-policy-seed", "train-policy-env-steps", "reproduce-steps", "eval-episodes",
        "analyze-pre", "analyze-post", "analyze-step"])
def test_every_other_numeric_option_is_range_checked(tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path) for a in argv]
    option, value = argv[-2:] if argv[-2] != "--out" else argv[-4:-2]
    status, err = run(capsys, *argv)
    assert status == 2 and one_line(err).startswith(f"error: {option} {value}: ")
    assert not (tmp_path / "policy.npz").exists()


def test_convergence_of_a_metric_no_run_logged_lists_the_ones_they_did(tmp_path, capsys):
    from raydt.train.loop import RunContext, fit
    from tests.helpers import tiny_config

    fit(tiny_config("train.steps=4"), tmp_path / "run", RunContext(log=lambda _: None))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    names = sorted({k for row in rows for k in row if k.startswith("eval/")})
    assert "eval/normalized_score" in names
    status, err = run(capsys, "bench", "convergence", str(tmp_path), "--metric", "eval/nonexistent")
    line = one_line(err)
    assert status == 2 and line.startswith("error: --metric eval/nonexistent: no run in ")
    assert line.endswith(f"their evaluation metrics: {', '.join(names)}")
    assert run(capsys, "bench", "convergence", str(tmp_path), "--metric", "eval/return_mean")[0] == 0


def test_convergence_before_any_run_evaluated_says_so(tmp_path, capsys):
    (tmp_path / "config.resolved.yaml").write_text("train: {seed: 0}\n")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "train/loss": 1.0}) + "\n")
    status, err = run(capsys, "bench", "convergence", str(tmp_path))
    assert status == 2 and "--metric eval/normalized_score" in one_line(err)
    assert "none of them has evaluated yet" in err
