"""Evaluating a saved run: rebuild the model from its checkpoint alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from raydt.errors import RaydtError
from raydt.eval.protocol import EvalTask, evaluate
from raydt.model.build import rebuild_model
from raydt.model.dt import ModelArgs
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
