"""Experiment trackers where the field already looks: Weights & Biases and MLflow.

Each is a :class:`~raydt.sinks.Sink` beside ``metrics.jsonl`` and TensorBoard, opened by
rank 0 only, fed every metric the JSONL sink writes at the same steps, with the resolved
config as the run's config (W&B) or params (MLflow). A run's tracker identity is
deterministic (:func:`identity`): its name is the trial's name, its id is derived from where
the run lives, and its group is the trial's group label (the searched values without the
seed), so W&B's grouped view shows the seed mean as raydt's ``groups/`` does. ``--resume``
and a restarted worker group continue the same tracker run without logging a step twice.

Both packages are optional extras (``pip install -e ".[wandb]"``, ``".[mlflow]"``);
:func:`check_trackers` refuses a config that names one that is missing or misconfigured
before any run starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydt.config import ExperimentConfig, LogConfig, to_dict
from raydt.errors import ConfigError
from raydt.sinks import Sink


@dataclass(frozen=True)
class Identity:
    """Who a run is to a tracker."""

    name: str
    """Display name: the trial's name (``trial_00003``) or the run directory's."""
    id: str
    """Stable id: the same run (resumed, restarted) gets the same one, another run another."""
    group: str | None = None
    """The trial's group label (searched values without the seed); None for a lone run."""


def identity(location: str, name: str, group: str | None = None) -> Identity:
    """The :class:`Identity` of the run stored at ``location`` (a path or URI)."""
    digest = hashlib.sha1(location.rstrip("/").encode()).hexdigest()[:8]
    parent = location.rstrip("/").rsplit("/", 2)[-2] if "/" in location.rstrip("/") else ""
    # W&B ids allow letters, digits, - and _ only.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{parent}-{name}".strip("-"))[:64]
    return Identity(name, f"{stem}-{digest}", group)


def enabled(log: LogConfig) -> list[str]:
    """The trackers a config turns on."""
    return [name for name, on in (("wandb", log.wandb.project), ("mlflow", log.mlflow.experiment)) if on]


def check_trackers(log: LogConfig, remote_storage: bool = False) -> None:
    """Refuse, before any run, trackers whose package is missing or whose settings cannot
    work (W&B online without credentials or with raydt offline; MLflow's default local store
    under URI storage, where it would stay on one node)."""
    from raydt.offline import is_offline

    if log.wandb.project is not None:
        _require("wandb", "wandb", "log.wandb.project")
        if not log.wandb.project.strip():
            raise ConfigError("log.wandb.project is empty; name a W&B project, or null to turn W&B off")
        if log.wandb.mode == "online":
            if is_offline():
                raise ConfigError("log.wandb.mode=online but downloads and uploads are off (RAYDT_OFFLINE); "
                                  "set log.wandb.mode=offline and upload later with `wandb sync`")
            if not _wandb_credentials():
                raise ConfigError("log.wandb.mode=online but no W&B API key is set up on this machine; run "
                                  "`wandb login` (or set WANDB_API_KEY), or set log.wandb.mode=offline")
    if log.mlflow.experiment is not None:
        _require("mlflow", "mlflow", "log.mlflow.experiment")
        if not log.mlflow.experiment.strip():
            raise ConfigError("log.mlflow.experiment is empty; name an MLflow experiment, or null to turn MLflow off")
        uri = log.mlflow.tracking_uri
        if uri is None and remote_storage:
            raise ConfigError("log.mlflow.tracking_uri is null, which keeps MLflow's store beside each run on its "
                              "node's disk; with URI storage name a tracking server (http://…) or a database "
                              "every node reaches (postgresql://…)")
        if uri is not None and not re.match(r"^(file:|sqlite:|https?://|postgresql|mysql|mssql|databricks|/)", uri):
            raise ConfigError(f"log.mlflow.tracking_uri={uri!r} is not an MLflow tracking URI; give http(s)://…, "
                              "sqlite:///path.db, file:/path or a database URL")


def _require(module: str, extra: str, key: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key} is set but the {module} package is not installed; "
                          f'pip install -e ".[{extra}]" (or set {key}=null)')


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def open_trackers(cfg: ExperimentConfig, run_dir: Path, who: Identity, resume: bool) -> list[Sink]:
    """The tracker sinks ``cfg`` turns on, opened for the run ``who`` (continued when
    ``resume``)."""
    sinks: list[Sink] = []
    if cfg.log.wandb.project is not None:
        sinks.append(WandbSink(cfg, run_dir, who, resume))
    if cfg.log.mlflow.experiment is not None:
        sinks.append(MlflowSink(cfg, run_dir, who, resume))
    return sinks


class WandbSink(Sink):
    """A W&B run: id and name from :class:`Identity`, the config nested as raydt writes it.
    A resumed run logs again the rows after its checkpoint; the steps W&B already has are
    skipped (``wandb/raydt_last_step``, beside W&B's own files: an offline run cannot ask
    the server, and an online one would drop them with a warning)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, who: Identity, resume: bool) -> None:
        import wandb

        self.marker = Path(run_dir) / "wandb" / "raydt_last_step"
        self.last_step = int(self.marker.read_text()) if resume and self.marker.is_file() else -1
        settings = cfg.log.wandb
        self.run = wandb.init(
            project=settings.project, entity=settings.entity, mode=settings.mode, dir=str(run_dir),
            id=who.id, name=who.name, group=who.group, config=to_dict(cfg),
            resume="allow", reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if step <= self.last_step:  # logged before the run was interrupted
            return
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)
        from raydt.fsutil import atomic_write_text

        atomic_write_text(self.marker, str(step))

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.run.summary.update({k: float(v) for k, v in metrics.items()})

    def close(self) -> None:
        self.run.finish()


class MlflowSink(Sink):
    """An MLflow run in ``log.mlflow.experiment``, found again by its ``raydt.id`` tag on
    resume; steps it already holds are not logged again (MLflow would keep both)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, who: Identity, resume: bool) -> None:
        from mlflow import MlflowClient

        settings = cfg.log.mlflow
        uri = settings.tracking_uri or default_tracking_uri(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`raydt.id` = '{who.id}'",
                                        max_results=1, order_by=["attributes.start_time DESC"])
        self.last_step = -1
        if resume and found:
            self.run_id = found[0].info.run_id
            history = self.client.get_metric_history(self.run_id, "train/loss")
            self.last_step = max((m.step for m in history), default=-1)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"raydt.id": who.id, "raydt.run_dir": str(run_dir)} | ({"raydt.group": who.group} if who.group else {})
            self.run_id = self.client.create_run(experiment_id, run_name=who.name, tags=tags).info.run_id
            self._log_params(cfg)

    def _log_params(self, cfg: ExperimentConfig) -> None:
        from mlflow.entities import Param

        from raydt.rundir import flatten

        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(to_dict(cfg)).items())]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        if step <= self.last_step:  # logged before the run was interrupted
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def default_tracking_uri(run_dir: Path) -> str:
    """MLflow's store when none is named: a SQLite database, ``mlflow.db`` beside the run
    directory (in a sweep, one store for all its trials; ``mlflow ui --backend-store-uri
    sqlite:///…/mlflow.db`` opens it). MLflow 3 keeps its file store in maintenance mode."""
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def upload_sweep(root: Path, location: str, log: LogConfig, say=print) -> int:
    """Send every run of the sweep at ``root`` (stored at ``location``) to the trackers
    ``log`` turns on, with the identities a sweep run with them would have given; returns
    how many runs were sent."""
    import dataclasses

    from raydt.config import config_from_dict
    from raydt.rundir import SEED_KEY, SweepDir, find_runs
    from raydt.stats import group_label

    check_trackers(log)
    keys = [k for k in SweepDir(root).searched_keys() if k != SEED_KEY]
    runs = find_runs(root)
    for run in runs:
        cfg = dataclasses.replace(config_from_dict(run.dir.read_config(), source=str(run.dir.config)), log=log)
        who = identity(f"{location.rstrip('/')}/{run.name}", Path(run.name).name,
                       group_label(keys, [run.config.get(k) for k in keys]) if keys else None)
        rows = upload_run(run.path, cfg, who)
        say(f"uploaded {run.name}: {rows} row(s) to {', '.join(enabled(log))}")
    return len(runs)


def upload_run(run_dir: Path, cfg: ExperimentConfig, who: Identity) -> int:
    """Replay a finished run's ``metrics.jsonl`` into the trackers ``cfg`` turns on (for
    sweeps run without them); returns the rows sent."""
    from raydt.rundir import RunDir

    rows = RunDir(run_dir).read_metrics()
    sinks = open_trackers(cfg, run_dir, who, resume=False)
    try:
        for row in rows:
            values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
            for sink in sinks:
                sink.log(int(row["step"]), values)
        final = {k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith("eval/")}
        for sink in sinks:
            sink.hparams({}, final)
    finally:
        for sink in sinks:
            sink.close()
    return len(rows)
