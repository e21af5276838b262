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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from raydt.errors import DataError, RaydtError
from raydt.logging import read_metrics

SEED_KEY = "train.seed"
METRIC = "eval/normalized_score"


@dataclass
class Trial:
    """One trial's run directory, read back."""

    name: str
    path: Path
    config: dict[str, Any]
    """Flattened resolved config: ``{"data.context_length": 20, ...}``."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Rows of metrics.jsonl that carry the metric, in step order."""

    def score(self, metric: str = METRIC) -> tuple[float, float]:
        """(best, final) of ``metric``; NaN when the trial never evaluated."""
        values = [row[metric] for row in self.evals if isinstance(row.get(metric), (int, float))]
        return (max(values), values[-1]) if values else (math.nan, math.nan)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def find_runs(root: Path, metric: str = METRIC) -> list[Trial]:
    """Every run directory at or below ``root`` (a sweep, a run, or a folder of runs)."""
    root = Path(root)
    if not root.exists():
        raise RaydtError(f"{root} not found")
    trials = []
    for cfg_file in sorted(root.rglob("config.resolved.yaml")):
        run_dir = cfg_file.parent
        metrics_file = run_dir / "metrics.jsonl"
        try:
            rows = read_metrics(metrics_file) if metrics_file.exists() else []
        except DataError as exc:  # one damaged trial: say which, report the others
            print(f"warning: {exc}; reporting this run without its metrics", file=sys.stderr)
            rows = []
        config = _flatten(yaml.safe_load(cfg_file.read_text()) or {})
        name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
        trials.append(Trial(name, run_dir, config, [r for r in rows if metric in r]))
    if not trials:
        raise RaydtError(f"{root} holds no run directories (no config.resolved.yaml below it)")
    return trials


def searched_keys(root: Path) -> list[str]:
    """The keys a sweep searched (from ``sweep.yaml``), else those that differ between runs."""
    sweep_file = Path(root) / "sweep.yaml"
    if sweep_file.exists():
        return list(yaml.safe_load(sweep_file.read_text()).get("searched_keys", []))
    return []


def group_trials(trials: Sequence[Trial], by: Sequence[str] | None, root: Path) -> tuple[list[str], dict[tuple, list[Trial]]]:
    """Group trials by ``by`` (default: the searched keys without the seed)."""
    if not by:
        keys = searched_keys(root)
        if not keys:  # no sweep.yaml: the keys whose values differ between the runs
            all_keys = sorted(set().union(*(t.config for t in trials)))
            keys = [k for k in all_keys if len({repr(t.config.get(k)) for t in trials}) > 1]
        by = [k for k in keys if k != SEED_KEY]
    unknown = [k for k in by if not any(k in t.config for t in trials)]
    if unknown:
        valid = sorted(set().union(*(t.config for t in trials)))
        raise RaydtError(f"--by {', '.join(unknown)}: not a config key of these runs; valid keys: {', '.join(valid)}")
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(tuple(trial.config.get(k) for k in by), []).append(trial)
    return list(by), dict(sorted(groups.items(), key=lambda kv: repr(kv[0])))


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def summarize(root: Path, by: Sequence[str] | None = None, metric: str = METRIC) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per group: the group's key values, trial count, best and final mean ± std."""
    from raydt.convergence import Curve, group_convergence

    trials = find_runs(root, metric)
    keys, groups = group_trials(trials, by, root)
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
    keys, groups = group_trials(trials, by, root)
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


def curves_figure():
    """A figure with two panels: a metric against training steps and against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_steps, ax_secs) = plt.subplots(1, 2, figsize=(12, 4.5))
    return fig, ax_steps, ax_secs


def save_curves_figure(fig, ax_steps, ax_secs, ylabel: str, title: str, out: Path) -> Path:
    """Label, title and write a :func:`curves_figure` to ``out`` (PNG)."""
    import matplotlib.pyplot as plt

    ax_steps.set_xlabel("training steps")
    ax_secs.set_xlabel("training seconds (evaluation excluded)")
    for ax in (ax_steps, ax_secs):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_steps.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
