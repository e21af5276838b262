"""Ray Train end to end: 2 CPU workers with DDP (gloo) on a local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raydt.config import config_from_dict, to_dict
from tests.test_train import tiny_config


def _loop(payload):
    from raydt.train.loop import Trainer
    from raydt.train.worker import worker_context

    ctx = worker_context()
    trainer = Trainer(config_from_dict(payload["config"]), Path(payload["run_dir"]), ctx)
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(payload["run_dir"]) / f"rank{ctx.rank}.pt")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    # Workers import this test module by name to find the training function.
    here = Path(__file__).resolve().parent
    paths = f"{here}:{here.parent}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": paths}})
    yield ray
    ray.shutdown()


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
