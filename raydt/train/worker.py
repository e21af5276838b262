"""Ray Train adapter: one run as a ``TorchTrainer`` of 1..N workers (DDP).

Ray Train has already created the process group (gloo on CPU, NCCL on GPU) when
:func:`train_loop_per_worker` starts. Each worker runs the plain-PyTorch loop of
:mod:`raydt.train.loop` with its rank; every rank calls ``ray.train.report`` at every
evaluation (Ray requires equal report counts), and rank 0 attaches the checkpoint so Ray's
failure handling can restart from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydt.config import RunConfig, config_from_dict, to_dict


def worker_context():
    """The :class:`~raydt.train.loop.RunContext` of this Ray Train worker."""
    import ray.train
    import ray.train.torch

    from raydt.train.loop import RunContext

    context = ray.train.get_context()
    rank = context.get_world_rank()

    def report(step: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        row = {**metrics, "step": step}
        if checkpoint is not None:
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint.parent)))
        else:
            ray.train.report(row)

    return RunContext(
        rank=rank,
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        report=report,
        log=print if rank == 0 else (lambda _: None),
    )


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """What each worker runs: the plain loop with this worker's rank and report hook."""
    from raydt.train.loop import Trainer

    config = config_from_dict(payload["config"])
    Trainer(config, Path(payload["run_dir"]), worker_context()).fit(resume=payload["resume"])


def run_with_ray(config: RunConfig, run_dir: Path, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run ``config`` through a ``TorchTrainer``; returns the last reported metrics."""
    import ray
    from ray.train import CheckpointConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=address)
    run_dir = run_dir.resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "run_dir": str(run_dir), "resume": resume},
        scaling_config=ScalingConfig(
            num_workers=config.resources.num_workers,
            use_gpu=config.resources.use_gpu,
            resources_per_worker={"CPU": config.resources.cpus_per_worker}
            | ({"GPU": 1} if config.resources.use_gpu else {}),
        ),
        run_config=RayRunConfig(
            name="ray_train",
            storage_path=str(run_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    return dict(result.metrics or {})
