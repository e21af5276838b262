"""Interval estimates over seeds and tasks, as Agarwal et al. (NeurIPS 2021) recommend.

A sweep's runs become one score matrix per group, (runs × tasks): rows are seeds, columns
are datasets. rliable (their library) computes the aggregates (IQM, mean, median,
optimality gap) with stratified-bootstrap confidence intervals, the probability that one
group improves on another, and performance profiles. Scores are D4RL-normalized (0 =
random, 100 = expert); rliable works on them divided by 100, so the optimality gap is the
shortfall from the expert score, and every number is reported back on the 0-100 scale.

A group's matrix needs the same seeds for every task: runs beyond the seeds all its tasks
share, and runs that never evaluated, are left out and listed (:attr:`ScoreMatrices.notes`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydt.errors import RaydtError
from raydt.rundir import METRIC, SEED_KEY, Run, find_runs, group_runs, readable  # noqa: F401 (re-exported)

TASK_KEY = "data.dataset"
"""The config key whose values are a sweep's tasks (the columns of a score matrix)."""
AGGREGATES = ("iqm", "mean", "median", "optimality_gap")
SCORES = ("final", "best", "converged_step")
"""Which number of a run: its last evaluation, its best one, or the step at which it first
came within 2 points of its best (Reid et al.'s convergence, per run)."""
STEP_AGGREGATES = ("iqm", "mean", "median")
"""Aggregates of convergence steps (an optimality gap has no meaning for them)."""


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``backbone=gpt2, lambda1=0.1`` (last key part, readable values); "all runs" for none."""
    return ", ".join(f"{k.split('.')[-1]}={readable(v)}" for k, v in zip(keys, values)) or "all runs"


@dataclass
class ScoreMatrices:
    """One (runs × tasks) matrix of scores per group, with what was left out."""

    keys: list[str]
    """The config keys that define a group (searched keys without seed and task)."""
    tasks: list[str]
    """Column order: the datasets."""
    scores: dict[str, np.ndarray]
    """Group label → (runs, tasks) scores, 0-100."""
    runs: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    """Group label → task → the runs behind its column (seed order)."""
    notes: list[str] = field(default_factory=list)
    """Runs left out of a matrix, and why."""


def run_score(run: Run, which: str = "final", metric: str = METRIC) -> float:
    """A run's final or best score, or its convergence step (NaN when it never evaluated)."""
    if which == "converged_step":
        from raydt.convergence import Curve, converged_index

        curve = Curve.from_rows(run.evals, metric)
        return float(curve.steps[converged_index(curve.scores)]) if len(curve) else math.nan
    best, final = run.score(metric)
    return best if which == "best" else final


def score_matrices(root: Path, by: Sequence[str] | None = None, which: str = "final",
                   metric: str = METRIC, task_key: str = TASK_KEY) -> ScoreMatrices:
    """The score matrices of the runs at or below ``root`` (a sweep or a folder of runs)."""
    if which not in SCORES:
        raise RaydtError(f"score {which!r}: use one of {', '.join(SCORES)}")
    runs = find_runs(Path(root), metric)
    keys, groups = group_runs(runs, by, Path(root))
    keys = [k for k in keys if k != task_key]
    tasks = sorted({str(r.config.get(task_key)) for r in runs})
    notes: list[str] = []
    by_group: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        label = group_label(keys, [run.config.get(k) for k in keys])
        by_group.setdefault(label, {}).setdefault(str(run.config.get(task_key)), []).append(run)
    scores: dict[str, np.ndarray] = {}
    kept: dict[str, dict[str, list[Run]]] = {}
    for label, per_task in sorted(by_group.items()):
        evaluated = {t: sorted((r for r in rs if math.isfinite(run_score(r, which, metric))),
                               key=lambda r: (r.config.get(SEED_KEY, 0), r.name))
                     for t, rs in per_task.items()}
        for t, rs in per_task.items():
            for r in rs:
                if r not in evaluated[t]:
                    notes.append(f"{label} / {t}: {r.name} has no {metric}; left out")
        missing_tasks = [t for t in tasks if not evaluated.get(t)]
        if missing_tasks:
            notes.append(f"{label}: no evaluated run for {', '.join(missing_tasks)}; the group is left out of "
                         "the aggregates (a matrix needs every task)")
            kept[label] = evaluated
            continue
        n = min(len(evaluated[t]) for t in tasks)
        for t in tasks:
            for r in evaluated[t][n:]:
                notes.append(f"{label} / {t}: {r.name} is beyond the {n} seed(s) every task has; left out")
        kept[label] = {t: evaluated[t][:n] for t in tasks}
        scores[label] = np.array([[run_score(kept[label][t][i], which, metric) for t in tasks] for i in range(n)])
    return ScoreMatrices(keys, tasks, scores, kept, notes)


@contextlib.contextmanager
def quiet_bootstrap():
    """rliable hands arch a RandomState, which arch now warns about on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arch")
        yield


def _check_reps(reps: int) -> None:
    # rliable fails on 0 or fewer replications with an IndexError deep in its bootstrap.
    if reps < 1:
        raise RaydtError(f"--reps {reps}: give a positive number of bootstrap replications")


def _aggregate(name: str):
    from rliable import metrics

    return {"iqm": metrics.aggregate_iqm, "mean": metrics.aggregate_mean,
            "median": metrics.aggregate_median, "optimality_gap": metrics.aggregate_optimality_gap}[name]


def interval_estimates(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0, confidence: float = 0.95,
                       scale: float = 100.0, aggregates: Sequence[str] = AGGREGATES
                       ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Group → aggregate → (point, low, high) with stratified-bootstrap CIs. Scores are
    divided by ``scale`` for rliable (normalized scores: 100, so the optimality gap is the
    shortfall from expert) and multiplied back."""
    from rliable import library as rly

    _check_reps(reps)
    if not scores:
        return {}
    funcs = [_aggregate(a) for a in aggregates]

    def all_aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([f(x) for f in funcs])

    scaled = {k: v / scale for k, v in scores.items()}
    with quiet_bootstrap():
        points, intervals = rly.get_interval_estimates(scaled, all_aggregates, reps=reps,
                                                       confidence_interval_size=confidence,
                                                       random_state=np.random.RandomState(seed))
    return {g: {a: (scale * float(points[g][i]), scale * float(intervals[g][0][i]),
                    scale * float(intervals[g][1][i]))
                for i, a in enumerate(aggregates)} for g in scores}


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0,
                               confidence: float = 0.95) -> tuple[float, float, float]:
    """P(X > Y): the chance that a run of X beats a run of Y on a task, averaged over tasks
    (Mann-Whitney U / (n·m)), with its bootstrap CI; (point, low, high) in [0, 1]."""
    from rliable import library as rly
    from rliable import metrics

    _check_reps(reps)
    if x.shape[1] != y.shape[1]:
        raise RaydtError("probability of improvement needs the same tasks in both groups")
    with quiet_bootstrap():
        points, intervals = rly.get_interval_estimates(
            {"x,y": (x, y)}, metrics.probability_of_improvement, reps=reps, confidence_interval_size=confidence,
            random_state=np.random.RandomState(seed))
    point, interval = np.ravel(points["x,y"]), np.asarray(intervals["x,y"]).reshape(2, -1)
    return float(point[0]), float(interval[0, 0]), float(interval[1, 0])


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int = 2000
                         ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Group → (fraction of runs with score > τ for each τ, CI low, CI high)."""
    from rliable import library as rly

    _check_reps(reps)
    if not scores:
        return {}
    with quiet_bootstrap():
        profiles, cis = rly.create_performance_profile({k: v / 100.0 for k, v in scores.items()}, taus / 100.0,
                                                       reps=reps)
    return {g: (np.asarray(profiles[g]), np.asarray(cis[g][0]), np.asarray(cis[g][1])) for g in scores}


def format_estimates(estimates: dict[str, dict[str, tuple[float, float, float]]], which: str) -> str:
    """A plain table: one row per group, each aggregate as point [low, high] (95% CI)."""
    aggregates = list(next(iter(estimates.values()))) if estimates else list(AGGREGATES)
    spec = ".0f" if which == "converged_step" else ".1f"
    header = ["group", *(f"{a} ({which})" for a in aggregates)]
    body = [[g, *(f"{v[a][0]:{spec}} [{v[a][1]:{spec}}, {v[a][2]:{spec}}]" for a in aggregates)]
            for g, v in estimates.items()]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def plot_profiles(profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], taus: np.ndarray,
                  out: Path, title: str = "") -> Path:
    """Performance profiles with their CI bands (Agarwal et al. Fig. 5)."""
    from raydt.figures import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for label, (profile, low, high) in profiles.items():
        (line,) = ax.plot(taus, profile, label=label)
        ax.fill_between(taus, low, high, alpha=0.2, color=line.get_color())
    ax.set_xlabel("normalized score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "performance profiles (95% CI)")
    fig.tight_layout()
    return save_figure(fig, out)
