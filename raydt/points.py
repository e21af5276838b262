"""A replicated search read back by point: one row per search point, its aggregate over
replicates with a bootstrap interval, and how the best point improved as trials ran.

A sweep is replicated when its spec set ``tune.replicates`` (``sweep.yaml`` records it) or
searched with Optuna. A point is a combination of the searched keys' values; its replicates
are its runs over seeds (and the replicate datasets). Each replicate's score and the point's
aggregate follow the spec's ``tune.replicates.score`` and ``.aggregate``, as the searcher
computed them, from the runs' own ``metrics.jsonl``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydt.errors import RaydtError
from raydt.replicates import aggregate, bootstrap_interval, replicate_score
from raydt.rundir import DATASET_KEY, METRIC, SEED_KEY, Run, SweepDir, find_runs
from raydt.stats import readable


@dataclass(frozen=True)
class Settings:
    """How a replicated sweep scores its points (from ``sweep.yaml``)."""

    keys: tuple[str, ...]
    """The searched keys that make a point (replicate keys left out)."""
    replicates: int
    """Replicates per point: seeds × datasets."""
    score: str = "final"
    how: str = "mean"
    metric: str = METRIC
    mode: str = "max"


def replicated_settings(root: Path) -> Settings | None:
    """The :class:`Settings` of a replicated sweep, or None for any other folder."""
    recorded = SweepDir(root).read_spec()
    tune = recorded.get("tune") or {}
    rep = tune.get("replicates") or {}
    datasets = rep.get("datasets")
    if not (rep.get("seeds", 1) > 1 or datasets is not None or tune.get("searcher") == "optuna"):
        return None
    dropped = {SEED_KEY} | ({DATASET_KEY} if datasets is not None else set())
    keys = tuple(k for k in recorded.get("searched_keys", []) if k not in dropped)
    return Settings(keys, int(rep.get("seeds", 1)) * (len(datasets) if datasets is not None else 1),
                    rep.get("score", "final"), rep.get("aggregate", "mean"), tune.get("metric", METRIC),
                    tune.get("mode", "max"))


@dataclass
class PointRow:
    params: dict[str, Any]
    scores: dict[str, float]
    """Run name → its replicate score (runs that evaluated)."""
    expected: int
    value: float = math.nan
    interval: tuple[float, float] = (math.nan, math.nan)
    runs: list[Run] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.scores) >= self.expected


def point_rows(root: Path, settings: Settings, reps: int = 2000) -> list[PointRow]:
    """One row per point, best first (by the sweep's mode); points with no evaluated
    replicate last."""
    runs = find_runs(root, settings.metric)
    points: dict[tuple, PointRow] = {}
    for run in runs:
        key = tuple(run.config.get(k) for k in settings.keys)
        row = points.setdefault(key, PointRow(dict(zip(settings.keys, key)), {}, settings.replicates))
        row.runs.append(run)
        curve = [r[settings.metric] for r in run.evals if isinstance(r.get(settings.metric), (int, float))]
        if curve:
            row.scores[run.name] = replicate_score(curve, settings.score, settings.mode)
    for row in points.values():
        if row.scores:
            values = list(row.scores.values())
            row.value = aggregate(values, settings.how)
            row.interval = bootstrap_interval(values, settings.how, reps=reps)
    sign = -1 if settings.mode == "max" else 1
    return sorted(points.values(), key=lambda r: (math.isnan(r.value), sign * r.value if not math.isnan(r.value) else 0))


def format_points(settings: Settings, rows: Sequence[PointRow]) -> str:
    """The table of points, then the best point and whether its interval overlaps the
    runner-up's (if it does, the search has not told them apart)."""
    header = [*settings.keys, f"{settings.how} of {settings.score}", "95% CI", "replicates"]
    body = [[*(_cell(r.params[k]) for k in settings.keys),
             "-" if math.isnan(r.value) else f"{r.value:.1f}",
             "-" if math.isnan(r.value) else f"[{r.interval[0]:.1f}, {r.interval[1]:.1f}]",
             f"{len(r.scores)}/{r.expected}"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = [f"search points: {len(rows)}, {settings.replicates} replicate(s) each; "
             f"{settings.how} of each replicate's {settings.score} {settings.metric}, bootstrap 95% CI over replicates",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    scored = [r for r in rows if not math.isnan(r.value)]
    if scored:
        best = scored[0]
        params = ", ".join(f"{k}={_cell(v)}" for k, v in best.params.items())
        lines.append(f"best point: {params} ({best.value:.1f} [{best.interval[0]:.1f}, {best.interval[1]:.1f}])")
        if len(scored) > 1:
            second = scored[1]
            overlap = best.interval[0] <= second.interval[1] and second.interval[0] <= best.interval[1]
            lines.append("its interval overlaps the runner-up's: the replicates do not tell them apart" if overlap
                         else "its interval does not overlap the runner-up's")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A parameter as the table shows it: floats (Optuna's samples) to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else readable(value)


def points_csv(settings: Settings, rows: Sequence[PointRow]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*settings.keys, "value", "ci_low", "ci_high", "replicates_done", "replicates"])
    for r in rows:
        writer.writerow([*(r.params[k] for k in settings.keys), r.value, *r.interval, len(r.scores), r.expected])
    return out.getvalue()


def search_progress(settings: Settings, rows: Sequence[PointRow]) -> list[tuple[int, float, float]]:
    """(trials ended, training hours spent, best aggregate so far) after each complete
    point, in the order the points completed (a point completes with its last replicate)."""
    def finished(run: Run) -> float:
        timing = run.dir.read_timing() or {}
        return float(timing.get("finished", math.inf))

    def train_hours(run: Run) -> float:
        seconds = [r.get("perf/train_seconds") for r in run.evals if isinstance(r.get("perf/train_seconds"), (int, float))]
        return (seconds[-1] if seconds else 0.0) / 3600

    runs = sorted((r for row in rows for r in row.runs), key=finished)
    done_at = {id(row): max(finished(r) for r in row.runs) for row in rows if row.complete and row.runs}
    out, best = [], math.nan
    for row in sorted((r for r in rows if id(r) in done_at), key=lambda r: done_at[id(r)]):
        ended = [r for r in runs if finished(r) <= done_at[id(row)]]
        better = math.isnan(best) or (row.value > best if settings.mode == "max" else row.value < best)
        best = row.value if better else best
        out.append((len(ended), sum(train_hours(r) for r in ended), best))
    return out


def search_progress_figure(settings: Settings, rows: Sequence[PointRow], out: Path) -> Path:
    """Best aggregate so far against trials ended and against training hours."""
    from raydt.figures import pyplot, save_figure

    progress = search_progress(settings, rows)
    if not progress:
        raise RaydtError("no search point has all its replicates evaluated yet; nothing to plot")
    trials, hours, best = zip(*progress)
    fig, (ax_trials, ax_hours) = pyplot().subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((ax_trials, trials, "trials ended"), (ax_hours, hours, "training hours (all replicates)")):
        ax.step(x, best, where="post", marker="o")
        ax.set_xlabel(label)
        ax.set_ylabel(f"best point so far ({settings.how} of {settings.score})")
        ax.grid(alpha=0.3)
    fig.suptitle("search progress")
    fig.tight_layout()
    return save_figure(fig, out)
