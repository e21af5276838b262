"""The evaluation protocol: every target return, the same episode seeds, named metrics.

:class:`EvalTask` is what evaluating a policy needs besides the model (checkpoints carry
it, see :meth:`EvalTask.from_checkpoint`); :func:`evaluate` runs it with the batched
rollouts of :mod:`raydt.eval.rollout` (MuJoCo) or :mod:`raydt.eval.atari_rollout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raydt.data.atari import game_from_env_id
from raydt.data.tasks import task_from_env_id
from raydt.eval.atari_rollout import atari_rollout
from raydt.eval.rollout import RolloutResult, rollout
from raydt.model.dt import DecisionTransformer


@dataclass(frozen=True)
class EvalTask:
    """Where and how a policy is evaluated."""

    env_id: str
    """Gymnasium id of the evaluation environment (Hopper-v4, ALE/Breakout-v5, ...)."""
    targets: tuple[float, ...]
    """Target returns to condition on, unscaled; the first gives the headline metrics."""
    state_mean: np.ndarray
    """(obs_dim,) state normalisation the model was trained with."""
    state_std: np.ndarray
    """(obs_dim,) state normalisation the model was trained with."""
    reward_scale: float
    """Returns-to-go are multiplied by this before the model sees them."""
    max_steps: int | None = None
    """Episode cap; None: the environment's own limit."""

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any], targets: tuple[float, ...] | None = None) -> EvalTask:
        """The task a checkpoint was evaluated on (``targets`` replaces its targets)."""
        return cls(
            str(payload["env_id"]), tuple(float(t) for t in (targets or payload["target_returns"])),
            payload["state_mean"].numpy(), payload["state_std"].numpy(), float(payload["reward_scale"]),
            (payload.get("config") or {}).get("eval", {}).get("max_steps"),
        )


def evaluate(
    model: DecisionTransformer, task: EvalTask, episodes: int, seed: int, device: torch.device | str = "cpu",
) -> tuple[dict[str, float], list[RolloutResult]]:
    """Evaluate every target on the same episode seeds; metrics named as in docs/metrics.md."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    env_id, max_steps = task.env_id, task.max_steps
    seeds = [seed * 100_003 + i for i in range(episodes)]
    scorer = task_from_env_id(env_id) or game_from_env_id(env_id)  # D4RL- or gamer-normalized
    metrics: dict[str, float] = {}
    results = []
    for i, target in enumerate(task.targets):
        if model.args.frame_stack:
            res = atari_rollout(model, env_id, target, seeds, task.reward_scale, device, max_steps=max_steps)
        else:
            res = rollout(model, env_id, target, seeds, task.state_mean, task.state_std, task.reward_scale, device,
                          max_steps)
        results.append(res)
        prefix = f"eval/rtg{target:g}/"
        metrics[prefix + "return_mean"] = float(res.returns.mean())
        metrics[prefix + "return_std"] = float(res.returns.std())
        metrics[prefix + "length_mean"] = float(res.lengths.mean())
        if scorer is not None:
            scores = scorer.normalized_score(res.returns)
            metrics[prefix + "normalized_score"] = float(scores.mean())
            metrics[prefix + "normalized_score_std"] = float(scores.std())
        if i == 0:  # the headline numbers follow the first target
            metrics["eval/return_mean"] = metrics[prefix + "return_mean"]
            metrics["eval/return_std"] = metrics[prefix + "return_std"]
            if scorer is not None:
                metrics["eval/normalized_score"] = metrics[prefix + "normalized_score"]
    return metrics, results
