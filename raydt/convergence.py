"""Convergence time, defined once (Reid et al. §5.1, Table 3) and used by reports, the
sweep stopper and ``raydt bench convergence``.

For a group of runs that differ only in their seed: average the score over the seeds at
each evaluation step; the best is the maximum of that averaged curve; the group converged
at the first evaluation whose average is within ``threshold`` (2 points) of the best.

A step enters the averaged curve only when every seed of the group evaluated there (an
average over a changing subset of seeds would compare different things); the steps left
out are reported as ``incomplete_steps``. Times are read from the same metrics rows:
``perf/train_seconds`` (training only) and ``perf/total_seconds`` (evaluation included,
up to and including the evaluation at that step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydt.errors import DataError, RaydtError
from raydt.figures import curves_figure, save_curves_figure
from raydt.rundir import METRIC, Run, find_runs, group_runs, readable

THRESHOLD = 2.0
"""Points of normalized score within which a curve counts as converged (Reid et al.)."""

TRAIN_SECONDS = "perf/train_seconds"
TOTAL_SECONDS = "perf/total_seconds"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Curve:
    """One run's evaluations, in step order (a step logged twice, e.g. around a resume,
    keeps its last row)."""

    steps: np.ndarray
    """(n,) training steps of the evaluations."""
    scores: np.ndarray
    """(n,) the metric at each evaluation."""
    train_seconds: np.ndarray
    """(n,) cumulative training seconds at each evaluation (NaN where not logged)."""
    total_seconds: np.ndarray
    """(n,) cumulative training + evaluation seconds at each evaluation (NaN where not logged)."""

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], metric: str = METRIC) -> Curve:
        by_step: dict[int, Mapping[str, Any]] = {}
        for row in rows:
            if _finite(row.get(metric)) and "step" in row:
                by_step[int(row["step"])] = row
        steps = sorted(by_step)

        def column(key: str) -> np.ndarray:
            return np.array([float(by_step[s][key]) if _finite(by_step[s].get(key)) else math.nan
                             for s in steps], dtype=float)

        return cls(np.array(steps, dtype=np.int64), column(metric), column(TRAIN_SECONDS), column(TOTAL_SECONDS))

    def __len__(self) -> int:
        return len(self.steps)


def converged_index(scores: Sequence[float] | np.ndarray, threshold: float = THRESHOLD, mode: str = "max") -> int:
    """Index of the first score within ``threshold`` of the best (``mode="min"``: of the
    lowest). Ties and exact distances of ``threshold`` count as converged."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("no scores")
    if mode == "min":
        values = -values
    # A tiny tolerance so that e.g. 50.0 vs a best of 52.0 stays "within 2" in floating point.
    return int(np.argmax(values >= values.max() - threshold - 1e-9))


@dataclass
class SeedResult:
    """One run of a group, on its own curve and at the group's convergence step."""

    name: str
    best_score: float
    converged_step: int
    """This run's own convergence step (its curve, its best)."""
    converged_train_seconds: float
    converged_total_seconds: float
    train_seconds_at_group_step: float
    """This run's training seconds at the group's convergence step."""
    total_seconds_at_group_step: float


@dataclass
class GroupConvergence:
    """Convergence of one group of seeds."""

    group: dict[str, Any]
    num_seeds: int
    best_score: float | None
    best_step: int | None
    converged_step: int | None
    converged_train_seconds: float | None
    """Mean over seeds of ``perf/train_seconds`` at the converged step."""
    converged_total_seconds: float | None
    """Mean over seeds of ``perf/total_seconds`` at the converged step."""
    threshold: float
    steps: list[int] = field(default_factory=list)
    """Steps of the averaged curve (evaluated by every seed)."""
    mean_scores: list[float] = field(default_factory=list)
    """The averaged curve."""
    mean_train_seconds: list[float] = field(default_factory=list)
    seeds: list[SeedResult] = field(default_factory=list)
    spread: dict[str, float] = field(default_factory=dict)
    """Standard deviation over seeds of their own best score, convergence step and seconds."""
    incomplete_steps: list[int] = field(default_factory=list)
    """Steps some seeds evaluated and others did not; left out of the averaged curve."""
    runs_without_evals: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The fields ``--json`` prints."""
        keys = ("group", "best_score", "converged_step", "converged_train_seconds",
                "converged_total_seconds", "num_seeds", "best_step", "threshold", "spread",
                "incomplete_steps", "runs_without_evals")
        out = {k: getattr(self, k) for k in keys}
        out["seeds"] = [asdict(s) for s in self.seeds]
        return json_safe(out)


def json_safe(value: Any) -> Any:
    """NaN → None, numpy scalars → Python: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _nanstd(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite)) if finite else math.nan


def group_convergence(curves: Mapping[str, Curve], group: Mapping[str, Any] | None = None,
                      threshold: float = THRESHOLD, mode: str = "max") -> GroupConvergence:
    """Convergence of a group of runs (``curves``: run name → its evaluations)."""
    with_evals = {name: c for name, c in curves.items() if len(c)}
    result = GroupConvergence(dict(group or {}), len(with_evals), None, None, None, None, None, threshold,
                              runs_without_evals=sorted(set(curves) - set(with_evals)))
    if not with_evals:
        return result
    step_sets = [set(c.steps.tolist()) for c in with_evals.values()]
    common = sorted(set.intersection(*step_sets))
    result.incomplete_steps = sorted(set.union(*step_sets) - set(common))
    if not common:
        return result
    # (seeds, steps) aligned on the common steps.
    rows = [np.searchsorted(c.steps, common) for c in with_evals.values()]  # steps are sorted
    scores = np.stack([c.scores[i] for c, i in zip(with_evals.values(), rows)])
    train = np.stack([c.train_seconds[i] for c, i in zip(with_evals.values(), rows)])
    total = np.stack([c.total_seconds[i] for c, i in zip(with_evals.values(), rows)])
    mean = scores.mean(axis=0)
    at = converged_index(mean, threshold, mode)
    best_at = int(np.argmax(mean) if mode == "max" else np.argmin(mean))
    result.best_score, result.best_step = float(mean[best_at]), common[best_at]
    result.converged_step = common[at]
    result.converged_train_seconds = _nanmean(train[:, at].tolist())
    result.converged_total_seconds = _nanmean(total[:, at].tolist())
    result.steps, result.mean_scores = common, mean.tolist()
    result.mean_train_seconds = [_nanmean(col) for col in train.T.tolist()]
    for row, (name, curve) in enumerate(with_evals.items()):
        own = converged_index(curve.scores, threshold, mode)
        best = float(curve.scores.max() if mode == "max" else curve.scores.min())
        result.seeds.append(SeedResult(
            name, best, int(curve.steps[own]), float(curve.train_seconds[own]), float(curve.total_seconds[own]),
            float(train[row, at]), float(total[row, at]),
        ))
    result.spread = {
        key: _nanstd([getattr(s, key) for s in result.seeds])
        for key in ("best_score", "converged_step", "converged_train_seconds", "converged_total_seconds")
    }
    return result


def convergence(root: Path, by: Sequence[str] | None = None, threshold: float = THRESHOLD,
                metric: str = METRIC, mode: str = "max") -> tuple[list[str], list[GroupConvergence]]:
    """Convergence of every group of runs at or below ``root`` (a run, a sweep, or a folder
    of runs); groups as in ``raydt report`` (the searched keys without the seed, or ``by``)."""
    if not (math.isfinite(threshold) and threshold >= 0):
        raise RaydtError(f"--threshold {threshold}: give a finite number ≥ 0 (default {THRESHOLD:g})")
    runs = find_runs(Path(root), metric)
    if not any(run.evals for run in runs):
        raise RaydtError(_unlogged(root, metric, runs))
    keys, groups = group_runs(runs, by, Path(root))
    results = []
    for values, members in groups.items():
        curves = {t.name: Curve.from_rows(t.evals, metric) for t in members}
        results.append(group_convergence(curves, dict(zip(keys, values)), threshold, mode))
    return keys, results


def _unlogged(root: Path, metric: str, runs: Sequence[Run]) -> str:
    """Why no run logged ``metric``: the evaluation metrics they do log, or that none evaluated."""
    names: set[str] = set()
    for run in runs:
        try:
            names.update(k for row in run.dir.read_metrics() for k in row if k.startswith("eval/"))
        except DataError:  # a damaged file: find_runs has warned about it already
            pass
    have = f"their evaluation metrics: {', '.join(sorted(names))}" if names else "none of them has evaluated yet"
    return f"--metric {metric}: no run in {root} logged it; {have}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(keys: list[str], results: Sequence[GroupConvergence]) -> str:
    """A Table-3-style table: one row per group. ``best``, ``converged step`` and the times
    are read off the seed-averaged curve (times are the mean over seeds at that step); the
    ``per seed`` columns are each seed's own convergence, mean ± std over seeds."""
    header = [*keys, "seeds", "best", "converged step", "train time", "total time",
              "per seed: best", "per seed: step", "per seed: train time"]
    def per_seed(r: GroupConvergence, key: str, spec: str, unit: str = "") -> str:
        values = [getattr(s, key) for s in r.seeds]
        return f"{_fmt(_nanmean(values), spec)}{unit} ± {_fmt(_nanstd(values), spec)}" if values else "-"

    body = []
    for r in results:
        body.append([
            *(readable(r.group.get(k)) for k in keys), str(r.num_seeds),
            _fmt(r.best_score, ".1f"),
            "-" if r.converged_step is None else str(r.converged_step),
            f"{_fmt(r.converged_train_seconds, '.1f')} s",
            f"{_fmt(r.converged_total_seconds, '.1f')} s",
            per_seed(r, "best_score", ".1f"), per_seed(r, "converged_step", ".0f"),
            per_seed(r, "converged_train_seconds", ".1f", " s"),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    notes = [f"{_label(r.group)}: steps {r.incomplete_steps} not evaluated by every seed, left out"
             for r in results if r.incomplete_steps]
    notes += [f"{_label(r.group)}: no evaluations in {', '.join(r.runs_without_evals)}"
              for r in results if r.runs_without_evals]
    return "\n".join(lines + notes)


def _label(group: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={readable(v)}" for k, v in group.items()) or "all runs"


def plot(results: Sequence[GroupConvergence], out: Path, title: str = "", metric: str = METRIC) -> Path:
    """The averaged curves against steps and against training seconds, with each group's
    best (dashed) and convergence point (circle) marked."""
    fig, ax_steps, ax_secs = curves_figure()
    for r in results:
        if not r.steps:
            continue
        at = r.steps.index(r.converged_step)
        for ax, x in ((ax_steps, r.steps), (ax_secs, r.mean_train_seconds)):
            (line,) = ax.plot(x, r.mean_scores, label=f"{_label(r.group)} (n={r.num_seeds})")
            ax.axhline(r.best_score, ls="--", lw=0.8, color=line.get_color())
            ax.plot([x[at]], [r.mean_scores[at]], "o", ms=9, mfc="none", color=line.get_color())
    threshold = results[0].threshold if results else THRESHOLD
    title = f"{title}: dashed = best, circle = first evaluation within {threshold:g} of it".lstrip(": ")
    return save_curves_figure(fig, ax_steps, ax_secs, f"{metric} (mean over seeds)", title, out)
