"""Ray Train end to end: 2 CPU workers with DDP (gloo) on a local Ray; a killed worker
restarts the group from the last checkpoint with every evaluation logged once."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from raydt.config import config_from_dict, to_dict
from tests.helpers import eval_steps, ray_processes, tiny_config, wait_for


def _loop(payload):
    from raydt.train.loop import Trainer
    from raydt.train.worker import worker_context

    ctx = worker_context()
    trainer = Trainer(config_from_dict(payload["config"]), Path(payload["run_dir"]), ctx)
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(payload["run_dir"]) / f"rank{ctx.rank}.pt")


@pytest.mark.slow
def test_two_workers_hold_identical_weights(local_ray, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = tiny_config("resources.num_workers=2", "train.steps=8")
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"config": to_dict(config), "run_dir": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="t", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4  # rank 0 alone writes the sinks: steps 2, 4, 6, 8


@pytest.mark.slow
def test_train_command_on_ray(local_ray, tmp_path):
    from raydt.train.driver import run_training

    out = run_training(tiny_config("resources.num_workers=2", "train.steps=4"), tmp_path, use_ray=True, log=lambda _: None)
    assert out["step"] == 4 and "eval/normalized_score" in out
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_run_that_cannot_fit_fails_at_once(local_ray, tmp_path):
    from raydt.errors import ConfigError
    from raydt.train.worker import run_with_ray

    with pytest.raises(ConfigError, match="one run needs 4 workers × 1 CPU but the cluster can have 2 CPU"):
        run_with_ray(tiny_config("resources.num_workers=4"), tmp_path)


def test_permanent_failures_are_raydt_errors_and_one_line():
    from ray.train import WorkerGroupError

    from raydt.errors import ConfigError, Diverged
    from raydt.train.worker import permanent_failure
    from raydt.tune.run import error_line

    lost = WorkerGroupError("rank 1 died", {1: RuntimeError("actor died")})
    bad = WorkerGroupError("rank 0 failed", {1: RuntimeError("collective aborted"), 0: Diverged("training diverged")})
    assert permanent_failure(lost) is None  # retried from the last checkpoint
    assert isinstance(permanent_failure(bad), Diverged)
    assert Diverged("x").exit_status == 1 and ConfigError("x").exit_status == 2
    tune_text = ("Traceback (most recent call last):\n  File \"x.py\", line 3\n"
                 "raydt.errors.Diverged: training diverged: the loss is nan at step 4\n")
    assert error_line(RuntimeError(tune_text)) == "training diverged: the loss is nan at step 4"
    assert error_line(RuntimeError("Traceback:\nValueError: boom\n")) == "ValueError: boom"


@pytest.mark.ray
def test_killed_worker_restarts_from_the_last_checkpoint(local_ray, tmp_path):
    from raydt.train.driver import results_of
    from raydt.train.worker import run_with_ray

    steps, every = 600, 60
    config = tiny_config("resources.num_workers=2", f"train.steps={steps}", f"train.eval_every={every}",
                         "train.log_every=20", "resources.max_failures=2")
    result: dict = {}
    runner = threading.Thread(target=lambda: run_with_ray(config, tmp_path) or result.update(results_of(tmp_path)))
    runner.start()
    # Once two evaluations are logged (a checkpoint exists), kill one DDP worker outright.
    wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(eval_steps(tmp_path)) >= 2)
    workers = ray_processes("ray::RayTrainWorker")
    assert len(workers) == 2, workers
    killed_at = max(eval_steps(tmp_path))
    os.kill(workers[-1], signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive()

    info = json.loads((tmp_path / "run_info.json").read_text())
    print(f"killed a worker after the evaluation at step {killed_at}; the restarted group "
          f"resumed at step {info['resumed_at_step']} and finished at {result['step']}")
    assert result["step"] == steps
    assert killed_at <= info["resumed_at_step"] < steps  # a restart from a checkpoint, not from 0
    assert eval_steps(tmp_path) == list(range(every, steps + 1, every))  # each once, none missing
