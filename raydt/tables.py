"""The papers' tables from a sweep directory, as Markdown, LaTeX or CSV.

- ``reid2``: Reid et al. Table 2. Rows are datasets, columns are groups (e.g. DT / ChibiT /
  GPT-2), cells the normalized score as mean ± std over seeds, or IQM [95% CI]; the best
  cell of each row in bold; an average row.
- ``reid3``: Table 3, convergence. Cells are the training steps (and seconds) at which the
  seed-averaged curve first came within 2 points of its best; the fastest of each row bold.
- ``reid6``: Table 6, ablations. Rows are groups (the ablation arms), columns datasets and
  their average; the best of each column bold.

Order and labels come from the sweep spec's ``report:`` section (``columns``, ``rows``,
``labels``), else groups and datasets in sorted order with readable labels.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydt.errors import RaydtError
from raydt.rundir import METRIC, SweepDir
from raydt.stats import interval_estimates, run_score, score_matrices

TABLES = ("reid2", "reid3", "reid6")
FORMATS = ("md", "latex", "csv")
CELLS = ("mean_std", "iqm")


@dataclass(frozen=True)
class Layout:
    """Order and labels of a table's groups and datasets (the sweep spec's ``report:``)."""

    columns: tuple[str, ...] = ()
    """Group labels in the order to show them; groups not listed follow, sorted."""
    rows: tuple[str, ...] = ()
    """Datasets in the order to show them; others follow, sorted."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Group label or dataset → the name printed (e.g. "model.backbone=random" → "DT")."""
    compare: tuple[str, ...] = ()
    """Two groups (A, B): the sweep ends with the interval estimates and P(A > B), as
    ``raydt report --intervals --compare A B`` prints them; () prints the table only."""

    @classmethod
    def from_spec(cls, section: Any, where: str = "report") -> Layout:
        """Check and read a ``report:`` mapping; errors name the key and the fix."""
        if section in (None, {}):
            return cls()
        if not isinstance(section, Mapping):
            raise RaydtError(f"{where}: give a mapping with columns, rows, labels and compare")
        unknown = set(section) - {"columns", "rows", "labels", "compare"}
        if unknown:
            raise RaydtError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: columns, rows, labels, "
                             "compare")
        for key in ("columns", "rows", "compare"):
            value = section.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RaydtError(f"{where}.{key}: give a list of names, e.g. [\"backbone=random\", ...]")
        if len(section.get("compare", [])) not in (0, 2):
            raise RaydtError(f"{where}.compare: give two group names, A and B (the sweep ends with P(A > B))")
        labels = section.get("labels", {})
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in labels.items()):
            raise RaydtError(f"{where}.labels: give a mapping of name → printed label")
        return cls(tuple(section.get("columns", [])), tuple(section.get("rows", [])), dict(labels),
                   tuple(section.get("compare", [])))

    def order(self, names: Sequence[str], preferred: Sequence[str]) -> list[str]:
        first = [n for n in preferred if n in names]
        return first + sorted(n for n in names if n not in first)

    def label(self, name: str) -> str:
        return self.labels.get(name, name)


def sweep_layout(root: Path) -> Layout:
    """The layout a sweep recorded from its spec's ``report:`` section (none for a folder)."""
    import yaml

    spec = SweepDir(root).spec
    if not spec.is_file():
        return Layout()
    return Layout.from_spec((yaml.safe_load(spec.read_text()) or {}).get("report"), f"{spec}: report")


@dataclass
class Cell:
    text: str
    value: float
    """What "best" compares (NaN: never bold)."""
    extra: tuple[float, ...] = ()
    """Numbers for CSV beside ``value`` (std, CI low, CI high)."""


def paper_table(kind: str, root: Path, fmt: str = "md", cells: str = "mean_std", which: str = "final",
                by: Sequence[str] | None = None, metric: str = METRIC, reps: int = 2000,
                layout: Layout | None = None) -> str:
    """Table ``kind`` (reid2, reid3, reid6) of the runs below ``root`` in format ``fmt``."""
    if kind not in TABLES:
        raise RaydtError(f"--table {kind!r}: use one of {', '.join(TABLES)}")
    if fmt not in FORMATS:
        raise RaydtError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if cells not in CELLS:
        raise RaydtError(f"--cells {cells!r}: use one of {', '.join(CELLS)}")
    layout = layout or sweep_layout(root)
    m = score_matrices(root, by=by, which=which, metric=metric)
    groups = layout.order(list(m.runs), layout.columns)
    tasks = layout.order(m.tasks, layout.rows)
    if kind == "reid3":
        grid = _convergence_cells(m, groups, tasks, metric)
        best = "min"
        title = "steps to within 2 points of the best (training seconds)"
    else:
        grid = _score_cells(m, groups, tasks, cells, reps, which, metric)
        best = "max"
        title = f"normalized score ({which}, {'mean ± std over seeds' if cells == 'mean_std' else 'IQM [95% CI]'})"
    rows = [*tasks, "Average"]
    if kind == "reid6":  # arms as rows, datasets as columns
        grid = {g: {t: grid[t][g] for t in rows} for g in groups}
        row_names, col_names = groups, rows
        bold = _best_cells(grid, row_names, col_names, best, along="column")
    else:
        row_names, col_names = rows, groups
        bold = _best_cells(grid, row_names, col_names, best, along="row")
    labelled_rows = [layout.label(r) for r in row_names]
    labelled_cols = [layout.label(c) for c in col_names]
    body = [[grid[r][c] for c in col_names] for r in row_names]
    marks = [[(r, c) in bold for c in col_names] for r in row_names]
    corner = "group" if kind == "reid6" else "dataset"
    notes = m.notes
    if fmt == "csv":
        # What each cell's numbers are: reid3's are steps and seconds, not a score and its spread.
        names = (("steps", "train_seconds") if kind == "reid3" else ("value", "std") if cells == "mean_std"
                 else ("value", "ci_low", "ci_high"))
        return _csv(corner, labelled_rows, labelled_cols, body, names)
    if fmt == "latex":
        return _latex(corner, labelled_rows, labelled_cols, body, marks, title, notes)
    return _markdown(corner, labelled_rows, labelled_cols, body, marks, title, notes)


def _score_cells(m, groups: list[str], tasks: list[str], cells: str, reps: int, which: str,
                 metric: str) -> dict[str, dict[str, Cell]]:
    grid: dict[str, dict[str, Cell]] = {t: {} for t in [*tasks, "Average"]}
    for g in groups:
        per_task = m.runs.get(g, {})
        for t in tasks:
            scores = np.array([run_score(r, which, metric) for r in per_task.get(t, [])], dtype=float)
            grid[t][g] = _cell(scores, cells, reps)
        if g in m.scores:  # the average over datasets: every task present
            matrix = m.scores[g]
            if cells == "iqm":
                point, low, high = interval_estimates({g: matrix}, reps=reps)[g]["iqm"]
                grid["Average"][g] = Cell(f"{point:.1f} [{low:.1f}, {high:.1f}]", point, (low, high))
            else:
                mean = float(matrix.mean(axis=0).mean())
                grid["Average"][g] = Cell(f"{mean:.1f}", mean)
        else:
            grid["Average"][g] = Cell("-", math.nan)
    return grid


def _cell(scores: np.ndarray, cells: str, reps: int) -> Cell:
    if scores.size == 0:
        return Cell("-", math.nan)
    if cells == "iqm":
        point, low, high = interval_estimates({"x": scores[:, None]}, reps=reps)["x"]["iqm"]
        return Cell(f"{point:.1f} [{low:.1f}, {high:.1f}]", point, (low, high))
    mean, std = float(scores.mean()), float(scores.std())
    return Cell(f"{mean:.1f} ± {std:.1f}", mean, (std,))


def _convergence_cells(m, groups: list[str], tasks: list[str], metric: str) -> dict[str, dict[str, Cell]]:
    from raydt.convergence import Curve, group_convergence

    grid: dict[str, dict[str, Cell]] = {t: {} for t in [*tasks, "Average"]}
    for g in groups:
        steps, seconds = [], []
        for t in tasks:
            runs = m.runs.get(g, {}).get(t, [])
            if not runs:
                grid[t][g] = Cell("-", math.nan)
                continue
            conv = group_convergence({r.name: Curve.from_rows(r.evals, metric) for r in runs})
            step = conv.converged_step
            secs = conv.converged_train_seconds
            if step is None:
                grid[t][g] = Cell("-", math.nan)
                continue
            secs = math.nan if secs is None else float(secs)
            steps.append(step)
            seconds.append(secs)
            text = f"{step}" + (f" ({secs:.0f} s)" if math.isfinite(secs) else "")
            grid[t][g] = Cell(text, float(step), (secs,))
        if len(steps) == len(tasks) and steps:
            mean_step, mean_secs = float(np.mean(steps)), float(np.mean(seconds))
            text = f"{mean_step:.0f}" + (f" ({mean_secs:.0f} s)" if math.isfinite(mean_secs) else "")
            grid["Average"][g] = Cell(text, mean_step, (mean_secs,))
        else:
            grid["Average"][g] = Cell("-", math.nan)
    return grid


def _best_cells(grid, rows, cols, best: str, along: str) -> set[tuple[str, str]]:
    """(row, column) of the best finite cell of each row (``along="row"``) or column."""
    out = set()
    for line in (rows if along == "row" else cols):
        cells = [(r, c) for r in ([line] if along == "row" else rows) for c in (cols if along == "row" else [line])]
        values = [(grid[r][c].value, (r, c)) for r, c in cells if math.isfinite(grid[r][c].value)]
        if values:
            target = (max if best == "max" else min)(v for v, _ in values)
            out |= {cell for v, cell in values if v == target}
    return out


def _markdown(corner, rows, cols, body, marks, title, notes) -> str:
    lines = [f"| {corner} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, cells, bold in zip(rows, body, marks):
        lines.append(f"| {name} | " + " | ".join(f"**{c.text}**" if b else c.text for c, b in zip(cells, bold)) + " |")
    return "\n".join([lines[0], *lines[1:], "", f"{title}; best in bold.", *(f"- {n}" for n in notes)])


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$")):
        text = text.replace(a, b)
    return text


def _latex(corner, rows, cols, body, marks, title, notes) -> str:
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
             " & ".join([_tex(corner), *(_tex(c) for c in cols)]) + r" \\", r"\midrule"]
    for i, (name, cells, bold) in enumerate(zip(rows, body, marks)):
        if name == "Average" and i == len(rows) - 1:
            lines.append(r"\midrule")
        lines.append(" & ".join([_tex(name), *(rf"\textbf{{{_tex(c.text)}}}" if b else _tex(c.text)
                                                for c, b in zip(cells, bold))]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"% {title}; best in bold.", *(f"% {n}" for n in notes)]
    return "\n".join(lines)


def _csv(corner, rows, cols, body, suffixes: Sequence[str]) -> str:
    """One column per (group, number) named ``<group> <suffix>``; ``suffixes`` name a cell's
    value and its extras in order."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([corner, *(f"{c} {s}" for c in cols for s in suffixes)])
    for name, cells in zip(rows, body):
        row = [name]
        for c in cells:
            values = [c.value, *c.extra] + [math.nan] * (len(suffixes) - 1 - len(c.extra))
            row += ["" if not math.isfinite(v) else f"{v:.4g}" for v in values[:len(suffixes)]]
        writer.writerow(row)
    return out.getvalue()
