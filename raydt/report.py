"""Tables and learning curves over a sweep directory, read from the run files alone.

Every trial directory holds the one-run contract (``config.resolved.yaml``,
``metrics.jsonl``), so reports need neither Ray nor the live sweep. Trials are grouped by
the searched keys (``sweep.yaml``) with the seed left out, so each group's seeds are
aggregated, as in Reid et al.'s tables (mean ± standard deviation over seeds).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raydt.convergence import Curve, group_convergence
from raydt.figures import curves_figure, save_curves_figure
from raydt.rundir import METRIC, find_runs, group_runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def summarize(root: Path, by: Sequence[str] | None = None, metric: str = METRIC) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per group: the group's key values, trial count, best and final mean ± std."""
    trials = find_runs(root, metric)
    keys, groups = group_runs(trials, by, root)
    rows = []
    for values, members in groups.items():
        best, final = zip(*(t.score(metric) for t in members))
        best_mean, best_std = _mean_std(list(best))
        final_mean, final_std = _mean_std(list(final))
        conv = group_convergence({t.name: Curve.from_rows(t.evals, metric) for t in members})
        rows.append({
            **dict(zip(keys, values)),
            "trials": len(members),
            "best_mean": best_mean, "best_std": best_std,
            "final_mean": final_mean, "final_std": final_std,
            "converged_step": conv.converged_step,
            "converged_train_seconds": math.nan if conv.converged_train_seconds is None else conv.converged_train_seconds,
        })
    return keys, rows


def format_table(keys: list[str], rows: list[dict[str, Any]]) -> str:
    """A plain-text table like Reid et al.'s Table 2 (mean ± std over seeds)."""
    header = [*keys, "trials", "best", "final", "converged"]
    body = [
        [*(str(r[k]) for k in keys), str(r["trials"]),
         f"{r['best_mean']:.1f} ± {r['best_std']:.1f}", f"{r['final_mean']:.1f} ± {r['final_std']:.1f}",
         _converged_cell(r)]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _converged_cell(row: dict[str, Any]) -> str:
    """Step (and training seconds) where the seed-averaged curve first came within 2 points
    of its best; '-' when the group has no evaluation common to all its seeds."""
    if row.get("converged_step") is None:
        return "-"
    seconds = row.get("converged_train_seconds", math.nan)
    return f"step {row['converged_step']}" + (f" ({seconds:.0f} s)" if math.isfinite(seconds) else "")


def format_csv(keys: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*keys, "trials", "best_mean", "best_std", "final_mean", "final_std",
                                             "converged_step", "converged_train_seconds"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_curves(root: Path, out: Path, by: Sequence[str] | None = None, metric: str = METRIC) -> Path:
    """Learning curves per group (mean and min–max over seeds) against training steps and
    against training seconds (evaluation excluded), side by side."""
    trials = find_runs(root, metric)
    keys, groups = group_runs(trials, by, root)
    fig, ax_steps, ax_secs = curves_figure()
    for values, members in groups.items():
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values)) or "all runs"
        curves = [t.evals for t in members if t.evals]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # seeds aligned on their common evaluation points
        steps = np.array([c[i]["step"] for i in range(n) for c in curves[:1]])
        scores = np.array([[c[i][metric] for i in range(n)] for c in curves])  # (seeds, evals)
        seconds = np.array([[c[i].get("perf/train_seconds", np.nan) for i in range(n)] for c in curves]).mean(axis=0)
        mean = scores.mean(axis=0)
        for ax, x in ((ax_steps, steps), (ax_secs, seconds)):
            (line,) = ax.plot(x, mean, label=f"{label} (n={len(curves)})")
            ax.fill_between(x, scores.min(axis=0), scores.max(axis=0), alpha=0.2, color=line.get_color())
    return save_curves_figure(fig, ax_steps, ax_secs, metric, f"{Path(root).name}: mean over seeds, band = min–max", out)
