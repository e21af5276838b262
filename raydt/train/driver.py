"""Starting a run: check everything cheap first, then train in-process or on Ray Train."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from raydt.config import ExperimentConfig
from raydt.errors import RaydtError
from raydt.rundir import RunDir


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a finished or running run unless asked to."""
    run = RunDir(run_dir)
    if resume:
        if not run.last.exists():
            raise RaydtError(f"--resume: {run_dir} holds no checkpoint ({run.last.relative_to(run_dir)}); "
                             "run without --resume")
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
    run_dir: Path,
    use_ray: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir``; bad input fails here, before Ray or a model starts."""
    from raydt.preflight import check_configs
    from raydt.train.loop import RunContext, fit, resolve_run_data

    check_configs([("", config)])  # backbone, dataset file and text exist, before anything is built
    prepare_run_dir(run_dir, resume, overwrite)
    if config.resources.use_gpu:
        import torch

        if not use_ray and not torch.cuda.is_available():
            raise RaydtError("resources.use_gpu=true but no CUDA device is visible; set resources.use_gpu=false")
    resolve_run_data(config, log=log)  # makes/loads the dataset and settles env and targets
    from raydt.pretrain import resolve_backbone

    resolve_backbone(config.model.backbone, config.model, log=log)  # a pretrain:SPEC backbone is made here, once
    if not use_ray:
        if config.resources.num_workers > 1:
            raise RaydtError(
                f"resources.num_workers={config.resources.num_workers} needs Ray Train; "
                "drop --no-ray or set resources.num_workers=1"
            )
        import torch

        device = torch.device("cuda" if config.resources.use_gpu else "cpu")
        return fit(config, run_dir, RunContext(device=device, log=log), resume=resume)
    if address is None:  # a local Ray gets this machine: check before starting it
        from raydt.resources import local_nodes, trial_capacity

        trial_capacity(config.resources, local_nodes(), "resources")
    from raydt.train.worker import run_with_ray

    return run_with_ray(config, run_dir, address=address)
