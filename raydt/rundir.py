"""Run and sweep directories: the one module that knows their layout.

A run directory (fine-tuning or pre-training) holds::

    config.resolved.yaml   the full config the run used
    run_info.json          versions, devices, the resolved data and the reproducibility record
    metrics.jsonl          one JSON row per logging step (see raydt.sinks)
    timing.json            wall time split into set-up, training and evaluation
    events.out.tfevents.*  TensorBoard, the same tags as metrics.jsonl
    checkpoints/last.pt    the newest checkpoint; step_N.pt for each kept step
    analysis/              what `raydt analyze` measured (JSON and figures)

A sweep directory holds ``sweep.yaml`` (the spec and its searched keys), ``timing.json``,
``trials.json`` (each trial's status and error, when the sweep ended), ``groups/`` (one
TensorBoard run per group of seeds: their mean and spread) and one run directory per trial (with ``trial_timing.json``, the trial's wall time around
its run). Every other module asks this one for a path or a reader, so a layout change is
made here once, and readers of old directories keep working.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raydt.errors import DataError, RaydtError, RunFailed

CONFIG = "config.resolved.yaml"
RUN_INFO = "run_info.json"
LOCK = ".raydt.lock"
"""Held by the process writing a run directory (:meth:`RunDir.lock`)."""
METRICS = "metrics.jsonl"
TIMING = "timing.json"
TRIAL_TIMING = "trial_timing.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
ANALYSIS = "analysis"
RAY_TRAIN = "ray_train"
TENSORBOARD_GLOB = "events.out.tfevents.*"
SWEEP_SPEC = "sweep.yaml"
TRIALS = "trials.json"
GROUPS = "groups"

SEED_KEY = "train.seed"
DATASET_KEY = "data.dataset"
METRIC = "eval/normalized_score"
"""The metric reports and convergence read by default."""


def kept_name(step: int) -> str:
    """File name of the checkpoint kept at ``step`` (``train.keep_checkpoints``)."""
    return f"step_{step}.pt"


def last_checkpoint_uri(run_uri: str) -> str:
    """The newest checkpoint of a run kept at a storage URI (``s3://…/trial``)."""
    from raydt import storage

    return storage.join(run_uri, CHECKPOINTS, LAST)


@dataclass(frozen=True)
class RunDir:
    """Paths and readers of one run directory (which need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def timing(self) -> Path:
        return self.path / TIMING

    @property
    def trial_timing(self) -> Path:
        return self.path / TRIAL_TIMING

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINTS / LAST

    @property
    def analysis(self) -> Path:
        return self.path / ANALYSIS

    def analysis_file(self, name: str, suffix: str) -> Path:
        """Where ``raydt analyze NAME`` writes its JSON (``suffix="json"``) or figure."""
        return self.analysis / f"{name}.{suffix}"

    def checkpoint(self, step: int | str) -> Path:
        """The checkpoint kept at ``step``; ``"last"`` for the newest."""
        return self.last if step == "last" else self.checkpoints / kept_name(int(step))

    def kept_steps(self) -> list[int]:
        """Steps whose checkpoints were kept (``step_N.pt``), ascending."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in self.checkpoints.glob("step_*.pt")
                      if p.stem.split("_")[1].isdigit())

    def is_run(self) -> bool:
        """Whether a run has written its config here."""
        return self.config.is_file()

    def has_results(self) -> bool:
        """Whether a run has logged or checkpointed here (and would be overwritten)."""
        return self.metrics.exists() or self.last.exists()

    def clear_results(self) -> None:
        """Remove what a run wrote (checkpoints, metrics, events), keeping other files."""
        for folder in (self.checkpoints, self.path / RAY_TRAIN):
            shutil.rmtree(folder, ignore_errors=True)
        for path in [self.metrics, *self.path.glob(TENSORBOARD_GLOB)]:
            path.unlink(missing_ok=True)

    def read_config(self, flat: bool = False) -> dict[str, Any]:
        """The resolved config, nested, or flattened to ``{"data.context_length": 20}``."""
        values = yaml.safe_load(self.config.read_text()) or {}
        return flatten(values) if flat else values

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` ([] when the run has not logged)."""
        from raydt.sinks import read_metrics

        return read_metrics(self.metrics) if self.metrics.exists() else []

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run directory for one writer: a second ``raydt train`` into it (while
        the first runs) is refused, naming the holder's pid and host, instead of two runs
        interleaving one metrics file."""
        import fcntl
        import os
        import platform

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RaydtError(f"{self.path} is in use by a run that is still going ({holder}); wait for it to "
                                 "finish, or give another directory with --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {platform.node()}")
            handle.flush()
            yield
        finally:
            handle.close()  # closing releases the lock

    def read_timing(self) -> dict[str, Any] | None:
        return json.loads(self.timing.read_text()) if self.timing.is_file() else None

    def read_run_info(self) -> dict[str, Any] | None:
        """Where and with what the run's latest session ran (its ``record``: versions, source
        commit, CPU, GPUs; :mod:`raydt.record`); None when the run has not written it."""
        return json.loads(self.run_info.read_text()) if self.run_info.is_file() else None


@dataclass(frozen=True)
class SweepDir:
    """Paths of a sweep directory (local; remote sweeps are addressed through raydt.storage)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def spec(self) -> Path:
        return self.path / SWEEP_SPEC

    @property
    def timing(self) -> Path:
        return self.path / TIMING

    @property
    def groups(self) -> Path:
        return self.path / GROUPS

    @property
    def trials(self) -> Path:
        return self.path / TRIALS

    def failed_trials(self) -> dict[str, str]:
        """Trial name → its one-line error, for the trials that ended in error."""
        if not self.trials.is_file():
            return {}
        rows = json.loads(self.trials.read_text())
        return {r["trial"]: r.get("error") or "failed" for r in rows if r.get("status") == "ERROR"}

    def searched_keys(self) -> list[str]:
        """The keys the sweep searched (from ``sweep.yaml``); [] for a plain folder of runs."""
        return list(self.read_spec().get("searched_keys", []))

    def read_spec(self) -> dict[str, Any]:
        """What ``sweep.yaml`` records ({} for a plain folder of runs)."""
        return (yaml.safe_load(self.spec.read_text()) or {}) if self.spec.is_file() else {}


@dataclass
class Run:
    """A run directory read back: its name below the folder read, config and evaluations."""

    name: str
    path: Path
    config: dict[str, Any]
    """Flattened resolved config: ``{"data.context_length": 20, ...}``."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Rows of metrics.jsonl that carry the metric, in step order."""

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    def score(self, metric: str = METRIC) -> tuple[float, float]:
        """(best, final) of ``metric``; NaN when the run never evaluated."""
        values = [row[metric] for row in self.evals if isinstance(row.get(metric), (int, float))]
        return (max(values), values[-1]) if values else (math.nan, math.nan)


def readable(value: Any) -> str:
    """A searched value as a reader wants it in a label: a pre-training spec by its name, a
    backbone directory by its folder name."""
    text = str(value)
    if text.startswith("pretrain:"):
        return "pretrain:" + Path(text[len("pretrain:"):]).stem
    if text.startswith(("/", "~", "./")) and "://" not in text:
        return Path(text).name
    return text


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become tuples so values can be grouped."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def find_runs(root: Path, metric: str = METRIC) -> list[Run]:
    """Every run directory at or below ``root`` (a sweep, a run, or a folder of runs)."""
    root = Path(root)
    if not root.exists():
        raise RaydtError(f"{root} not found")
    runs = []
    for cfg_file in sorted(root.rglob(CONFIG)):
        run_dir = RunDir(cfg_file.parent)
        try:
            rows = run_dir.read_metrics()
        except DataError as exc:  # one damaged run: say which, report the others
            print(f"warning: {exc}; reporting this run without its metrics", file=sys.stderr)
            rows = []
        name = str(run_dir.path.relative_to(root)) if run_dir.path != root else run_dir.path.name
        try:
            config = run_dir.read_config(flat=True)
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as exc:  # AttributeError: not a mapping
            print(f"warning: skipped {run_dir.path}: its {CONFIG} cannot be read ({type(exc).__name__}), so "
                  "its group is unknown", file=sys.stderr)
            continue
        runs.append(Run(name, run_dir.path, config, [r for r in rows if metric in r]))
    if not runs:
        failed = SweepDir(root).failed_trials()
        if failed:  # a sweep whose every trial failed before it wrote a run: say why, not "empty"
            listed = "; ".join(f"{name}: {error}" for name, error in sorted(failed.items())[:5])
            more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
            raise RunFailed(f"{root}: no trial wrote a run; {len(failed)} trial(s) failed: {listed}{more} (full logs "
                            "in each trial's directory)")
        raise RaydtError(f"{root} holds no run directories (no {CONFIG} below it)")
    return runs


def run_paths(root: Path) -> list[Path]:
    """``root`` itself when it is a run, else every run directory below it."""
    root = Path(root)
    if not root.exists():
        raise RaydtError(f"{root} not found")
    return [root] if RunDir(root).is_run() else [r.path for r in find_runs(root)]


def group_runs(runs: Sequence[Run], by: Sequence[str] | None, root: Path) -> tuple[list[str], dict[tuple, list[Run]]]:
    """Group runs by ``by`` (default: the sweep's searched keys without the seed; for a plain
    folder of runs, the keys whose values differ between them)."""
    if not by:
        keys = SweepDir(root).searched_keys()
        if not keys:
            all_keys = sorted(set().union(*(r.config for r in runs)))
            keys = [k for k in all_keys if len({repr(r.config.get(k)) for r in runs}) > 1]
        by = [k for k in keys if k != SEED_KEY]
    unknown = [k for k in by if not any(k in r.config for r in runs)]
    if unknown:
        valid = sorted(set().union(*(r.config for r in runs)))
        raise RaydtError(f"--by {', '.join(unknown)}: not a config key of these runs; valid keys: {', '.join(valid)}")
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.config.get(k) for k in by), []).append(run)
    return list(by), dict(sorted(groups.items(), key=lambda kv: repr(kv[0])))
