"""Evaluating a saved run: rebuild the model from its checkpoint alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from raydt.eval.rollout import evaluate
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
    model, payload = load_model(checkpoint, device)
    episodes = episodes or int(payload["config"]["eval"]["episodes"])
    targets = list(targets or payload["target_returns"])
    log(f"evaluating step {payload['step']} on {payload['env_id']}: {episodes} episodes × targets {targets}")
    metrics, _ = evaluate(
        model, payload["env_id"], targets, episodes, seed,
        payload["state_mean"].numpy(), payload["state_std"].numpy(), float(payload["reward_scale"]), device,
        max_steps=payload["config"]["eval"].get("max_steps"),
    )
    return {"step": int(payload["step"]), **metrics}
