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
from raydt.errors import RaydtError
from raydt.figures import curves_figure, save_curves_figure
from raydt.rundir import METRIC, find_runs, group_runs
from raydt.stats import group_label, readable


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
    def spread(mean: float, std: float, n: int) -> str:
        # One run has no spread to show: "± 0.0" would read as a measured, exact result.
        return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f}"

    body = [
        [*(readable(r[k]) for k in keys), str(r["trials"]),
         spread(r["best_mean"], r["best_std"], r["trials"]), spread(r["final_mean"], r["final_std"], r["trials"]),
         _converged_cell(r)]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    single = sum(r["trials"] == 1 for r in rows)
    if single:
        lines.append(f"note: {single} group(s) of one run: no spread over seeds (n = 1); add seeds "
                     "(train.seed or tune.replicates) to compare groups")
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


def plot_curves(root: Path, out: Path, by: Sequence[str] | None = None, metric: str = METRIC,
                band: str = "ci", reps: int = 1000) -> Path:
    """Learning curves per group, the mean over seeds with a band (``ci``: the 95%
    stratified-bootstrap interval of the mean, rliable; ``minmax``: the seeds' range),
    against training steps and against training seconds (evaluation excluded)."""
    if band not in ("ci", "minmax"):
        raise RaydtError(f"--band {band!r}: use ci or minmax")
    runs = find_runs(root, metric)
    keys, groups = group_runs(runs, by, root)
    fig, ax_steps, ax_secs = curves_figure()
    for values, members in groups.items():
        label = group_label(keys, values)
        curves = [r.evals for r in members if r.evals]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # seeds aligned on their common evaluation points
        steps = np.array([curves[0][i]["step"] for i in range(n)])
        scores = np.array([[c[i][metric] for i in range(n)] for c in curves])  # (seeds, evals)
        seconds = np.array([[c[i].get("perf/train_seconds", np.nan) for i in range(n)] for c in curves]).mean(axis=0)
        mean = scores.mean(axis=0)
        low, high = (curve_intervals(scores, reps) if band == "ci" and len(curves) > 1
                     else (scores.min(axis=0), scores.max(axis=0)))
        for ax, x in ((ax_steps, steps), (ax_secs, seconds)):
            (line,) = ax.plot(x, mean, label=f"{label} (n={len(curves)})")
            ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())
    what = "95% bootstrap CI of the mean" if band == "ci" else "min–max"
    return save_curves_figure(fig, ax_steps, ax_secs, metric, f"{Path(root).name}: mean over seeds, band = {what}", out)


def curve_intervals(scores: np.ndarray, reps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the 95% bootstrap interval of the seed mean at every evaluation of
    ``scores`` (seeds, evals), with rliable (the evaluations are its third axis)."""
    from rliable import library as rly

    from raydt.stats import quiet_bootstrap

    def per_eval_mean(x: np.ndarray) -> np.ndarray:  # x: (seeds, 1, evals)
        return x.mean(axis=(0, 1))

    with quiet_bootstrap():
        _, intervals = rly.get_interval_estimates({"g": scores[:, None, :]}, per_eval_mean, reps=reps,
                                                  random_state=np.random.RandomState(0))
    return np.asarray(intervals["g"][0]), np.asarray(intervals["g"][1])


def write_group_runs(root: Path, by: Sequence[str] | None = None) -> list[Path]:
    """One TensorBoard run per group under ``SWEEP/groups/<label>/``: at every evaluation
    step the seed-mean of each ``eval/`` metric (same tag as the trials', so TensorBoard
    overlays them) and its min and max over seeds (``<tag>/min``, ``<tag>/max``), a
    custom-scalars margin chart of mean and spread, and an HParams row per group. Replaces
    what an earlier call wrote. Only steps every seed evaluated are averaged."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    from raydt.rundir import SweepDir

    root = Path(root)
    runs = find_runs(root, METRIC)
    keys, groups = group_runs(runs, by, root)
    folder = SweepDir(root).groups
    shutil.rmtree(folder, ignore_errors=True)
    written = []
    tags = sorted({k for r in runs for row in r.evals for k, v in row.items()
                   if k.startswith("eval/") and isinstance(v, (int, float))})
    layout = {"raydt groups": {f"{tag} (seed mean, min-max)": ["Margin", [tag, f"{tag}/min", f"{tag}/max"]]
                               for tag in tags}}
    for values, members in groups.items():
        label = group_label(keys, values)
        evaluated = [run for run in members if run.evals]  # a run that never evaluated has no curve
        per_step: dict[int, list[dict[str, Any]]] = {}
        for run in evaluated:
            for row in run.evals:
                per_step.setdefault(int(row["step"]), []).append(row)
        path = folder / _safe_name(label)
        writer = SummaryWriter(log_dir=str(path))
        try:
            writer.add_custom_scalars(layout)
            last: dict[str, float] = {}
            for step in sorted(per_step):
                rows = per_step[step]
                if len(rows) < len(evaluated):
                    continue  # a seed has not evaluated here: no mean to show
                for tag in tags:
                    vals = [float(r[tag]) for r in rows if isinstance(r.get(tag), (int, float))]
                    if len(vals) == len(rows):
                        mean = float(np.mean(vals))
                        writer.add_scalar(tag, mean, step)
                        writer.add_scalar(f"{tag}/min", min(vals), step)
                        writer.add_scalar(f"{tag}/max", max(vals), step)
                        last[tag] = mean
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in zip(keys, values)}
            writer.add_hparams(hparams | {"group": label, "seeds": len(evaluated)},
                               {f"hparams/{k}": v for k, v in last.items()}, run_name=".")
        finally:
            writer.close()
        written.append(path)
    return written


def _safe_name(label: str) -> str:
    """A group label as a folder name TensorBoard shows readably."""
    return "".join(c if c.isalnum() or c in "=.,-_:" else "_" for c in label.replace(", ", ",")) or "all"
