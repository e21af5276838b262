"""The Python API (raydt.api): a run trained and read back row for row, sweep directories
read back with their reports' numbers checked by hand, and docs/python_api.md's examples run
in order on a tiny run."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest
import yaml

import raydt
from raydt import api
from raydt.errors import ConfigError, RaydtError
from raydt.sinks import read_metrics
from tests.helpers import REPO, RUN_SPEC, TINY_RUN, tiny_config

PAGE = REPO / "docs" / "python_api.md"
SCORE = "eval/normalized_score"


def quiet(_: str) -> None:
    pass


def write_run(root, name, config, scores, extra_rows=()):
    """A run directory as a trial leaves it: its resolved config and one metrics row per
    evaluation (steps 100, 200, …), after ``extra_rows``."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    rows = [*extra_rows, *({"step": 100 * (i + 1), SCORE: s, "perf/train_seconds": 5.0 * (i + 1)}
                           for i, s in enumerate(scores))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def trial_config(backbone, dataset, seed, lr=1e-4):
    return {"model": {"backbone": backbone}, "data": {"dataset": dataset}, "train": {"seed": seed},
            "optim": {"lr": lr}}


def write_search(root, finals):
    """A replicated Optuna search: ``finals`` maps a learning rate to its replicates' final
    scores (seeds 0, 1, …); each curve is [final / 2, final]."""
    i = 0
    for lr, values in finals.items():
        for seed, final in enumerate(values):
            write_run(root, f"trial_{i:05d}", trial_config("random", "generated:hopper-medium", seed, lr),
                      [final / 2, final])
            i += 1
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "searched_keys": ["optim.lr", "train.seed"],
        "tune": {"searcher": "optuna", "metric": SCORE, "mode": "max",
                 "replicates": {"seeds": max(map(len, finals.values())), "aggregate": "mean", "score": "final"}}}))
    return root


def same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


# --------------------------------------------------------------------------------------
# train and load_run


def test_train_then_load_run_gives_back_every_row(tmp_path):
    out = tmp_path / "run"
    run = raydt.train(tiny_config(), out=out, overrides=["train.steps=6"], train__eval_every=3, train__seed=3, log=quiet)
    assert isinstance(run, api.RunResults) and run.path == out
    # Overrides applied on top of the config object: the list, then the keywords.
    assert run.config == tiny_config("train.steps=6", "train.eval_every=3", "train.seed=3")
    rows = read_metrics(out / "metrics.jsonl")
    # Logged every 2 steps, evaluated every 3: the evaluation at 3 is a row of its own.
    assert [r["step"] for r in rows] == [2, 3, 4, 6] and run.metrics["step"].tolist() == [2, 3, 4, 6]
    for (_, got), want in zip(run.metrics.iterrows(), rows, strict=True):
        assert all(same(float(got[k]), float(v)) for k, v in want.items()), (got, want)
        assert got.drop(list(want)).isna().all()  # a column a row did not log is NaN in that row
    # Evaluations at 3 and at the end (6): their rows, their numbers.
    evals = [r for r in rows if SCORE in r]
    assert run.evals["step"].tolist() == [r["step"] for r in evals] == [3, 6]
    assert run.evals[SCORE].tolist() == pytest.approx([r[SCORE] for r in evals])
    assert run.score() == pytest.approx((max(r[SCORE] for r in evals), evals[-1][SCORE]))
    assert run.timing == json.loads((out / "timing.json").read_text())
    assert run.run_info == json.loads((out / "run_info.json").read_text())
    # A URI reads the same run through a local copy.
    by_uri = raydt.load_run(f"file://{out}")
    assert by_uri.path != out and by_uri.metrics.equals(run.metrics)
    # A directory that holds a run is kept unless asked.
    with pytest.raises(RaydtError, match="already holds a run"):
        raydt.train(run.config, out=out, log=quiet)


def test_train_from_a_spec_file_and_its_mistakes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run directory defaults to runs/<spec name>, as `raydt train`'s
    run = raydt.train(RUN_SPEC, overrides=[*TINY_RUN, "train.steps=4"], optim__lr=3e-4, log=quiet)
    assert run.location == f"runs/{RUN_SPEC.stem}"
    assert run.config.optim.lr == 3e-4 and run.metrics["step"].tolist() == [2, 4]
    with pytest.raises(ConfigError, match="optim.lrr"):
        raydt.train(RUN_SPEC, out="x", optim__lrr=1.0)
    with pytest.raises(TypeError, match="double underscores"):
        raydt.train(RUN_SPEC, out="x", dryrun=True)
    with pytest.raises(TypeError, match="a list of KEY=VALUE"):
        raydt.train(RUN_SPEC, out="x", overrides="train.steps=4")
    with pytest.raises(TypeError, match="give out="):
        raydt.train(tiny_config())
    with pytest.raises(RaydtError, match="not a run directory"):
        raydt.load_run(tmp_path)


def test_raydt_train_is_the_package_made_callable():
    import pickle
    import sys

    import raydt.train.driver  # noqa: F401  (importing a submodule rebinds raydt.train: still the package)

    assert raydt.train is sys.modules["raydt.train"] and callable(raydt.train)
    assert pickle.loads(pickle.dumps(raydt.train)) is raydt.train  # by name, as a function sent to Ray carries it
    cloudpickle = pytest.importorskip("cloudpickle")
    assert pickle.loads(cloudpickle.dumps(raydt.train)) is raydt.train


# --------------------------------------------------------------------------------------
# load_sweep


@pytest.fixture
def sweep_dir(tmp_path):
    """Two backbones × two datasets × three seeds (final scores by hand), a trial that never
    evaluated, one that failed, and a row whose loss was NaN."""
    finals = {("random", "d4rl:hopper-medium-v2"): [50, 54, 52], ("random", "d4rl:walker2d-medium-v2"): [70, 72, 74],
              ("pretrain:/specs/chibit.yaml", "d4rl:hopper-medium-v2"): [60, 62, 64],
              ("pretrain:/specs/chibit.yaml", "d4rl:walker2d-medium-v2"): [66, 68, 70]}
    i = 0
    for (backbone, dataset), values in finals.items():
        for seed, final in enumerate(values):
            extra = [{"step": 50, "train/loss": "nan"}] if i == 0 else []
            write_run(tmp_path, f"trial_{i:05d}", trial_config(backbone, dataset, seed), [final / 2, final + 1, final],
                      extra)
            i += 1
    write_run(tmp_path, f"trial_{i:05d}", trial_config("random", "d4rl:hopper-medium-v2", 3), [])
    (tmp_path / "trials.json").write_text(json.dumps([{"trial": f"trial_{i:05d}", "status": "ERROR", "error": "boom"}]))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "searched_keys": ["model.backbone", "data.dataset", "train.seed"],
        "report": {"columns": ["backbone=random"], "labels": {"backbone=random": "DT",
                                                              "backbone=pretrain:chibit": "ChibiT"}}}))
    return tmp_path


def test_load_sweep_tables_hold_every_trial(sweep_dir):
    sweep = raydt.load_sweep(sweep_dir)
    assert list(sweep.runs) == [f"trial_{i:05d}" for i in range(13)]
    assert sweep.searched_keys == ["model.backbone", "data.dataset", "train.seed"]
    assert sweep.failed == {"trial_00012": "boom"}
    assert sweep.config.index.name == "trial"
    assert sweep.config.loc["trial_00004", "data.dataset"] == "d4rl:walker2d-medium-v2"
    assert sweep.config.loc["trial_00004", "train.seed"] == 1 and sweep.config.loc["trial_00004", "optim.lr"] == 1e-4
    m = sweep.metrics
    assert list(m.columns[:5]) == ["trial", "model.backbone", "data.dataset", "train.seed", "step"]
    assert len(m) == 12 * 3 + 1  # every row of every trial; the never-evaluated one has none
    one = m[m["trial"] == "trial_00001"]
    assert one["step"].tolist() == [100, 200, 300] and one[SCORE].tolist() == [27, 55, 54]
    assert set(one["model.backbone"]) == {"random"} and set(one["train.seed"]) == {1}
    nan_row = m[(m["trial"] == "trial_00000") & (m["step"] == 50)]
    assert math.isnan(nan_row["train/loss"].item())  # "nan" in the file, a float NaN in the table
    assert sweep.runs["trial_00000"].evals["step"].tolist() == [100, 200, 300]  # the NaN-loss row is no evaluation


def test_load_sweep_reports_the_numbers_by_hand(sweep_dir):
    sweep = raydt.load_sweep(sweep_dir)
    report = sweep.report().set_index(["model.backbone", "data.dataset"])
    random_hopper = report.loc[("random", "d4rl:hopper-medium-v2")]
    assert random_hopper["trials"] == 4  # the never-evaluated seed counts as a trial, not as a score
    assert random_hopper["final_mean"] == pytest.approx(52) and random_hopper["final_std"] == pytest.approx(np.std([50, 54, 52]))
    assert random_hopper["best_mean"] == pytest.approx(53)
    assert report.loc[("pretrain:/specs/chibit.yaml", "d4rl:walker2d-medium-v2"), "final_mean"] == pytest.approx(68)
    assert sweep.points() is None  # not a replicated search

    est = sweep.intervals(reps=200).set_index(["group", "aggregate"])
    mean = est.loc[("backbone=random", "mean")]
    assert mean["value"] == pytest.approx(np.mean([50, 54, 52, 70, 72, 74]))
    assert mean["ci_low"] <= mean["value"] <= mean["ci_high"] and (mean["runs"], mean["datasets"]) == (3, 2)
    assert est.loc[("backbone=pretrain:chibit", "optimality_gap"), "value"] == pytest.approx(100 - 65)
    assert any("trial_00012" in note for note in est.attrs["notes"])
    steps = sweep.intervals(which="converged_step", reps=200).set_index(["group", "aggregate"])
    assert steps.loc[("backbone=random", "mean"), "value"] == pytest.approx(200)  # within 2 of the best at step 200

    # P(ChibiT beats DT): every hopper pair (1); on walker2d only the 70-70 tie, counted half.
    p, low, high = sweep.compare("ChibiT", "DT", reps=200)
    assert p == pytest.approx((1 + 0.5 / 9) / 2) and low <= p <= high

    table = list(csv.reader(io.StringIO(sweep.table("reid2", "csv"))))
    assert table[0][:3] == ["dataset", "DT value", "DT std"]  # the spec's order and labels
    assert table[1][:2] == ["d4rl:hopper-medium-v2", "52"] and table[1][3] == "62"
    assert "\\begin{tabular}" in sweep.table("reid2", "latex")

    by_uri = raydt.load_sweep(f"file://{sweep_dir}")
    assert by_uri.report().equals(sweep.report())


def test_points_of_a_replicated_search(tmp_path):
    search = raydt.load_sweep(write_search(tmp_path, {1e-4: [40, 50, 60], 3e-4: [70, 72]}))
    points = search.points(reps=200)
    assert points["optim.lr"].tolist() == [3e-4, 1e-4]  # best first
    assert points["value"].tolist() == pytest.approx([71, 50])  # the mean of the replicates' final scores
    assert points["replicates_done"].tolist() == [2, 3] and set(points["replicates"]) == {3}
    assert (points["ci_low"] <= points["value"]).all() and (points["value"] <= points["ci_high"]).all()
    assert "mean of each replicate's final" in points.attrs["value"]


def test_load_sweep_of_nothing_says_so(tmp_path):
    with pytest.raises(RaydtError, match="holds no run directories"):
        raydt.load_sweep(tmp_path)


# --------------------------------------------------------------------------------------
# docs/python_api.md


def page_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_python_api_page_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block of the page, in order, in one namespace, in a fresh folder
    holding the repo's specs. Training is shrunk to the tiny run as tests/test_readme.py
    shrinks the README's commands: its overrides go first, so the page's own still apply.
    The sweep directories the page reads are made here as a sweep leaves them."""
    blocks = page_blocks()
    assert len(blocks) >= 6
    (tmp_path / "tune_specs").symlink_to(REPO / "tune_specs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    real_train = api.train

    def tiny_train(config, *, overrides=(), **options):
        return real_train(config, overrides=[*TINY_RUN, *overrides], **{"log": quiet, **options})

    monkeypatch.setattr(api, "train", tiny_train)
    chibit = f"pretrain:{tmp_path}/tune_specs/pretrain/chibit_quick.yaml"
    finals = {"random": [40, 44], chibit: [50, 56]}
    for i, (backbone, seed) in enumerate((b, s) for b in finals for s in (0, 1)):
        write_run(tmp_path / "runs" / "quickstart", f"trial_{i:05d}",
                  trial_config(backbone, "generated:hopper-medium?steps=100000", seed),
                  [finals[backbone][seed] - 10, finals[backbone][seed]])
    (tmp_path / "runs" / "quickstart" / "sweep.yaml").write_text(
        yaml.safe_dump({"searched_keys": ["model.backbone", "train.seed"]}))
    write_search(tmp_path / "runs" / "optuna_cpu", {1e-4: [30, 34], 3e-4: [60, 64]})

    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    from raydt.figures import pyplot

    pyplot().close("all")

    run, seed1 = namespace["run"], namespace["seed1"]
    assert run.config.optim.lr == 3e-4 and run.config.train.steps == 12  # the page's override, the tiny run
    assert run.path.resolve() == (tmp_path / "runs" / "hopper_lr3e-4").resolve()
    assert run.evals["step"].tolist() == [4, 8, 12]
    assert namespace["best"] == run.evals[SCORE].max() and namespace["final"] == run.evals[SCORE].iloc[-1]
    assert seed1.config.train.seed == 1 and seed1.config.optim.lr == 3e-4  # the variant keeps the rest
    assert namespace["plan"].num_trials == 6  # the quickstart: 2 backbones × 3 seeds
    report = namespace["sweep"].report().set_index("model.backbone")
    assert report["final_mean"].to_dict() == pytest.approx({"random": 42, chibit: 53})
    curves = namespace["curves"]
    assert curves.loc[(chibit, 200), "mean"] == pytest.approx(53)
    assert curves.loc[(chibit, 200), "std"] == pytest.approx(np.std([50, 56], ddof=1))  # pandas' std: n − 1
    points = namespace["search"].points()
    assert points["optim.lr"].tolist() == [3e-4, 1e-4] and points["value"].tolist() == pytest.approx([62, 32])
