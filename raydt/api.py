"""raydt from Python (a notebook, a script): train, sweep, and read results back as pandas
tables. ``docs/python_api.md`` is the guide; ``tests/test_api.py`` runs its examples.

Every function here calls the library function its ``raydt`` command calls
(:func:`raydt.train.driver.run_training`, :func:`raydt.tune.run.run_sweep`,
:func:`raydt.report.summarize`, :func:`raydt.tables.paper_table`, :mod:`raydt.stats`,
:mod:`raydt.points`), so the command and the API cannot drift apart. ``raydt/__init__.py``
exports them lazily, and this module imports torch and Ray only inside the call that needs
them, so ``import raydt`` and reading results back load neither.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from raydt import storage
from raydt.errors import RaydtError
from raydt.rundir import CONFIG, METRIC, RunDir, SweepDir, find_runs

if TYPE_CHECKING:
    from raydt.config import ExperimentConfig
    from raydt.tune.run import Plan
    from raydt.tune.spec import SweepSpec

Location = str | os.PathLike
"""A local directory, or a storage URI (``s3://…``, ``file://…``)."""

NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
"""How metrics.jsonl spells values JSON cannot hold (raydt.sinks writes them as strings)."""


# --------------------------------------------------------------------------------------
# Overrides


def _overrides(overrides: Sequence[str] | Mapping[str, Any], dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` (``["train.steps=100"]`` as ``--set`` reads them, or a mapping of
    dotted keys) then the keyword overrides (``train__steps=100``) as one
    ``{dotted key: value}``; a keyword wins over the list for the same key."""
    if isinstance(overrides, str):  # iterating a string would give one override per character
        raise TypeError(f"overrides={overrides!r}: give a list of KEY=VALUE strings, e.g. overrides=[{overrides!r}]")
    from raydt.config import parse_override

    merged = dict(overrides) if isinstance(overrides, Mapping) else dict(parse_override(item) for item in overrides)
    for name, value in dotted.items():
        # Only double-underscored names are config keys, so a misspelled option
        # (dryrun=True) is a TypeError, not an "unknown section" of the config.
        if "__" not in name:
            raise TypeError(f"unexpected keyword argument {name!r}; config keys are spelled with double "
                            "underscores for dots, e.g. train__steps=100 for train.steps=100")
        merged[name.replace("__", ".")] = value
    return merged


def _with_overrides(config: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A new config: ``config`` with dotted ``values`` applied and checked as ``--set`` is
    (configs are frozen; nothing mutates one after loading)."""
    if not values:
        return config
    from raydt.config import ExperimentConfig, RawSpec, apply_overrides, build, to_dict

    raw = apply_overrides(RawSpec(to_dict(config), {}), values, source="overrides")
    return build(ExperimentConfig, raw.values, raw.origins)


# --------------------------------------------------------------------------------------
# Running


def train(
    config: ExperimentConfig | Location,
    *,
    out: Location | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    use_ray: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
    **dotted: Any,
) -> RunResults:
    """Train one run, as ``raydt train`` does, and return it read back (:class:`RunResults`).

    ``config`` is a run spec file (the run directory defaults to ``runs/<its name>``, as the
    command's) or an :class:`~raydt.config.ExperimentConfig` (then ``out`` is required: a
    config object has no name to give its directory). Overrides are ``overrides=
    ["optim.lr=3e-4"]`` and/or keywords with double underscores for dots
    (``optim__lr=3e-4``); a keyword wins over the list.

    ``use_ray=False`` (the default, ``raydt train --no-ray``) trains in this process: no Ray
    start-up, progress lines and tracebacks in the notebook, one worker on the CPU or one GPU
    (``resources.use_gpu``). ``use_ray=True`` runs on Ray Train exactly as ``raydt train``
    (``resources.num_workers`` DDP workers, ``address=`` a cluster, ``out=`` a URI). A
    directory that holds a run is kept unless ``resume=True`` (continue it) or
    ``overwrite=True``. ``log`` receives the progress lines (default: printed).
    """
    from raydt import offline
    from raydt.config import ExperimentConfig, load_config
    from raydt.fsutil import data_dir, writable_dir

    offline.apply()  # before transformers or the hub client is first imported, as the CLI does
    values = _overrides(overrides, dotted)
    if isinstance(config, ExperimentConfig):
        if out is None:
            raise TypeError("train(config, ...): give out=, the run directory (a config object has no spec "
                            "file name to name it after)")
        config = _with_overrides(config, values)
    else:
        spec = Path(config)
        config = load_config(spec, values)
        out = Path("runs") / spec.stem if out is None else out
    run_dir: Path | str = str(out).rstrip("/") if storage.is_uri(out) else writable_dir(Path(out), "out=")
    writable_dir(data_dir(), "RAYDT_DATA_DIR (raydt's data cache)")
    from raydt.train.driver import run_training

    run_training(config, run_dir, use_ray=use_ray, resume=resume, overwrite=overwrite, address=address, log=log)
    return load_run(run_dir)


def sweep(
    spec: SweepSpec | Location,
    *,
    out: Location | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    address: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
    cluster: Location | None = None,
    log: Callable[[str], None] = print,
    **dotted: Any,
) -> SweepResults | Plan:
    """Run a sweep on Ray Tune, as ``raydt sweep`` does, and return it read back
    (:class:`SweepResults`); with ``dry_run=True``, only its :class:`~raydt.tune.run.Plan`
    (trials, resources, concurrency: ``print(*plan.lines(), sep="\\n")``), made without
    starting Ray.

    ``spec`` is a sweep spec file or a :class:`~raydt.tune.spec.SweepSpec`; ``overrides`` and
    double-underscored keywords change its run part (as ``--set``), and need the file. ``out``
    is the folder (or URI) the sweep directory is made in; ``cluster`` a cluster YAML to
    plan a dry run for. Failed trials are logged and listed in ``SweepResults.failed``; an
    interrupted sweep raises :class:`~raydt.errors.RunFailed` saying how to resume it.
    """
    from raydt import offline
    from raydt.errors import RunFailed
    from raydt.tune.spec import SweepSpec
    from raydt.tune.spec import load_sweep as load_sweep_spec

    offline.apply()
    values = _overrides(overrides, dotted)
    if isinstance(spec, SweepSpec):
        if values:
            raise TypeError("sweep(spec, ...): overrides are applied when a spec file is read; pass the file, "
                            "or read it with raydt.tune.spec.load_sweep(path, overrides)")
    else:
        spec = load_sweep_spec(spec, values)  # every searched key is checked before Ray starts
    from raydt.tune.run import Plan, run_sweep

    outcome = run_sweep(spec, out=None if out is None else str(out), address=address, resume=resume,
                        dry_run=dry_run, log=log, cluster_file=None if cluster is None else str(cluster))
    if isinstance(outcome, Plan):
        return outcome
    if outcome.unfinished:
        raise RunFailed(f"sweep interrupted with {outcome.unfinished} trial(s) unfinished; finished trials and "
                        f"checkpoints are kept in {outcome.sweep_dir}; continue with the same call and resume=True")
    for trial in outcome.trials:
        if trial["status"] == "ERROR":
            log(f"failed trial {trial['trial']}: {trial['error']}")
    return load_sweep(outcome.sweep_dir)


# --------------------------------------------------------------------------------------
# Reading back


def _row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row with its spelled-out non-finite values ("nan") as floats again."""
    return {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


class RunResults:
    """One run directory read back. Each file is read on first use, then kept: load the run
    again (:func:`load_run`) to see what a run still going has written since."""

    def __init__(self, path: Path, name: str | None = None, location: Location | None = None) -> None:
        self.path = Path(path)
        """The local directory read (for a URI, the local copy of it)."""
        self.name = name or self.path.name
        """The run's name: its folder, or its path below the sweep it was loaded with."""
        self.location = str(location if location is not None else path)
        """Where the run was loaded from, as given (a path or a URI)."""

    def __repr__(self) -> str:
        return f"RunResults({self.location!r})"

    @property
    def dir(self) -> RunDir:
        """The run directory's paths (checkpoints, analysis files, …)."""
        return RunDir(self.path)

    @cached_property
    def config_dict(self) -> dict[str, Any]:
        """The resolved config as written (nested dict), whatever raydt version wrote it."""
        return self.dir.read_config()

    @cached_property
    def config(self) -> ExperimentConfig:
        """The resolved config, typed (``run.config.train.steps``); pass it to :func:`train`
        with overrides to run a variant. A run written by a raydt whose config keys have since
        changed fails here with the key: read :attr:`config_dict` instead."""
        from raydt.config import config_from_dict

        return config_from_dict(self.config_dict, source=str(self.dir.config))

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Every row of metrics.jsonl: one row per logging step, a ``step`` column, then one
        column per metric (docs/metrics.md); NaN where a row did not log that metric."""
        rows = [_row(r) for r in self.dir.read_metrics()]
        return pd.DataFrame.from_records(rows) if rows else pd.DataFrame({"step": pd.Series(dtype="int64")})

    @property
    def evals(self) -> pd.DataFrame:
        """The rows of :attr:`metrics` with an evaluation (an ``eval/`` metric), without the
        columns no evaluation row has."""
        m = self.metrics
        evaluated = m[[c for c in m.columns if c.startswith("eval/")]].notna().any(axis=1)
        return m[evaluated].dropna(axis=1, how="all").reset_index(drop=True)

    @cached_property
    def run_info(self) -> dict[str, Any] | None:
        """Versions, devices and the resolved data of the run (None before the run started)."""
        file = self.dir.run_info
        return json.loads(file.read_text()) if file.is_file() else None

    @cached_property
    def timing(self) -> dict[str, Any] | None:
        """Where the latest session's wall time went (None before a session ended)."""
        return self.dir.read_timing()

    def score(self, metric: str = METRIC) -> tuple[float, float]:
        """(best, final) of ``metric`` over the evaluations; NaN when it never evaluated."""
        values = self.metrics[metric].dropna() if metric in self.metrics else pd.Series(dtype=float)
        return (float(values.max()), float(values.iloc[-1])) if len(values) else (math.nan, math.nan)


class SweepResults:
    """A sweep directory (or any folder of runs) read back: its trials as :class:`RunResults`,
    their configs and metrics as tables, and the reports ``raydt report`` prints."""

    def __init__(self, path: Path, location: Location | None = None) -> None:
        self.path = Path(path)
        """The local directory read (for a URI, the local copy of it)."""
        self.location = str(location if location is not None else path)
        """Where the sweep was loaded from, as given (a path or a URI)."""
        self._found = find_runs(self.path)  # fails now, naming the folder, when it holds no run

    def __repr__(self) -> str:
        return f"SweepResults({self.location!r}, {len(self._found)} run(s))"

    @cached_property
    def runs(self) -> dict[str, RunResults]:
        """Trial name (its path below the sweep) → the run."""
        return {r.name: RunResults(r.path, r.name, storage.join(self.location, r.name)) for r in self._found}

    @property
    def spec(self) -> dict[str, Any]:
        """What the sweep recorded of its spec (searched keys, tune settings, plan); {} for a
        plain folder of runs."""
        return SweepDir(self.path).read_spec()

    @property
    def searched_keys(self) -> list[str]:
        """The keys that vary between trials: the sweep's searched keys (seed included), or,
        for a plain folder of runs, the config keys whose values differ between them."""
        keys = SweepDir(self.path).searched_keys()
        if keys:
            return keys
        every = sorted(set().union(*(r.config for r in self._found)))
        return [k for k in every if len({repr(r.config.get(k)) for r in self._found}) > 1]

    @property
    def failed(self) -> dict[str, str]:
        """Trial name → its one-line error, for the trials that ended in error."""
        return SweepDir(self.path).failed_trials()

    @cached_property
    def config(self) -> pd.DataFrame:
        """One row per trial (index ``trial``): its resolved config flattened to dotted keys."""
        frame = pd.DataFrame.from_dict({r.name: r.config for r in self._found}, orient="index")
        frame.index.name = "trial"
        return frame

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Every trial's metrics in one long table: a ``trial`` column, one column per searched
        key (its value in that trial), then the run's own columns (``step``, metrics)."""
        keys = self.searched_keys
        frames = []
        for found in self._found:
            frame = self.runs[found.name].metrics.copy()
            for i, key in enumerate(["trial", *keys]):
                value = found.name if key == "trial" else found.config.get(key)
                frame.insert(i, key, [value] * len(frame))  # a list: a tuple value is one cell, not a column
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def report(self, by: Sequence[str] | None = None, metric: str = METRIC) -> pd.DataFrame:
        """``raydt report``'s table (:func:`raydt.report.summarize`): one row per group of
        seeds (``by`` keys, default the searched keys without the seed), its trial count, the
        mean and std over seeds of the best and final ``metric``, and the convergence step."""
        from raydt.report import summarize

        keys, rows = summarize(self.path, by=by, metric=metric)
        return pd.DataFrame(rows, columns=[*keys, "trials", "best_mean", "best_std", "final_mean", "final_std",
                                           "converged_step", "converged_train_seconds"])

    def points(self, reps: int = 2000) -> pd.DataFrame | None:
        """A replicated search by point (:mod:`raydt.points`), best first: the searched keys,
        the point's ``value`` (the aggregate its searcher saw), the bootstrap 95% interval
        over its replicates, and how many of them evaluated. None when the sweep is not a
        replicated search (``tune.replicates`` or an Optuna searcher)."""
        from raydt.points import point_rows, replicated_settings

        settings = replicated_settings(self.path)
        if settings is None:
            return None
        rows = point_rows(self.path, settings, reps=reps)
        frame = pd.DataFrame([{**r.params, "value": r.value, "ci_low": r.interval[0], "ci_high": r.interval[1],
                               "replicates_done": len(r.scores), "replicates": r.expected} for r in rows],
                             columns=[*settings.keys, "value", "ci_low", "ci_high", "replicates_done", "replicates"])
        frame.attrs["value"] = f"{settings.how} of each replicate's {settings.score} {settings.metric}"
        return frame

    def intervals(self, which: str = "final", by: Sequence[str] | None = None, reps: int = 2000,
                  metric: str = METRIC) -> pd.DataFrame:
        """``raydt report --intervals`` (:func:`raydt.stats.interval_estimates`): per group,
        across seeds and datasets, each aggregate (IQM, mean, median, optimality gap; for
        ``which="converged_step"`` IQM, mean, median) of the ``which`` score with its
        stratified-bootstrap 95% interval. One row per (group, aggregate); the runs left out
        of a group's score matrix are listed in ``.attrs["notes"]``."""
        from raydt import stats

        m = stats.score_matrices(self.path, by=by, which=which, metric=metric)
        if not m.scores:
            raise RaydtError(f"{self.location}: no group has an evaluated run for every dataset; nothing to estimate")
        step = which == "converged_step"
        est = stats.interval_estimates(m.scores, reps=reps, scale=1.0 if step else 100.0,
                                       aggregates=stats.STEP_AGGREGATES if step else stats.AGGREGATES)
        frame = pd.DataFrame([{"group": g, "aggregate": a, "value": v[0], "ci_low": v[1], "ci_high": v[2],
                               "runs": m.scores[g].shape[0], "datasets": m.scores[g].shape[1]}
                              for g, per in est.items() for a, v in per.items()])
        frame.attrs["notes"] = list(m.notes)
        return frame

    def compare(self, a: str, b: str, which: str = "final", by: Sequence[str] | None = None, reps: int = 2000,
                metric: str = METRIC) -> tuple[float, float, float]:
        """``raydt report --compare A B``: the probability that a run of group ``a`` beats a
        run of group ``b`` on a dataset, with its bootstrap 95% interval (point, low, high).
        Groups are named by their label (``backbone=random``) or the spec's report: label."""
        from raydt import stats
        from raydt.tables import sweep_layout

        m = stats.score_matrices(self.path, by=by, which=which, metric=metric)
        names = {v: k for k, v in sweep_layout(self.path).labels.items()}
        a, b = (names.get(name, name) for name in (a, b))
        missing = [g for g in (a, b) if g not in m.scores]
        if missing:
            raise RaydtError(f"compare {' '.join(missing)}: no such group; groups: {', '.join(m.scores)}")
        return stats.probability_of_improvement(m.scores[a], m.scores[b], reps=reps)

    def table(self, kind: str = "reid2", fmt: str = "md", cells: str = "mean_std", which: str = "final",
              by: Sequence[str] | None = None, reps: int = 2000, metric: str = METRIC) -> str:
        """``raydt report --table`` (:func:`raydt.tables.paper_table`): Reid et al.'s Table
        2, 3 or 6 (``kind`` reid2, reid3, reid6) as Markdown, LaTeX or CSV (``fmt`` md,
        latex, csv), ordered and labelled by the spec's ``report:`` section."""
        from raydt.tables import paper_table

        return paper_table(kind, self.path, fmt=fmt, cells=cells, which=which, by=by, metric=metric, reps=reps)


def load_run(location: Location) -> RunResults:
    """Read a run directory back (a path, or a URI such as ``s3://bucket/runs/x``, copied
    locally without its checkpoints first)."""
    path = storage.local_view(location)
    if not path.exists():
        raise RaydtError(f"{location} not found")
    if not RunDir(path).is_run():
        raise RaydtError(f"{location} is not a run directory (it has no {CONFIG}); for a sweep or a folder "
                         "of runs use raydt.load_sweep")
    return RunResults(path, location=location)


def load_sweep(location: Location) -> SweepResults:
    """Read a sweep directory, or any folder of runs, back (a path or a URI, copied locally
    without its checkpoints first). To read a sweep *spec*, use :func:`raydt.tune.spec.load_sweep`."""
    return SweepResults(storage.local_view(location), location)
