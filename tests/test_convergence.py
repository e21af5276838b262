"""Convergence time on hand-made metrics files with known answers."""

import json

import numpy as np
import pytest
import yaml

from raydt.cli import main
from raydt.convergence import Curve, converged_index, convergence, format_table, group_convergence

NAN = float("nan")


def write_run(root, name, group, seed, scores, steps=None, train=None, total=None, extra_rows=()):
    """A run directory with one eval row per score (None = an evaluation that did not happen:
    the row is written without the metric, as a logging-only step would be)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"model": {"size": group}, "train": {"seed": seed}}))
    steps = steps or [100 * (i + 1) for i in range(len(scores))]
    train = train or [float(i + 1) for i in range(len(scores))]
    total = total or [2.0 * t for t in train]
    rows = []
    for step, score, tr, to in zip(steps, scores, train, total):
        row = {"step": step, "perf/train_seconds": tr, "perf/total_seconds": to}
        if score is not None:
            row["eval/normalized_score"] = score
        rows.append(row)
    rows += list(extra_rows)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep(tmp_path):
    # tie: seed means 15, 50, 52, 52, 51 → best 52 (reached twice), within 2 first at step 200
    write_run(tmp_path, "tie_s0", "tie", 0, [10, 46, 50, 50, 49], train=[1, 2, 3, 4, 5])
    write_run(tmp_path, "tie_s1", "tie", 1, [20, 54, 54, 54, 53], train=[1.5, 3, 4.5, 6, 7.5])
    # spike: means 10, 80, 30, 36 → never back within 2 of the spike, so it converged at the spike
    write_run(tmp_path, "spike_s0", "spike", 0, [10, 90, 30, 35])
    write_run(tmp_path, "spike_s1", "spike", 1, [10, 70, 30, 37])
    # missing: seed 1 has no evaluation at step 200, seed 2 never evaluated
    write_run(tmp_path, "missing_s0", "missing", 0, [10, 99, 30, 40])
    write_run(tmp_path, "missing_s1", "missing", 1, [20, None, 40, 44])
    write_run(tmp_path, "missing_s2", "missing", 2, [None, None])
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"searched_keys": ["model.size", "train.seed"]}))
    return tmp_path


def by_group(results):
    return {r.group["model.size"]: r for r in results}


def test_known_answers(sweep):
    keys, results = convergence(sweep)
    assert keys == ["model.size"]
    r = by_group(results)

    tie = r["tie"]
    assert tie.num_seeds == 2 and tie.mean_scores == [15, 50, 52, 52, 51]
    assert (tie.best_score, tie.best_step) == (52, 300)  # the first of the tied best
    assert tie.converged_step == 200  # exactly 2 below the best counts
    assert tie.converged_train_seconds == pytest.approx(2.5)  # mean of 2 and 3 s at step 200
    assert tie.converged_total_seconds == pytest.approx(5.0)
    s0, s1 = tie.seeds
    assert (s0.best_score, s0.converged_step, s0.converged_train_seconds) == (50, 300, 3)
    assert (s1.best_score, s1.converged_step, s1.converged_train_seconds) == (54, 200, 3)
    assert (s0.train_seconds_at_group_step, s1.train_seconds_at_group_step) == (2, 3)
    assert tie.spread["converged_step"] == pytest.approx(50)
    assert tie.spread["best_score"] == pytest.approx(2)

    spike = r["spike"]
    assert spike.mean_scores == [10, 80, 30, 36]
    assert (spike.best_score, spike.converged_step) == (80, 200)

    missing = r["missing"]
    assert missing.num_seeds == 2 and missing.runs_without_evals == ["missing_s2"]
    assert missing.incomplete_steps == [200] and missing.steps == [100, 300, 400]
    assert missing.mean_scores == [15, 35, 42]
    assert (missing.best_score, missing.converged_step) == (42, 400)
    # Each seed's own curve keeps its own evaluations: seed 0's best is the 99 at step 200.
    assert (missing.seeds[0].best_score, missing.seeds[0].converged_step) == (99, 200)


def test_threshold_and_mode():
    curve = [0.0, 7.0, 9.5, 10.0, 3.0]
    assert converged_index(curve, threshold=2) == 2  # 9.5 is the first ≥ 10 − 2
    assert converged_index(curve, threshold=0) == 3
    assert converged_index(curve, threshold=3) == 1
    assert converged_index([5.0, 1.0, 1.4, 0.9], threshold=0.5, mode="min") == 1
    with pytest.raises(ValueError):
        converged_index([])


def test_resumed_run_keeps_the_last_row_of_a_repeated_step():
    rows = [{"step": 100, "eval/normalized_score": 10.0}, {"step": 200, "eval/normalized_score": 5.0},
            {"step": 200, "eval/normalized_score": 30.0}, {"step": 300, "eval/normalized_score": NAN}]
    curve = Curve.from_rows(rows)
    assert curve.steps.tolist() == [100, 200] and curve.scores.tolist() == [10.0, 30.0]
    assert np.isnan(curve.train_seconds).all()  # not logged: NaN, never a made-up zero
    result = group_convergence({"a": curve})
    assert result.converged_step == 200 and result.converged_train_seconds != result.converged_train_seconds


def test_group_without_common_steps_has_no_answer():
    a = Curve.from_rows([{"step": 100, "eval/normalized_score": 1.0}])
    b = Curve.from_rows([{"step": 200, "eval/normalized_score": 2.0}])
    result = group_convergence({"a": a, "b": b}, {"g": 1})
    assert result.converged_step is None and result.incomplete_steps == [100, 200]
    assert "steps [100, 200] not evaluated by every seed" in format_table(["g"], [result])
    assert json.loads(json.dumps(result.summary(), allow_nan=False))["best_score"] is None


def test_cli_json_table_and_plot(sweep, capsys):
    assert main(["bench", "convergence", str(sweep), "--json", "--plot", str(sweep / "conv.png")]) == 0
    out = capsys.readouterr().out
    objects = [json.loads(line) for line in out.splitlines()]
    tie = next(o for o in objects if o["group"] == {"model.size": "tie"})
    assert {k: tie[k] for k in ("best_score", "converged_step", "converged_train_seconds",
                                "converged_total_seconds", "num_seeds")} == {
        "best_score": 52.0, "converged_step": 200, "converged_train_seconds": 2.5,
        "converged_total_seconds": 5.0, "num_seeds": 2}
    assert (sweep / "conv.png").stat().st_size > 10_000

    assert main(["bench", "convergence", str(sweep), "--threshold", "0"]) == 0
    table = capsys.readouterr().out
    tie_line = next(line for line in table.splitlines() if line.startswith("tie "))
    assert tie_line.split()[2:4] == ["52.0", "300"]  # with no slack, the first best
    assert "missing: no evaluations in missing_s2" in table

    assert main(["bench", "convergence", str(sweep), "--by", "train.seed"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in rows[2:5]] == ["0", "1", "2"]
    assert "seed=2: no evaluations in missing_s2" in rows
    assert main(["bench", "convergence", str(sweep / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
