"""Starting a run: check everything cheap first, prepare its inputs, then train in-process
or on Ray Train."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from raydt import storage
from raydt.config import ExperimentConfig
from raydt.errors import RaydtError, RunFailed
from raydt.rundir import CONFIG, METRICS, SWEEP_SPEC, RunDir, flatten, last_checkpoint_uri

RESUMABLE_CHANGES = ("train.steps", "train.eval_every", "train.log_every", "train.early_stop_patience",
                     "train.keep_checkpoints", "train.compile", "eval.", "resources.", "log.")
"""Keys (or section prefixes) a resumed run may change: its budget, evaluation, resources and
trackers. Any other change (model shapes, data, losses, optimiser) would make the checkpoint
and the record describe another run."""


def check_resume_changes(before: dict[str, Any], config: ExperimentConfig, where: Path | str) -> None:
    """Refuse, in one line, a resume whose config changes keys other than :data:`RESUMABLE_CHANGES`
    (``before``: the run's flattened ``config.resolved.yaml``)."""
    from raydt.config import PRETRAIN_SCHEME, to_dict

    after = flatten(to_dict(config))
    defaults = flatten(to_dict(ExperimentConfig()))

    def same(key: str) -> bool:
        old, new = before.get(key), after.get(key)
        if key not in after:  # a key a newer raydt dropped
            return True
        if key not in before:  # a key added since the run started: it ran with the default
            return new == defaults.get(key)
        if key == "model.backbone" and all(str(v).startswith(PRETRAIN_SCHEME) for v in (old, new)):
            return Path(str(old)[len(PRETRAIN_SCHEME):]).name == Path(str(new)[len(PRETRAIN_SCHEME):]).name  # a moved checkout
        return old == new

    changed = [key for key in sorted(set(before) | set(after))
               if not key.startswith(RESUMABLE_CHANGES) and not same(key)]
    if changed:
        shown = "; ".join(f"{key}: {before.get(key)!r} → {after.get(key)!r}" for key in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise RaydtError(f"--resume: this config changes what {where} was trained with ({shown}{more}); a resumed "
                         "run may change only its budget, evaluation, resources and trackers "
                         f"({', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE_CHANGES)}): drop the "
                         "change, or start a new run with another --out")


def prepare_run_dir(run_dir: Path | str, resume: bool, overwrite: bool, config: ExperimentConfig | None = None) -> None:
    """Refuse to clobber a finished or running run unless asked to (a local directory or a
    run at a storage URI alike), and a resume whose ``config`` changes what the run was
    trained with."""
    if storage.is_uri(run_dir):
        uri = str(run_dir)
        has_checkpoint = storage.exists(last_checkpoint_uri(uri))
        has_run = has_checkpoint or storage.exists(storage.join(uri, METRICS))
        if resume and not has_checkpoint:
            raise RaydtError(f"--resume: {uri} holds no checkpoint; run without --resume")
        if resume and config is not None and storage.exists(storage.join(uri, CONFIG)):
            before = flatten(yaml.safe_load(storage.read_text(storage.join(uri, CONFIG))) or {})
            check_resume_changes(before, config, storage.join(uri, CONFIG))
        if not resume and has_run and not overwrite:
            raise RaydtError(f"{uri} already holds a run; continue it with --resume, pick another place with "
                             "--out, or replace it with --overwrite")
        if not resume and has_run:
            storage.remove(uri)
        return
    run = RunDir(Path(run_dir))
    others = [p.parent.name for p in sorted(Path(run_dir).glob(f"*/{CONFIG}"))]
    if (Path(run_dir) / SWEEP_SPEC).is_file() or others:
        what = "a sweep (sweep.yaml)" if (Path(run_dir) / SWEEP_SPEC).is_file() else f"other runs ({', '.join(others[:3])})"
        raise RaydtError(f"{run_dir} holds {what}; a run needs a directory of its own: give another --out")
    if resume:
        if not run.last.exists():
            raise RaydtError(f"--resume: {run_dir} holds no checkpoint ({run.last.relative_to(run_dir)}); "
                             "run without --resume")
        if config is not None and run.config.is_file():
            try:
                before = run.read_config(flat=True)
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise RaydtError(f"--resume: {run.config} cannot be read ({type(exc).__name__}); the run's "
                                 "record is damaged: start a new run with another --out") from None
            check_resume_changes(before, config, run.config)
        return
    has_run = run.has_results()
    if has_run and not overwrite:
        raise RaydtError(
            f"{run_dir} already holds a run; continue it with --resume, pick another directory "
            "with --out, or replace it with --overwrite"
        )
    if has_run:
        run.clear_results()


def run_training(
    config: ExperimentConfig,
    run_dir: Path | str,
    use_ray: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (a local directory, or with Ray a storage URI); bad
    input fails here, before Ray or a model starts. ``stop_after`` (in-process runs only)
    ends the run after that step with ``train.steps``' schedule (``raydt reproduce``)."""
    from raydt.artifacts import Prepared, store_for
    from raydt.preflight import check_configs
    from raydt.prepare import prepare_runs
    from raydt.train.loop import RunContext, fit

    remote = storage.is_uri(run_dir)
    if remote and not use_ray:
        raise RaydtError(f"--out {run_dir}: --no-ray writes a local run directory; drop --no-ray to write to a URI")
    if stop_after is not None and use_ray:
        raise ValueError("stop_after cuts in-process runs only (use_ray=False)")
    check_configs([("", config)])  # backbone, dataset file and text exist, before anything is built
    from raydt.trackers import check_trackers

    check_trackers(config.log, remote_storage=remote)  # W&B / MLflow installed and set up
    import contextlib

    # One writer per run directory, from the check of what it holds to the end of the run.
    with contextlib.nullcontext() if remote else RunDir(Path(run_dir)).lock():
        prepare_run_dir(run_dir, resume, overwrite, config)
        if config.resources.use_gpu:
            import torch

            if not use_ray and not torch.cuda.is_available():
                raise RaydtError("resources.use_gpu=true but no CUDA device is visible; set resources.use_gpu=false")
        if not use_ray:
            if config.resources.num_workers > 1:
                raise RaydtError(
                    f"resources.num_workers={config.resources.num_workers} needs Ray Train; "
                    "drop --no-ray or set resources.num_workers=1"
                )
            import torch

            artifacts = prepare_runs([config], None, log=log)  # datasets, backbone, centres, text: made once here
            device = torch.device("cuda" if config.resources.use_gpu else "cpu")
            return fit(config, Path(run_dir), RunContext(device=device, log=log, artifacts=artifacts), resume=resume,
                       stop_after=stop_after)
        if address is None:  # a local Ray gets this machine: check before starting it
            from raydt.resources import local_nodes, trial_capacity, with_gpu_share

            trial_capacity(with_gpu_share(config).resources, local_nodes(), "resources")
        # Built once here, published where every node can pull it (a URI run's storage, or
        # $RAYDT_ARTIFACTS), so no worker generates data or pre-trains on its own node.
        store = store_for(storage.parent(str(run_dir)) if remote else None)
        artifacts = prepare_runs([config], store, log=log)
        from raydt.train.worker import run_with_ray

        run_with_ray(config, run_dir, address=address, prepared=Prepared(tuple(artifacts), store.location if store else None))
        # Ray's result carries metrics only with checkpoints it holds; the run's own log is the record.
        return results_of(run_dir)


def results_of(run_dir: Path | str) -> dict[str, Any]:
    """The latest value of every metric a run logged, read from its directory or its URI."""
    local = storage.local_view(run_dir) if storage.is_uri(run_dir) else Path(run_dir)
    rows = RunDir(local).read_metrics()
    if not rows:
        raise RunFailed(f"the run finished but {run_dir} holds no metrics: its first rank ran on another node, "
                        "whose disk holds them; on a cluster give --out a URI every node reaches (s3://…, "
                        "or file:// on a shared filesystem)")
    return {k: v for row in rows for k, v in row.items()}
