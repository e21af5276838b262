"""Evaluating a saved run: rebuild the model from its checkpoint alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from raydt.errors import RaydtError
from raydt.eval.protocol import EvalTask, evaluate
from raydt.model.dt import ModelArgs, rebuild_model
from raydt.train.checkpoint import load_checkpoint


def load_model(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """The model stored in ``checkpoint`` (a file or run directory) and the raw payload."""
    # On the CPU: the payload's statistics feed NumPy; only the model goes to ``device``.
    payload = load_checkpoint(checkpoint)
    model = rebuild_model(ModelArgs(**payload["model_args"]))
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), payload


def evaluate_checkpoint(
    checkpoint: Path,
    episodes: int | None = None,
    targets: Sequence[float] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    if episodes is not None and episodes < 1:
        raise RaydtError(f"--episodes {episodes}: give a positive number of episodes (default: the run's "
                         "eval.episodes)")
    model, payload = load_model(checkpoint, device)
    episodes = episodes if episodes is not None else int(payload["config"]["eval"]["episodes"])
    task = EvalTask.from_checkpoint(payload, tuple(targets) if targets else None)
    log(f"evaluating step {payload['step']} on {task.env_id}: {episodes} episodes × targets {list(task.targets)}")
    metrics, _ = evaluate(model, task, episodes, seed, device)
    return {"step": int(payload["step"]), **metrics}


def evaluate_hf(
    source: str,
    episodes: int | None = None,
    targets: Sequence[float] | None = None,
    seed: int = 0,
    dataset: str | None = None,
    env_id: str | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate a transformers ``DecisionTransformerModel`` (a directory or ``hf-dt:`` hub
    id) with raydt's evaluator. Its state statistics, reward scale, environment and targets
    come from its ``raydt_eval.json`` when present, else from ``dataset`` (and ``env_id``,
    the task's default targets); the log says which."""
    import numpy as np

    from raydt.hf_dt import SIDECAR, from_hf

    if episodes is not None and episodes < 1:
        raise RaydtError(f"--episodes {episodes}: give a positive number of episodes (default 10)")
    model, sidecar = from_hf(source)
    if sidecar is not None:
        task = EvalTask(env_id or sidecar["env_id"], tuple(targets or sidecar["target_returns"]),
                        np.asarray(sidecar["state_mean"], np.float32), np.asarray(sidecar["state_std"], np.float32),
                        float(sidecar["reward_scale"]), sidecar.get("max_steps"))
        log(f"state statistics, reward scale and targets from {SIDECAR}")
    else:
        if dataset is None:
            raise RaydtError(f"{source} has no {SIDECAR}: give --dataset URI (its state mean and std normalise "
                             "the states, as in training) and, if the dataset does not record it, --env ID")
        from raydt.data.sources import load_dataset
        from raydt.data.tasks import task_from_env_id

        traj = load_dataset(dataset, log=log)
        env = env_id or traj.env_id
        scorer = task_from_env_id(env or "")
        if not env or (not targets and scorer is None):
            raise RaydtError(f"{dataset} names no evaluation environment with default targets: give --env and --target")
        mean, std = traj.state_stats()
        # The original DT's (and HF's examples') reward scale for MuJoCo: returns-to-go / 1000.
        task = EvalTask(env, tuple(targets or scorer.target_returns), mean, std, 1e-3)
        log(f"no {SIDECAR}: state statistics from {dataset}, reward scale 1e-3, environment {env}")
    episodes = episodes or 10
    log(f"evaluating {source} on {task.env_id}: {episodes} episodes × targets {list(task.targets)}")
    metrics, _ = evaluate(model.to(device), task, episodes, seed, device)
    return {"model": source, **metrics}
