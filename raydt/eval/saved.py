"""Evaluating a saved run: rebuild the model from its checkpoint alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from raydt import storage
from raydt.data.atari import game_from_env_id
from raydt.data.tasks import make_env, task_from_env_id
from raydt.errors import ConfigError, RaydtError
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


def check_fits(model: Any, env_id: str, what: str) -> None:
    """Refuse, naming ``what`` (an option), an environment whose states or actions are not
    the shape the model was trained on."""
    args = model.args
    if args.frame_stack:
        game = game_from_env_id(env_id)
        if game is None:
            raise ConfigError(f"{what} {env_id}: the model plays Atari from frames; give an ALE/<Game>-v5 id")
        if game.num_actions != args.act_dim:
            raise ConfigError(f"{what} {env_id}: the game has {game.num_actions} actions, the model {args.act_dim}; "
                              "evaluate on the game the model was trained for")
        return
    task = task_from_env_id(env_id)
    if task is not None:
        dims = (task.obs_dim, task.act_dim)
    else:
        try:
            env = make_env(env_id)
        except Exception as exc:  # gymnasium raises several types for unknown or broken ids
            raise ConfigError(f"{what} {env_id}: cannot make this environment ({type(exc).__name__}: {exc})") from None
        dims = (int(env.observation_space.shape[0]), int(env.action_space.shape[0]))
        env.close()
    if dims != (args.obs_dim, args.act_dim):
        raise ConfigError(f"{what} {env_id}: its states and actions are {dims[0]} and {dims[1]} wide, the model's "
                          f"{args.obs_dim} and {args.act_dim}; evaluate on the environment the model was trained for")


def evaluate_checkpoint(
    checkpoint: Path | str,
    episodes: int | None = None,
    targets: Sequence[float] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
    env_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate a saved run (a run directory, local or at a storage URI, or a .pt file);
    ``env_id`` replaces the environment it was evaluated on (same state and action sizes)."""
    if episodes is not None and episodes < 1:
        raise RaydtError(f"--episodes {episodes}: give a positive number of episodes (default: the run's "
                         "eval.episodes)")
    if storage.is_uri(checkpoint):  # a run written to s3://, gs://, file:// …: read a local copy
        checkpoint = storage.local_view(str(checkpoint), checkpoints=True)
    model, payload = load_model(Path(checkpoint), device)
    episodes = episodes if episodes is not None else int(payload["config"]["eval"]["episodes"])
    task = EvalTask.from_checkpoint(payload, tuple(targets) if targets else None)
    if env_id and env_id != task.env_id:
        check_fits(model, env_id, "--env")
        task = dataclasses.replace(task, env_id=env_id)
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
        if not model.args.frame_stack and (traj.obs_dim, traj.act_dim) != (model.args.obs_dim, model.args.act_dim):
            raise ConfigError(f"--dataset {dataset}: its states and actions are {traj.obs_dim} and {traj.act_dim} "
                              f"wide, the model's {model.args.obs_dim} and {model.args.act_dim}; give the dataset "
                              "the model was trained on")
        env = env_id or traj.env_id
        scorer = task_from_env_id(env or "")
        if not env or (not targets and scorer is None):
            raise RaydtError(f"{dataset} names no evaluation environment with default targets: give --env and --target")
        mean, std = traj.state_stats()
        # The original DT's (and HF's examples') reward scale for MuJoCo: returns-to-go / 1000.
        task = EvalTask(env, tuple(targets or scorer.target_returns), mean, std, 1e-3)
        log(f"no {SIDECAR}: state statistics from {dataset}, reward scale 1e-3, environment {env}")
    if env_id:
        check_fits(model, task.env_id, "--env")
    episodes = episodes or 10
    log(f"evaluating {source} on {task.env_id}: {episodes} episodes × targets {list(task.targets)}")
    metrics, _ = evaluate(model.to(device), task, episodes, seed, device)
    return {"model": source, **metrics}
