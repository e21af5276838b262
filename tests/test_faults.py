"""Failures cost minutes, not runs: a killed training worker, a lost node and a lost driver
each end in a finished run whose metrics have every evaluation exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.test_train import tiny_config

pytestmark = pytest.mark.ray


def ray_processes(marker: str) -> list[int]:
    """Pids of this machine's processes whose title contains ``marker`` (Ray names its
    actors' processes ``ray::<Class>.<method>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in title:
                pids.append(int(entry.name))
    return pids


def eval_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "eval/normalized_score" in r]


def wait_for(predicate, timeout: float = 120.0, every: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(every)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    here = Path(__file__).resolve().parent
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{here}:{here.parent}"}})
    yield ray
    ray.shutdown()


def test_killed_worker_restarts_from_the_last_checkpoint(local_ray, tmp_path):
    from raydt.train.worker import run_with_ray

    steps, every = 600, 60
    config = tiny_config("resources.num_workers=2", f"train.steps={steps}", f"train.eval_every={every}",
                         "train.log_every=20", "resources.max_failures=2")
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run_with_ray(config, tmp_path)))
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
