"""Running a sweep on Ray Tune: one trial = one run = one ``TorchTrainer``.

The Train V2 pattern: Tune runs a function trainable per trial; that function builds the
trial's ``TorchTrainer`` (``raydt.train.worker.make_trainer``) with Tune's report callback and
calls ``fit()``. Tune reserves nothing for the trial function itself, and the trainer's
workers get a placement group Tune does not count, so raydt caps concurrency itself from
the cluster's resources (otherwise trials wait forever for resources they can never get).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback, Stopper

from raydt import storage
from raydt.config import ExperimentConfig, build, to_dict
from raydt.convergence import converged_index
from raydt.errors import ConfigError, RaydtError
from raydt.fsutil import writable_dir
from raydt.resources import (
    Capacity,
    ClusterShape,
    gpus_per_worker,
    load_cluster_file,
    local_shape,
    shape_from_nodes,
    trial_capacity,
    with_gpu_share,
)
from raydt.rundir import SWEEP_SPEC, TIMING, TRIAL_TIMING, TRIALS
from raydt.tune.spec import DATASET_KEY, SEED_KEY, SweepSpec

"""What a sweep directory records about its spec: searched keys, tune settings, plan."""


@dataclass(frozen=True)
class Plan:
    """What a sweep will ask of the cluster."""

    num_trials: int
    workers_per_trial: int
    cpus_per_worker: int
    gpus_per_worker: float
    """GPUs (or the share of one) each worker asks for; 0 on CPU."""
    cluster: ClusterShape
    """The cluster as it is or can become (the autoscaler's node types where there is one)."""
    concurrency: int
    capacity: Capacity | None = None
    """Which node types hold the trials, and how many nodes of each at most."""
    note: str = ""
    """Why the cluster the plan was made for cannot run the sweep (dry runs only)."""

    def lines(self) -> list[str]:
        trial = f"{self.workers_per_trial} worker(s) × {self.cpus_per_worker} CPU"
        if self.gpus_per_worker:
            trial += f" + {self.gpus_per_worker:g} GPU"
            if self.gpus_per_worker < 1:
                trial += f" ({_trials_per_gpu(self.gpus_per_worker)} trials per GPU)"
        if self.capacity is not None and self.workers_per_trial > 1:
            trial += f", placement {self.capacity.placement}"
        kind = "autoscaling, " if self.cluster.autoscaling else ""
        cap = f"; at most {self.cluster.max_worker_nodes} worker node(s) in all" if self.cluster.max_worker_nodes is not None else ""
        out = [
            f"trials:        {self.num_trials}",
            f"per trial:     {trial}",
            f"cluster:       {kind}node types from {self.cluster.source}{cap}",
            *(f"  {t.describe()}" for t in self.cluster.types),
        ]
        if self.capacity is not None:
            out += ["node types the trials use:", *(f"  {line}" for line in self.capacity.lines())]
        out += [
            f"concurrency:   {self.concurrency} trial(s) at a time"
            + (" (the autoscaler launches nodes as trials wait for them)" if self.cluster.autoscaling and self.concurrency else ""),
            f"waves:         {math.ceil(self.num_trials / max(self.concurrency, 1))}" if self.concurrency else "",
            f"note:          {self.note}" if self.note else "",
        ]
        return out


def _trials_per_gpu(share: float) -> int:
    return int(math.floor(1 / share + 1e-9))


def plan_sweep(spec: SweepSpec, cluster: ClusterShape | list[dict[str, float]]) -> Plan:
    """Check that a trial fits the cluster (a :class:`ClusterShape`, or a list of node
    resource dicts for a fixed cluster) and work out how many trials can run at once."""
    shape = cluster if isinstance(cluster, ClusterShape) else shape_from_nodes(cluster)
    configs = [with_gpu_share(spec.trial_config(point)) for point in spec.grid()] or [with_gpu_share(spec.base_config())]
    shares = {c.resources.gpus_per_worker for c in configs}
    if len(shares) > 1:  # gpus_per_worker: auto over several model sizes: plan for the largest share
        configs = [dataclasses.replace(c, resources=dataclasses.replace(c.resources, gpus_per_worker=max(shares)))
                   for c in configs]
    resources = {c.resources for c in configs}
    if len(resources) > 1:
        raise ConfigError(f"{spec.path}: all trials of a sweep must ask for the same resources; found {sorted(map(str, resources))}")
    res = resources.pop()
    capacity = trial_capacity(res, shape, str(spec.path))
    concurrency = min(capacity.trials, spec.num_trials)
    if spec.tune.max_concurrent:
        concurrency = min(concurrency, spec.tune.max_concurrent)
    return Plan(spec.num_trials, res.num_workers, res.cpus_per_worker, gpus_per_worker(res), shape, concurrency, capacity)


# --------------------------------------------------------------------------------------
# Trials


def run_trial(params: dict[str, Any], run_spec: dict[str, Any], sweep_dir: str,
              prepared: dict[str, Any] | None = None) -> None:
    """The Tune function trainable: build this trial's config and train it on Ray Train.

    The run directory is the trial's folder in the sweep's storage, not Tune's local staging
    folder (``get_trial_dir``, fresh and empty when a restored trial starts): a resumed trial
    must find its own checkpoint there. With URI storage the training workers stage it on
    their node and upload it (:mod:`raydt.storage`).
    """
    started = time.time()
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydt.artifacts import Prepared
    from raydt.config import RawSpec, apply_overrides
    from raydt.train.worker import fit_trainer

    raw = apply_overrides(RawSpec(run_spec["values"], run_spec["origins"]), params, source="search")
    config = build(ExperimentConfig, raw.values, raw.origins)
    context = tune.get_context()
    name = context.get_trial_name()  # _trial_name's, which is also its folder's
    run_dir = storage.join(sweep_dir, name)  # a local path or a URI
    from raydt.rundir import SEED_KEY
    from raydt.stats import group_label

    grouped = {k: v for k, v in params.items() if k != SEED_KEY}
    tracking = {"name": name, "group": group_label(list(grouped), list(grouped.values())), "location": run_dir}
    fit_trainer(config, run_dir, name="train", storage_path=run_dir, callbacks=[TuneReportCallback()],
                prepared=Prepared.from_dict(prepared), tracking=tracking)
    # The trial's wall time around its run's own timing.json.
    storage.write_text(storage.join(run_dir, TRIAL_TIMING),
                       json.dumps({"started": started, "finished": time.time()}, indent=1))


def _record_session(timing_uri: str, started: float, concurrency: int, resume: bool) -> None:
    """Add this session to the sweep's ``timing.json``: a resumed sweep keeps the sessions
    before it, so the sweep's wall time is the sum of its sessions', not the last one's.
    ``started``/``finished`` span them all; files without ``sessions`` were one session."""
    session = {"started": started, "finished": time.time(), "concurrency": concurrency}
    earlier: list[dict[str, Any]] = []
    if resume and storage.exists(timing_uri):
        old = json.loads(storage.read_text(timing_uri))
        earlier = old.get("sessions", [old])
    sessions = [*earlier, session]
    storage.write_text(timing_uri, json.dumps(
        {"started": sessions[0]["started"], "finished": session["finished"], "concurrency": concurrency,
         "sessions": sessions}, indent=1))


def _trial_name(trial) -> str:
    """``trial_NNNNN``: the trial's place in the order trials were created, so names are
    deterministic and a resumed sweep finds its trials. The grid's trial ids end in that
    index ("a1b2c_00003"); a searcher's ids are random, and its trials are numbered by the
    experiment tag ("4_lr=…", counted from 1), which Tune restores on resume."""
    suffix = trial.trial_id.rsplit("_", 1)
    if len(suffix) == 2 and suffix[1].isdigit():
        return f"trial_{suffix[1]}"
    return f"trial_{int(str(trial.experiment_tag).split('_', 1)[0]) - 1:05d}"


def _param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's search space of a grid sweep: the spec's dimensions, then the replicates
    (datasets, then seeds) as grid dimensions of their own, so that a spec with
    ``tune.replicates`` runs the trials the same spec with those grids spelled out runs.
    An Optuna sweep's space belongs to its searcher (:mod:`raydt.tune.replicates`)."""
    from ray import tune

    if spec.tune.searcher == "optuna":
        return {}
    space: dict[str, Any] = {}
    for dim in spec.dimensions:
        lo, hi = (dim.values + (None, None))[:2]
        if dim.kind == "grid":
            space[dim.key] = tune.grid_search(list(dim.values)) if spec.tune.searcher == "grid" else tune.choice(list(dim.values))
        elif dim.kind == "choice":
            space[dim.key] = tune.choice(list(dim.values))
        elif dim.kind == "uniform":
            space[dim.key] = tune.uniform(lo, hi)
        elif dim.kind == "loguniform":
            space[dim.key] = tune.loguniform(lo, hi)
        else:
            space[dim.key] = tune.randint(int(lo), int(hi))
    rep = spec.tune.replicates
    if spec.replicated:
        if rep.datasets is not None:
            space[DATASET_KEY] = tune.grid_search(list(rep.datasets))
        space[SEED_KEY] = tune.grid_search(list(range(rep.seeds)))
    return space


def _search_alg(spec: SweepSpec, concurrency: int, sweep_dir: str):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if spec.tune.searcher == "grid":
        return BasicVariantGenerator(max_concurrent=concurrency, random_state=spec.tune.seed)
    from raydt.tune.replicates import make_searcher

    return ConcurrencyLimiter(make_searcher(spec, sweep_dir), max_concurrent=concurrency)


def _scheduler(spec: SweepSpec, config: ExperimentConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.tune.scheduler == "fifo":
        return FIFOScheduler()
    # Our own step counter drives ASHA: Tune's iteration counter restarts on resume.
    return ASHAScheduler(
        time_attr="step",
        max_t=config.train.steps,
        grace_period=min(spec.tune.asha_grace_steps, config.train.steps),
        reduction_factor=spec.tune.asha_reduction_factor,
        stop_last_trials=False,
    )


class SweepProgress(Callback):
    """A line whenever a trial starts or ends: trials done, running and pending, and an ETA
    (the mean time of the trials that ended, for the waves still to run). A Tune callback."""

    def __init__(self, total: int, concurrency: int, log: Callable[[str], None]) -> None:
        self.total, self.concurrency, self.log = total, max(concurrency, 1), log
        self.started: dict[str, float] = {}
        self.durations: list[float] = []

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.time()
        self.log(self.line(trials))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trials, trial)

    def _ended(self, trials, trial) -> None:
        if trial.trial_id in self.started:
            self.durations.append(time.time() - self.started.pop(trial.trial_id))
        self.log(self.line(trials))

    def line(self, trials) -> str:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        return progress_line(done, running, self.total, self.concurrency, self.durations,
                             [time.time() - s for s in self.started.values()])


def progress_line(done: int, running: int, total: int, concurrency: int, durations: list[float],
                  elapsed: list[float]) -> str:
    """``trials: 3/12 done, 2 running, 7 pending; eta 14m05s``. The ETA needs one ended
    trial: each running trial takes the mean duration less what it has run, and the pending
    ones run in waves of ``concurrency`` at the mean duration each."""
    pending = max(total - done - running, 0)
    line = f"trials: {done}/{total} done, {running} running, {pending} pending"
    if durations and done < total:
        mean = sum(durations) / len(durations)
        left = max([mean - e for e in elapsed] + [0.0]) + math.ceil(pending / concurrency) * mean
        line += f"; eta {int(left) // 60}m{int(left) % 60:02d}s"
    return line


class ConvergedStopper(Stopper):
    """Stops a trial once ``patience`` evaluations have passed since its convergence point
    on the curve so far (``raydt.convergence``: the first evaluation within ``threshold``
    of the best so far). A Tune ``Stopper``."""

    def __init__(self, metric: str, mode: str, patience: int, threshold: float) -> None:
        self.metric, self.mode = metric, mode
        self.patience, self.threshold = patience, threshold
        self.history: dict[str, list[float]] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.metric not in result:
            return False
        scores = self.history.setdefault(trial_id, [])
        scores.append(float(result[self.metric]))
        return len(scores) - 1 - converged_index(scores, self.threshold, self.mode) >= self.patience

    def stop_all(self) -> bool:
        return False


def _stopper(spec: SweepSpec) -> ConvergedStopper | None:
    if not spec.tune.converged_patience:
        return None
    return ConvergedStopper(spec.tune.metric, spec.tune.mode, spec.tune.converged_patience, spec.tune.converged_threshold)


# --------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    sweep_dir: str
    trials: list[dict[str, Any]]
    """One row per trial: name, status, error, last step and metric."""
    unfinished: int = 0
    """Trials not finished when the sweep was interrupted (0 if it was not); ``--resume``
    continues them."""


def error_line(error: BaseException) -> str:
    """A trial's error as one line: a raydt error's own message (Tune wraps it in its
    traceback text), else the last line of the traceback."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        match = re.match(r"raydt\.errors\.\w+: (.*)", line)
        if match:
            return match.group(1)
    return lines[-1] if lines else type(error).__name__


def sweep_location(spec: SweepSpec, out: str | None) -> tuple[str, str]:
    """(storage path, sweep directory) as strings; local paths are made absolute."""
    where = out or spec.tune.storage_path
    if not storage.is_uri(where):
        where = str(Path(where).expanduser().resolve())
    return where, storage.join(where, spec.name)


def run_sweep(
    spec: SweepSpec,
    out: str | None = None,
    address: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    cluster_file: str | None = None,
    retry_failed: bool = False,
) -> SweepOutcome | Plan:
    """Run (or with ``dry_run`` only plan) the sweep ``spec``; ``cluster_file`` (a cluster
    YAML) plans it for that cluster instead of this machine or the one at ``address``.
    ``retry_failed`` (with ``resume``): trials that ended in error run again, each from its
    last checkpoint."""
    storage_path, sweep_dir = sweep_location(spec, out)
    if retry_failed and not resume:
        raise ConfigError("--retry-failed runs again the failed trials of an interrupted or finished sweep: "
                          "use it with --resume")
    if cluster_file is not None and (not dry_run or address is not None):
        raise ConfigError("--cluster plans a sweep for a cluster file: use it with --dry-run and without "
                          "--address (a sweep runs on, and a dry run with --address plans for, the cluster it joins)")
    # Every file and backbone any trial will read, checked before a plan or Ray.
    from raydt.preflight import check_configs

    check_configs((", ".join(f"{k}={v}" for k, v in point.items()), spec.trial_config(point))
                  for point in spec.discrete_points())
    from raydt.trackers import check_trackers

    for log_config in {spec.trial_config(point).log for point in spec.discrete_points()}:
        check_trackers(log_config, remote_storage=storage.is_uri(storage_path))
    # Storage is checked as Ray will use it, before a plan or Ray (a dry run writes nothing).
    if storage.is_uri(storage_path):
        storage.check_writable(storage_path, "--out / tune.storage_path", probe=not dry_run)
    elif not dry_run:
        writable_dir(storage_path, "--out / tune.storage_path")
    else:
        blocker = next((p for p in [Path(storage_path), *Path(storage_path).parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise RaydtError(f"--out / tune.storage_path {storage_path}: {blocker} is a file; give a folder")
    if dry_run and address is None:
        shape = load_cluster_file(cluster_file) if cluster_file is not None else local_shape()
        try:
            return plan_sweep(spec, shape)
        except ConfigError as exc:  # a cluster spec planned on a laptop: say so, still plan
            if cluster_file is not None:
                raise
            res = with_gpu_share(spec.base_config()).resources
            return Plan(spec.num_trials, res.num_workers, res.cpus_per_worker, gpus_per_worker(res), shape, 0,
                        note=f"cannot run on this machine ({exc}); run it on a cluster with --address, "
                             "or plan it for a cluster file with --cluster clusters/aws.yaml")
    sweep_file = storage.join(sweep_dir, SWEEP_SPEC)
    if not dry_run:
        if not resume and storage.exists(sweep_file):
            raise RaydtError(
                f"{sweep_dir} already holds a sweep; finish it with --resume, or choose another "
                "directory with --out or tune.name"
            )
        if resume and not storage.exists(sweep_file):
            raise RaydtError(f"--resume: {sweep_dir} holds no sweep to resume")
    from raydt.train.worker import cluster_shape, connect

    connect(address, log)
    # What the cluster can become, not only the nodes up now: on an autoscaling cluster the
    # trials' pending placement groups are what make the autoscaler launch their nodes.
    plan = plan_sweep(spec, cluster_shape())
    if dry_run:
        return plan
    # Datasets, pre-trained backbones, λ1 centres and tokenised text: built once here, before
    # any trial starts, and published where every node pulls them from (the sweep's URI
    # storage, or $RAYDT_ARTIFACTS), so every trial starts from the same bytes.
    from raydt.artifacts import Prepared, store_for
    from raydt.prepare import prepare_runs

    store = store_for(storage_path)
    artifacts = prepare_runs(preparation_configs(spec), store, log=log)
    prepared = Prepared(tuple(artifacts), store.location if store else None)
    for line in plan.lines():
        log(line)
    storage.write_text(sweep_file, yaml.safe_dump({
        "spec": str(spec.path),
        "searched_keys": spec.searched_keys,
        "tune": to_dict(spec.tune),
        "plan": {"num_trials": plan.num_trials, "concurrency": plan.concurrency},
        "report": dict(spec.report),
    }, sort_keys=False))
    if resume and not retry_failed:
        failed = _failed_before(sweep_dir)
        if failed:
            log(f"note: {failed} trial(s) failed in an earlier session and stay failed; add --retry-failed to "
                "run them again")
    return _fit(spec, storage_path, sweep_dir, plan, resume, log, prepared, retry_failed)


def _failed_before(sweep_dir: str) -> int:
    """How many trials the sweep's last session recorded in error (0 if it recorded none)."""
    trials = storage.join(sweep_dir, TRIALS)
    try:
        rows = json.loads(storage.read_text(trials)) if storage.exists(trials) else []
    except (OSError, ValueError):
        return 0
    return sum(1 for r in rows if isinstance(r, dict) and r.get("status") == "ERROR")


def preparation_configs(spec: SweepSpec) -> list[ExperimentConfig]:
    """Configs that cover every prepared input a trial can need: each point of the grid and
    choice values, with each continuous dimension at both ends of its range (so λ1 or λ2
    searched from 0 up prepares their centres and text)."""
    # Only keys that can change what a run reads (not optim.lr, say): 2^n ends each.
    continuous = [d for d in spec.dimensions if d.kind in ("uniform", "loguniform", "randint")
                  and (d.key.startswith(("data.", "model.", "loss.")) or d.key == "train.seed")]
    for dim in continuous:
        if dim.key in PREPARED_BY_VALUE:
            raise ConfigError(f"{spec.path}: search {dim.key} with grid or choice values, not {dim.kind}: each value "
                              f"needs its own {PREPARED_BY_VALUE[dim.key]}, prepared before the trials start")
    ends = [(d.values[0], d.values[1] - 1 if d.kind == "randint" else d.values[1]) for d in continuous]
    return [spec.trial_config({**point, **dict(zip([d.key for d in continuous], combo))})
            for point in spec.discrete_points() for combo in itertools.product(*ends)]


PREPARED_BY_VALUE = {"loss.kmeans_clusters": "k-means centres", "model.n_embd": "pre-trained backbone",
                     "model.n_layer": "pre-trained backbone", "model.n_head": "pre-trained backbone"}
"""Keys whose every value needs an artifact of its own."""


def _fit(spec: SweepSpec, storage_path: str, sweep_dir: str, plan: Plan, resume: bool, log,
         prepared, retry_failed: bool = False) -> SweepOutcome:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    base = spec.base_config()
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, run_spec={"values": spec.run.values, "origins": spec.run.origins}, sweep_dir=sweep_dir,
            prepared=prepared.to_dict(),
        ),
        # The trial function only waits on its trainer, whose workers hold the CPUs and GPUs;
        # Ray refuses an empty request, so it asks for a token amount of memory.
        {"cpu": 0, "memory": 1 << 20},
    )
    if resume:
        # A failed trial is retried only when asked: most failures (bad input) fail again.
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=retry_failed, restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.tune.metric,
                mode=spec.tune.mode,
                search_alg=_search_alg(spec, plan.concurrency, sweep_dir),
                scheduler=_scheduler(spec, base),
                # grid: repeats of the whole grid; optuna: trials = points × replicates.
                num_samples=spec.tune.num_samples if spec.tune.searcher == "grid" else spec.num_trials,
                max_concurrent_trials=plan.concurrency,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_path,
                stop=_stopper(spec),
                verbose=1,
                # Tune's JSON and CSV results (its ResultGrid reads them); not its TensorBoard
                # logger, whose copy of every metric (ray/tune/...) would sit beside raydt's own.
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback(),
                           SweepProgress(spec.num_trials, plan.concurrency, log)],
            ),
        )
    started = time.time()
    # Only the loggers given in the run config (no automatic TensorBoard one).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Tune's own interruption notice points at Tuner.restore; raydt says how to resume instead.
    tune_log = logging.getLogger("ray.tune.tune")
    level = tune_log.level
    tune_log.setLevel(logging.ERROR)
    try:
        grid = tuner.fit()
    finally:
        tune_log.setLevel(level)
    _record_session(storage.join(sweep_dir, TIMING), started, plan.concurrency, resume)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        rows.append({
            "trial": Path(result.path).name,
            "status": "ERROR" if result.error else "TERMINATED",
            "error": error_line(result.error) if result.error else None,
            "step": metrics.get("step"),
            spec.tune.metric: metrics.get(spec.tune.metric),
        })
    rows.sort(key=lambda r: r["trial"])
    storage.write_text(storage.join(sweep_dir, TRIALS), json.dumps(rows, indent=1))
    if not storage.is_uri(sweep_dir):  # grouped curves for `tensorboard --logdir SWEEP`
        from raydt.report import write_group_runs

        try:
            write_group_runs(Path(sweep_dir))
        except RaydtError as exc:  # no run evaluated: nothing to group, the sweep's outcome stands
            log(f"no grouped TensorBoard runs: {exc}")
    # Trials neither finished nor failed, or not yet created by the searcher (with
    # max_concurrent, the grid's later points): the sweep was stopped before they ended. Then
    # every trial not finished counts, those whose processes the Ctrl-C took down included.
    stopped = len(grid) - grid.num_terminated - grid.num_errors + max(spec.num_trials - len(grid), 0) > 0
    return SweepOutcome(sweep_dir, rows, unfinished=spec.num_trials - grid.num_terminated if stopped else 0)
