"""Ray Train adapter: one run as a ``TorchTrainer`` of 1..N workers (DDP).

Ray Train has already created the process group (gloo on CPU, NCCL on GPU) when
:func:`train_loop_per_worker` starts. Each worker runs the plain-PyTorch loop of
:mod:`raydt.train.loop` with its rank; every rank calls ``ray.train.report`` at every
evaluation (Ray requires equal report counts); a restarted worker group resumes from the
run directory's checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raydt.artifacts import Prepared
from raydt.config import ExperimentConfig, config_from_dict, to_dict
from raydt.errors import EvalTimeout, RaydtError, RunFailed
from raydt.rundir import CHECKPOINTS, LAST, RAY_TRAIN, RunDir, last_checkpoint_uri

FORCE_CPU = "RAYDT_FORCE_CPU"
"""Set to 1 (with Ray's nodes declaring GPUs they lack) to test GPU scheduling on CPUs: the
workers train on the CPU and their process group is gloo."""


def worker_context(mirror=None, artifacts=(), tracking: dict | None = None):
    """The :class:`~raydt.train.loop.RunContext` of this Ray Train worker; with a
    :class:`~raydt.storage.Mirror`, rank 0 uploads the run directory after each checkpoint."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from raydt.train.loop import RunContext

    context = ray.train.get_context()
    rank = context.get_world_rank()

    def report(step: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        # Metrics only: the run directory's own checkpoint is what a restarted worker group
        # or a resumed trial continues from, so handing Ray a copy would only double the disk.
        if checkpoint is not None and mirror is not None:
            mirror.sync_up()  # the checkpoint and the rows before it reach storage together
        ray.train.report({**metrics, "step": step})

    return RunContext(
        rank=rank,
        world_size=context.get_world_size(),
        # RAYDT_FORCE_CPU: a cluster that declares GPUs it does not have (scheduling tests).
        device=torch.device("cpu") if os.environ.get(FORCE_CPU) == "1" else ray.train.torch.get_device(),
        report=report,
        log=print if rank == 0 else (lambda _: None),
        node=ray.get_runtime_context().get_node_id(),
        artifacts=list(artifacts),
        **(tracking or {}),
    )


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """What each worker runs: the plain loop with this worker's rank and report hook.

    A run directory that already holds a checkpoint is resumed from it: that is how a
    restarted worker group (Ray's failure handling) or a resumed sweep trial continues.
    With URI storage (``payload["storage"]``) the run directory is this node's staging copy:
    storage is the record, so the copy is first made equal to it (a run restarted on
    another node continues from what its last node uploaded).
    """
    import ray.train

    from raydt import offline

    if payload.get("offline"):  # a worker on another node: the driver's environment did not reach it
        os.environ[offline.VARIABLE] = "1"
    if payload.get("force_cpu"):
        os.environ[FORCE_CPU] = "1"
    offline.apply()
    from raydt.train.loop import Trainer, agree_with_rank0

    config = config_from_dict(payload["config"])
    rank = ray.train.get_context().get_world_rank()
    bind_gloo_to(ray.util.get_node_ip_address())  # before raydt's own gloo groups are made
    mirror = None
    if payload.get("storage"):
        from raydt import storage

        mirror = storage.Mirror(storage.staging_dir(payload["storage"]), payload["storage"])
        run_dir = mirror.local
        # Storage decides, not whatever an earlier run left in this node's staging folder.
        resume = storage.exists(last_checkpoint_uri(mirror.remote))
        if resume:
            # Rank 0 keeps the whole run; the others only read the checkpoint, and must not
            # replace files rank 0 may already have open.
            mirror.sync_down(skip=storage.is_kept_checkpoint if rank == 0
                             else (lambda rel: rel != f"{CHECKPOINTS}/{LAST}"))
        elif rank == 0:
            _clear(run_dir)  # a fresh run: nothing from an earlier run at this URI survives
    else:
        run_dir = Path(payload["run_dir"])
        # One decision, rank 0's: with a run directory local to each node, nodes could
        # otherwise see different files and start from different states.
        resume = agree_with_rank0(RunDir(run_dir).last.is_file())
    used = _pull_prepared(config, Prepared.from_dict(payload.get("prepared")), rank)
    tracking = payload.get("tracking") or {"location": payload.get("storage") or payload.get("run_dir")}
    Trainer(config, run_dir, worker_context(mirror if rank == 0 else None, used, tracking)).fit(resume=resume)
    if mirror is not None and rank == 0:
        mirror.sync_up()  # timing.json, the last rows and events


def _pull_prepared(config: ExperimentConfig, prepared: Prepared, rank: int) -> list:
    """The driver's prepared inputs this run reads, pulled into this node's caches first when
    they are in a store (then nothing missing is built here: it fails, naming it)."""
    from raydt import artifacts
    from raydt.prepare import artifacts_of

    used = artifacts_of(config, prepared.artifacts)
    if prepared.store is not None:
        artifacts.activate(used, artifacts.Store(prepared.store), log=print if rank == 0 else (lambda _: None))
    return used


def interface_of(ip: str) -> str | None:
    """The name of the network interface that holds the address ``ip``, if any."""
    import socket

    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)):
            return name
    return None


def bind_gloo_to(ip: str) -> str | None:
    """Make the gloo groups this process creates from now on listen on the interface of
    ``ip`` (the Ray node's address), unless ``GLOO_SOCKET_IFNAME`` is set already; returns the
    interface chosen. Without it gloo binds to the address the hostname resolves to, which on
    Ubuntu's default /etc/hosts is 127.0.1.1: ranks on other nodes could never connect."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return None
    name = interface_of(ip)
    if name is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = name
    return name


def _clear(folder: Path) -> None:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)


def scaling_config(config: ExperimentConfig):
    """Ray Train's ``ScalingConfig`` for the ``resources:`` section of a run."""
    from ray.train import ScalingConfig

    from raydt.resources import gpus_per_worker, placement_strategy, with_gpu_share

    res = with_gpu_share(config).resources
    return ScalingConfig(
        num_workers=res.num_workers,
        use_gpu=res.use_gpu,
        resources_per_worker={"CPU": res.cpus_per_worker} | ({"GPU": gpus_per_worker(res)} if res.use_gpu else {}),
        placement_strategy=placement_strategy(res),
    )


def make_trainer(config: ExperimentConfig, run_dir: Path | str, name: str, storage_path: str, callbacks: list | None = None,
                 prepared: Prepared | None = None, tracking: dict | None = None):
    """A ``TorchTrainer`` running ``config`` into ``run_dir``, a local directory or a URI
    (staged on the rank-0 node and uploaded); Ray's own files go under ``storage_path/name``."""
    from ray.train import FailureConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raydt.offline import is_offline
    from raydt.storage import is_uri

    force_cpu = os.environ.get(FORCE_CPU) == "1"
    return TorchTrainer(
        train_loop_per_worker,
        torch_config=TorchConfig(backend="gloo") if force_cpu else None,
        train_loop_config={"config": to_dict(config), "run_dir": None if is_uri(run_dir) else str(run_dir),
                           "storage": str(run_dir) if is_uri(run_dir) else None, "offline": is_offline(),
                           "prepared": (prepared or Prepared()).to_dict(),
                           # name, group and location of the run for W&B / MLflow (raydt.trackers)
                           "tracking": tracking, "force_cpu": force_cpu},
        scaling_config=scaling_config(config),
        run_config=RayRunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            # Ray retries preemptions itself (their own budget); every other failure comes
            # back to fit_trainer, which retries lost workers and never a permanent error.
            failure_config=FailureConfig(max_failures=0),
        ),
    )


def permanent_failure(error: Exception) -> RaydtError | None:
    """The :class:`RaydtError` a failed worker group raised (lowest rank first), if any:
    bad input or a diverged loss, which fails the same way however often it is run."""
    failures = getattr(error, "worker_failures", {}) or {}
    for rank in sorted(failures):
        failure = failures[rank]
        # A rank that gave up waiting on rank 0 while rank 0 itself was lost (its node gone):
        # the wait ended because of the loss, which a restart recovers from.
        if isinstance(failure, EvalTimeout) and rank > 0 and not isinstance(failures.get(0, failure), RaydtError):
            continue
        if isinstance(failure, RaydtError):
            return failure
    return None


def _first_line(error: Exception) -> str:
    failures = getattr(error, "worker_failures", {}) or {}
    first = failures[min(failures)] if failures else error
    text = str(first).strip().splitlines()
    return f"{type(first).__name__}: {text[-1] if text else ''}"


def fit_trainer(config: ExperimentConfig, run_dir: Path | str, name: str, storage_path: str,
                callbacks: list | None = None, log: Callable[[str], None] = print,
                prepared: Prepared | None = None, tracking: dict | None = None) -> Any:
    """Run :func:`make_trainer` to the end. A worker group that fails for a reason raydt
    names (:class:`RaydtError`) fails at once with that message; any other failure (a dead
    worker process, a lost node) restarts the group from the run's last checkpoint, up to
    ``resources.max_failures`` times."""
    from ray.train import WorkerGroupError

    budget = config.resources.max_failures
    attempt = 0
    while True:
        try:
            return make_trainer(config, run_dir, name, storage_path, callbacks, prepared, tracking).fit()
        except WorkerGroupError as exc:
            error = permanent_failure(exc)
            if error is not None:
                raise error.with_traceback(None) from None
            if attempt >= budget:
                raise RunFailed(f"the run's workers failed {attempt + 1} time(s), more than "
                                f"resources.max_failures={budget}; last: {_first_line(exc)}") from None
            attempt += 1
            log(f"workers failed ({_first_line(exc)}); restarting from the last checkpoint "
                f"(retry {attempt} of {budget})")


REPORT_POLL_SECONDS = 0.25
"""How often Ray Train's controller polls the workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``)."""


def connect(address: str | None = None, log: Callable[[str], None] = print) -> None:
    """Join the Ray cluster at ``address`` (or start a local one) unless already joined.

    Ray Train's controller takes one ``ray.train.report`` from a worker's queue per poll,
    and a worker's next report blocks until then: at Ray's default 2 s interval a run that
    evaluates every few seconds waits more than it trains. Every process of this job
    (controllers included) gets :data:`REPORT_POLL_SECONDS` unless the user set the variable;
    a hanging poll is still tolerated for Ray's ten minutes, so a busy worker is not at risk.
    """
    import ray

    if ray.is_initialized():
        return
    existing = running_cluster() if address is None else None
    interval = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(REPORT_POLL_SECONDS))
    ray.init(address=address, runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval}})
    if existing:  # Ray joins it silently; its nodes, not this machine, are what the run gets
        log(f"joined the Ray cluster already running at {existing} (RAY_ADDRESS, or a `ray start` on this "
            "machine); give --address local to start a fresh one instead")


def running_cluster() -> str | None:
    """The address of the Ray cluster ``ray.init()`` without an address would join (the
    RAY_ADDRESS variable, or a cluster started with ``ray start`` on this machine), else None."""
    try:
        from ray._private import services

        return services.canonicalize_bootstrap_address(None)
    except Exception:  # a private helper: if it moves, only this notice is lost
        return None


def run_with_ray(config: ExperimentConfig, run_dir: Path | str, address: str | None = None,
                 prepared: Prepared | None = None) -> None:
    """Run ``config`` through a ``TorchTrainer`` into ``run_dir`` (a local directory, or a
    URI that rank 0 mirrors to)."""
    from raydt.resources import trial_capacity, with_gpu_share
    from raydt.storage import is_uri

    connect(address)
    trial_capacity(with_gpu_share(config).resources, cluster_shape(), "resources")  # fail now rather than wait forever
    where = str(run_dir) if is_uri(run_dir) else str(Path(run_dir).resolve())
    fit_trainer(config, where, RAY_TRAIN, where, prepared=prepared)


# --------------------------------------------------------------------------------------
# The cluster this process is connected to, as what it can become


def cluster_shape():
    """The :class:`~raydt.resources.ClusterShape` of the connected Ray cluster.

    In order: the cluster config the deployment reported to Ray's GCS (KubeRay does); the
    config file of this cluster's autoscaler (the ``--autoscaling-config`` of the monitor
    process serving this GCS, which is ``~/ray_bootstrap_config.yaml`` on a ``ray up`` head);
    ``~/ray_bootstrap_config.yaml`` itself; else the nodes alive now (a fixed cluster).
    """
    import ray

    from raydt.resources import (
        is_local_provider,
        live_nodes_by_type,
        shape_from_autoscaler_config,
        shape_from_cluster_config_proto,
        shape_from_nodes,
    )

    alive = [n for n in ray.nodes() if n.get("Alive")]
    nodes = [dict(n["Resources"]) for n in alive]
    try:
        import ray._private.state

        proto = ray._private.state.state.get_cluster_config()
    except Exception:  # a private API: its absence only means "not reported"
        proto = None
    if proto is not None and len(proto.node_group_configs):
        return shape_from_cluster_config_proto(proto, "the cluster config in Ray's GCS")
    path = autoscaler_config_path(ray.get_runtime_context().gcs_address)
    if path is not None:
        import yaml

        config = yaml.safe_load(path.read_text()) or {}
        source = f"the autoscaler config {path}"
        if is_local_provider(config):
            # The local provider (clusters/local.yaml): its machines exist and Ray detects what
            # they hold, so the nodes alive now are the cluster.
            return shape_from_nodes(nodes, source=f"the nodes alive now ({path}: the local provider's machines)")
        # Any other provider launches nodes of its types; what a type's resources leave out
        # (`resources: {}`) is filled from its live nodes first: the head by Ray's head marker,
        # the rest by the ray.io/node-group label autoscaler v2 gives them, else by size.
        return shape_from_autoscaler_config(config, source, live_nodes_by_type(config, alive, source))
    return shape_from_nodes(nodes)


def autoscaler_config_path(gcs_address: str) -> Path | None:
    """The config file of the autoscaler serving ``gcs_address``, when it runs on this
    machine (the head, where the sweep driver runs), or ``ray up``'s bootstrap copy."""
    port = gcs_address.rsplit(":", 1)[-1]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended, or is not ours to read
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") or a.endswith("autoscaler/v2/monitor.py") for a in args):
            continue
        opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if opts.get("gcs-address", "").rsplit(":", 1)[-1] == port and opts.get("autoscaling-config"):
            path = Path(opts["autoscaling-config"]).expanduser()
            if path.is_file():
                return path
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    return bootstrap if bootstrap.is_file() else None
