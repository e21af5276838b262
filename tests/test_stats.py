"""Interval estimates and the papers' tables, on hand-made score matrices and sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from raydt import stats
from raydt.cli import main
from raydt.tables import Layout, paper_table


def test_rliable_imports_with_the_pinned_pandas():
    import pandas
    from rliable import library, metrics  # noqa: F401  (arch fails at import under pandas 3)

    assert int(pandas.__version__.split(".")[0]) < 3


def test_iqm_of_a_hand_made_matrix():
    # 8 runs × 1 task: the interquartile mean drops the 2 lowest and the 2 highest
    scores = np.array([[0.0], [10], [20], [30], [40], [50], [60], [1000]])
    est = stats.interval_estimates({"g": scores}, reps=200)["g"]
    assert est["iqm"][0] == pytest.approx(np.mean([20, 30, 40, 50]))
    assert est["mean"][0] == pytest.approx(scores.mean())
    assert est["median"][0] == pytest.approx(scores.mean())  # rliable: the median over tasks of task means
    tasks = np.array([[10.0, 40, 90], [20, 60, 70]])  # task means 15, 50, 80
    assert stats.interval_estimates({"g": tasks}, reps=100)["g"]["median"][0] == pytest.approx(50.0)
    # optimality gap: mean shortfall from 100 (the expert score), scores above 100 count as 100
    assert est["optimality_gap"][0] == pytest.approx(np.mean([100 - min(s, 100) for s in scores[:, 0]]))
    assert est["iqm"][1] <= est["iqm"][0] <= est["iqm"][2]


def test_bootstrap_interval_covers_the_true_mean_at_about_the_stated_rate():
    rng = np.random.default_rng(0)
    hits, trials = 0, 120
    for i in range(trials):
        draw = rng.normal(50.0, 10.0, size=(30, 1))  # 30 runs of one task, true mean 50
        _, low, high = stats.interval_estimates({"g": draw}, reps=400, seed=i, aggregates=("mean",))["g"]["mean"]
        hits += low <= 50.0 <= high
    assert 0.88 <= hits / trials <= 0.99  # 95% nominal; percentile bootstrap at n=30 runs a little under


def test_probability_of_improvement_known_values():
    x = np.array([[10.0, 20.0], [11, 21], [12, 22]])
    assert stats.probability_of_improvement(x + 100, x, reps=100)[0] == pytest.approx(1.0)
    assert stats.probability_of_improvement(x, x + 100, reps=100)[0] == pytest.approx(0.0)
    assert stats.probability_of_improvement(x, x, reps=100)[0] == pytest.approx(0.5)  # ties count half


def write_run(root, name, backbone, dataset, seed, scores):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(
        {"model": {"backbone": backbone}, "data": {"dataset": dataset}, "train": {"seed": seed}}))
    rows = [{"step": 100 * (i + 1), "eval/normalized_score": s, "perf/train_seconds": 5.0 * (i + 1)}
            for i, s in enumerate(scores)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep(tmp_path):
    finals = {("random", "d4rl:hopper-medium-v2"): [50, 54, 52], ("random", "d4rl:walker2d-medium-v2"): [70, 72, 74],
              ("pretrain:/specs/chibit.yaml", "d4rl:hopper-medium-v2"): [60, 62, 64],
              ("pretrain:/specs/chibit.yaml", "d4rl:walker2d-medium-v2"): [66, 68, 70]}
    i = 0
    for (backbone, dataset), values in finals.items():
        for seed, final in enumerate(values):
            write_run(tmp_path, f"trial_{i:05d}", backbone, dataset, seed, [final / 2, final + 1, final])
            i += 1
    write_run(tmp_path, f"trial_{i:05d}", "random", "d4rl:hopper-medium-v2", 3, [])  # never evaluated
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "searched_keys": ["model.backbone", "data.dataset", "train.seed"],
        "report": {"columns": ["backbone=random"], "labels": {"backbone=random": "DT",
                                                              "backbone=pretrain:chibit": "ChibiT"}}}))
    return tmp_path


def test_score_matrices_group_by_everything_but_seed_and_dataset(sweep):
    m = stats.score_matrices(sweep)
    assert m.keys == ["model.backbone"] and m.tasks == ["d4rl:hopper-medium-v2", "d4rl:walker2d-medium-v2"]
    assert set(m.scores) == {"backbone=random", "backbone=pretrain:chibit"}  # readable labels
    np.testing.assert_array_equal(m.scores["backbone=random"], [[50, 70], [54, 72], [52, 74]])
    assert any("trial_00012 has no eval/normalized_score" in n for n in m.notes)  # listed, not dropped silently
    best = stats.score_matrices(sweep, which="best").scores["backbone=random"]
    np.testing.assert_array_equal(best, [[51, 71], [55, 73], [53, 75]])
    steps = stats.score_matrices(sweep, which="converged_step").scores["backbone=random"]
    assert (steps == 200).all()  # final+1 at step 200 is the best; step 300 is also within 2


def test_reid2_table_bolds_the_row_maximum_in_every_format(sweep):
    md = paper_table("reid2", sweep, "md")
    lines = md.splitlines()
    assert lines[0] == "| dataset | DT | ChibiT |"  # the spec's order and labels
    hopper = next(line for line in lines if line.startswith("| d4rl:hopper"))
    assert hopper == "| d4rl:hopper-medium-v2 | 52.0 ± 1.6 | **62.0 ± 1.6** |"
    walker = next(line for line in lines if line.startswith("| d4rl:walker"))
    assert walker == "| d4rl:walker2d-medium-v2 | **72.0 ± 1.6** | 68.0 ± 1.6 |"
    average = next(line for line in lines if line.startswith("| Average"))
    assert average == "| Average | 62.0 | **65.0** |"
    latex = paper_table("reid2", sweep, "latex")
    assert r"\textbf{62.0 $\pm$ 1.6}" in latex and r"d4rl:hopper-medium-v2 & 52.0 $\pm$ 1.6" in latex
    rows = paper_table("reid2", sweep, "csv").splitlines()
    assert rows[0] == "dataset,DT value,DT std,ChibiT value,ChibiT std"
    assert rows[1].startswith("d4rl:hopper-medium-v2,52,1.633,62,1.633")
    iqm = paper_table("reid2", sweep, "md", cells="iqm", reps=200)
    assert "IQM [95% CI]" in iqm and "**62.0 [" in iqm


def test_reid3_and_reid6(sweep):
    reid3 = paper_table("reid3", sweep, "md")
    assert "| d4rl:hopper-medium-v2 | **200 (10 s)** | **200 (10 s)** |" in reid3  # ties: both bold
    csv = paper_table("reid3", sweep, "csv").splitlines()  # steps and seconds, named as such
    assert csv[0] == "dataset,DT steps,DT train_seconds,ChibiT steps,ChibiT train_seconds"
    assert csv[1] == "d4rl:hopper-medium-v2,200,10,200,10"
    reid6 = paper_table("reid6", sweep, "md").splitlines()
    assert reid6[0] == "| group | d4rl:hopper-medium-v2 | d4rl:walker2d-medium-v2 | Average |"
    assert reid6[2] == "| DT | 52.0 ± 1.6 | **72.0 ± 1.6** | 62.0 |"  # best per column


def test_layout_errors_name_the_key():
    with pytest.raises(Exception, match="report: unknown key"):
        Layout.from_spec({"colums": []})
    with pytest.raises(Exception, match=r"report.labels: give a mapping"):
        Layout.from_spec({"labels": ["a"]})


def test_report_cli_prints_intervals_improvement_and_draws_profiles(sweep, tmp_path, capsys):
    out_png = tmp_path / "figs" / "profiles.png"
    assert main(["report", str(sweep), "--intervals", "--compare", "backbone=pretrain:chibit", "backbone=random",
                 "--profile", str(out_png), "--reps", "200"]) == 0
    out = capsys.readouterr().out
    assert "iqm (final)" in out and "optimality_gap (best)" in out and "iqm (converged_step)" in out
    # hopper: all 9 pairs won; walker: one tie (70 vs 70) of 9 → (1 + 0.5 / 9) / 2
    assert "P(backbone=pretrain:chibit > backbone=random) = 0.528" in out
    assert out_png.stat().st_size > 5_000 and "note: " in out
    assert main(["report", str(sweep), "--table", "reid2", "--format", "latex"]) == 0
    assert r"\begin{tabular}" in capsys.readouterr().out
    assert main(["report", str(sweep), "--compare", "nope", "backbone=random"]) == 2


def test_grouped_tensorboard_runs_hold_the_seed_mean_at_every_step(sweep, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["report", str(sweep), "--tensorboard"]) == 0
    assert "grouped TensorBoard runs: 4" in capsys.readouterr().out  # backbone × dataset, seeds averaged
    groups = sorted(p.name for p in (sweep / "groups").iterdir())
    assert groups[0] == "backbone=pretrain:chibit,dataset=d4rl:hopper-medium-v2"
    acc = EventAccumulator(str(sweep / "groups" / "backbone=random,dataset=d4rl:hopper-medium-v2")).Reload()
    # three seeds (the fourth run never evaluated and holds no step back): finals 50, 54, 52
    finals = [50, 54, 52]
    expected = {100: np.mean(finals) / 2, 200: np.mean(finals) + 1, 300: np.mean(finals)}
    mean = {e.step: e.value for e in acc.Scalars("eval/normalized_score")}
    assert mean.keys() == expected.keys()
    for step, value in expected.items():
        assert mean[step] == pytest.approx(value, rel=1e-6)
    assert {e.step: e.value for e in acc.Scalars("eval/normalized_score/max")}[300] == pytest.approx(54)
    assert {e.step: e.value for e in acc.Scalars("eval/normalized_score/min")}[300] == pytest.approx(50)
    assert "custom_scalars__config__" in acc.Tags()["tensors"]


def test_compare_draws_ci_bands_and_profiles(sweep, tmp_path, capsys):
    from raydt.report import curve_intervals

    scores = np.array([[10.0, 20, 30], [12, 22, 32], [14, 24, 34]])  # (seeds, evals)
    low, high = curve_intervals(scores, reps=300)
    assert (low <= scores.mean(0)).all() and (scores.mean(0) <= high).all() and (high - low <= 4 + 1e-9).all()
    flat_low, flat_high = curve_intervals(np.ones((3, 4)), reps=50)
    np.testing.assert_allclose(flat_low, 1.0) and np.testing.assert_allclose(flat_high, 1.0)
    out, prof = tmp_path / "c" / "curves.png", tmp_path / "c" / "profiles.png"
    assert main(["compare", str(sweep), "--out", str(out), "--profile", str(prof)]) == 0
    assert out.stat().st_size > 10_000 and prof.stat().st_size > 10_000


def test_a_damaged_run_record_or_metrics_row_is_skipped_with_a_note(sweep, capsys):
    (sweep / "trial_00001" / "config.resolved.yaml").write_bytes(b"model: [unclosed\n\xff\xfe")
    metrics = sweep / "trial_00002" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({"step": "twenty", "eval/normalized_score": 3.0}) + "\n")
    assert main(["report", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "skipped " + str(sweep / "trial_00001") in captured.err and "config.resolved.yaml cannot be read" in captured.err
    assert "skipped line 4, whose step is 'twenty'" in captured.err and "Traceback" not in captured.err
    assert "random" in captured.out


def test_groups_of_one_run_are_not_shown_as_exact_and_full_keys_name_groups(tmp_path, capsys):
    # Two groups of one seed each: no "± 0.0", zero-width intervals and P = 1 flagged.
    write_run(tmp_path, "trial_00000", "random", "d4rl:hopper-medium-v2", 0, [40, 50, 52])
    write_run(tmp_path, "trial_00001", "pretrain:/specs/chibit.yaml", "d4rl:hopper-medium-v2", 0, [50, 60, 62])
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"searched_keys": ["model.backbone", "train.seed"]}))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "± 0.0" not in out and "2 group(s) of one run: no spread over seeds (n = 1)" in out
    assert main(["report", str(tmp_path), "--compare", "model.backbone=pretrain:chibit", "model.backbone=random",
                 "--reps", "50"]) == 0  # the full key, as the table's header names it
    out = capsys.readouterr().out
    assert "one run per dataset (n = 1)" in out and "(n = 1: not evidence)" in out


def test_convergence_labels_a_pretrain_spec_by_its_name(sweep, capsys):
    assert main(["bench", "convergence", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "pretrain:chibit" in out and "/specs/chibit.yaml" not in out


def test_report_compare_in_a_sweep_spec_names_two_groups():
    assert Layout.from_spec({"compare": ["backbone=a", "backbone=b"]}).compare == ("backbone=a", "backbone=b")
    with pytest.raises(Exception, match="report.compare: give two group names"):
        Layout.from_spec({"compare": ["backbone=a"]})


def test_a_profile_named_without_a_suffix_is_written_and_printed_as_png(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--profile", str(tmp_path / "prof_out"), "--reps", "20"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "prof_out.png").is_file() and f"performance profiles: {tmp_path / 'prof_out.png'}" in out
