"""Search points run as replicates: a replicate's score, a point's aggregate, and which
trial runs which replicate of which point. No Ray, no Optuna: the searcher
(:mod:`raydt.tune.replicates`) and the reports (:mod:`raydt.report`) both use it.

A seed is a replicate, never a hyper-parameter: on D4RL the seed-to-seed spread of a DT's
score is larger than most effects a search looks for, so a searcher that sees single runs
picks the luckiest seed. A search point is run as seeds × datasets trials; each trial's score
comes from its curve of the metric (:func:`replicate_score`), and the point's one value is
their :func:`aggregate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def replicate_score(values: Sequence[float], score: str, mode: str = "max") -> float:
    """One replicate's score from its evaluations of the metric, in order: the last
    (``final``), the best (``best``, by ``mode``) or their mean (``auc``: the area under the
    curve per evaluation)."""
    if not len(values):
        raise ValueError("a replicate with no evaluation has no score")
    if score == "final":
        return float(values[-1])
    if score == "best":
        return float(max(values) if mode == "max" else min(values))
    return float(np.mean(values))


def aggregate(scores: Sequence[float], how: str) -> float:
    """A point's value from its replicates' scores: the mean, or the interquartile mean
    (the mean of the middle half, rliable's IQM; with fewer than 4 scores it trims the
    fraction of a score that falls outside the middle half, as scipy's trim_mean does not)."""
    x = np.sort(np.asarray(scores, dtype=float))
    if how == "mean" or len(x) == 1:
        return float(x.mean())
    # IQM as the mean over the middle 50% of the empirical distribution, weighting the two
    # boundary samples by the part of them inside it: exact for any n.
    n = len(x)
    lo, hi = n / 4, 3 * n / 4
    weights = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0, None)
    return float((weights * x).sum() / weights.sum())


def bootstrap_interval(scores: Sequence[float], how: str, reps: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`aggregate` over a point's replicates."""
    x = np.asarray(scores, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    stats = [aggregate(x[rng.integers(0, len(x), len(x))], how) for _ in range(reps)]
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


# --------------------------------------------------------------------------------------
# The bookkeeping of points and their replicates (no Ray, no Optuna)


@dataclass
class Point:
    """One search point: Optuna's trial ``number``, its parameters and its replicates."""

    number: int
    params: dict[str, Any]
    replicates: list[dict[str, Any]]
    """The replicate keys (seed, dataset) of each replicate, in order."""
    assigned: dict[str, int] = field(default_factory=dict)
    """Tune trial id → replicate index."""
    curves: dict[str, list[float]] = field(default_factory=dict)
    """Tune trial id → its evaluations of the metric so far."""
    ended: dict[str, float | None] = field(default_factory=dict)
    """Tune trial id → its score, or None when it failed."""
    told: bool = False

    @property
    def open(self) -> bool:
        return len(self.assigned) < len(self.replicates)

    @property
    def done(self) -> bool:
        return len(self.ended) == len(self.replicates)


@dataclass
class Replicates:
    """Which Tune trial runs which replicate of which point, and when a point is done."""

    replicates: list[dict[str, Any]]
    score: str = "final"
    how: str = "mean"
    mode: str = "max"
    metric: str = "eval/normalized_score"
    points: list[Point] = field(default_factory=list)
    trial_point: dict[str, int] = field(default_factory=dict)
    """Tune trial id → index into :attr:`points`."""
    names: dict[str, str] = field(default_factory=dict)
    """Tune trial id → its run's name (``trial_NNNNN``, in the order trials were handed out,
    as the sweep names their folders)."""

    def open_point(self) -> Point | None:
        """The oldest point with a replicate not yet handed to a trial."""
        return next((p for p in self.points if p.open), None)

    def add_point(self, number: int, params: dict[str, Any]) -> Point:
        point = Point(number, dict(params), [dict(r) for r in self.replicates])
        self.points.append(point)
        return point

    def assign(self, trial_id: str, point: Point) -> dict[str, Any]:
        """Hand ``point``'s next replicate to ``trial_id``; returns the trial's config."""
        index = len(point.assigned)
        point.assigned[trial_id] = index
        self.trial_point[trial_id] = self.points.index(point)
        self.names[trial_id] = f"trial_{len(self.names):05d}"
        return {**point.params, **point.replicates[index]}

    def result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        point = self.point_of(trial_id)
        if point is not None and self.metric in result:
            point.curves.setdefault(trial_id, []).append(float(result[self.metric]))

    def complete(self, trial_id: str, error: bool = False) -> Point | None:
        """Record that ``trial_id`` ended; returns its point when that was the point's last
        replicate (then the point is ready to be told)."""
        point = self.point_of(trial_id)
        if point is None or trial_id in point.ended:
            return None
        curve = point.curves.get(trial_id, [])
        point.ended[trial_id] = None if error or not curve else replicate_score(curve, self.score, self.mode)
        return point if point.done and not point.told else None

    def point_of(self, trial_id: str) -> Point | None:
        index = self.trial_point.get(trial_id)
        return self.points[index] if index is not None else None

    def value(self, point: Point) -> float | None:
        """The point's aggregate, or None when a replicate failed."""
        scores = list(point.ended.values())
        if any(s is None for s in scores):
            return None
        return aggregate([s for s in scores if s is not None], self.how)
