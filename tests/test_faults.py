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

from raydt.sinks import read_metrics
from tests.test_sweep import raydt_sweep, tiny_sweep
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


@pytest.fixture
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


def test_lost_node_moves_the_trial_to_the_other_node(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        spec = tiny_sweep(tmp_path, seeds=1, steps=200)
        proc = raydt_sweep(str(spec), "--address", cluster.address)
        run_dir = tmp_path / "tiny" / "trial_00000"
        wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(eval_steps(run_dir)) >= 3
                 or proc.poll() is not None, timeout=300, every=0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        first = json.loads((run_dir / "run_info.json").read_text())["ray_node"]
        lost_at = max(eval_steps(run_dir))
        cluster.remove_node(next(n for n in nodes if n.node_id == first), allow_graceful=False)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "1 trial(s) TERMINATED, 0 in ERROR" in out
        info = json.loads((run_dir / "run_info.json").read_text())
        print(f"removed node {first[:8]} after the evaluation at step {lost_at}; the trial resumed "
              f"at step {info['resumed_at_step']} on node {info['ray_node'][:8]}")
        assert info["ray_node"] != first and info["ray_node"] in {n.node_id for n in nodes}
        assert 0 < info["resumed_at_step"] < 200
        assert eval_steps(run_dir) == list(range(4, 201, 4))  # tiny_sweep evaluates every 4 steps
    finally:
        cluster.shutdown()


def test_sweep_on_uri_storage_survives_losing_its_driver(tmp_path, capsys):
    from raydt.cli import main
    from raydt.train.checkpoint import load_checkpoint

    # Storage by URI (pyarrow's local filesystem stands in for a bucket); one trial at a time.
    bucket = tmp_path / "bucket"
    uri = f"file://{bucket}"
    spec = tiny_sweep(tmp_path, seeds=2, steps=80, extra="max_concurrent: 1")
    # Two DDP workers per trial: rank 1 reads the checkpoint from storage too.
    spec.write_text(spec.read_text().replace("resources.cpus_per_worker: 1",
                                             "resources.cpus_per_worker: 1\nresources.num_workers: 2"))
    proc = raydt_sweep(str(spec), "--out", uri, start_new_session=True)
    first = bucket / "tiny" / "trial_00000"
    wait_for(lambda: (first / "checkpoints" / "last.pt").exists() and len(eval_steps(first)) >= 3
             or proc.poll() is not None, timeout=300, every=0.1)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
    proc.wait()
    saved = load_checkpoint(first / "checkpoints" / "last.pt")["step"]
    assert saved < 80 and not (tmp_path / "tiny").exists()  # nothing went to the working directory

    resumed = raydt_sweep(str(spec), "--resume", "--out", uri)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "2 trial(s) TERMINATED, 0 in ERROR" in out
    info = json.loads((first / "run_info.json").read_text())
    print(f"driver killed with trial_00000's checkpoint at step {saved}; resumed at step {info['resumed_at_step']}")
    assert info["resumed_at_step"] >= saved > 0 and info["world_size"] == 2
    for name in ("trial_00000", "trial_00001"):
        assert eval_steps(bucket / "tiny" / name) == list(range(4, 81, 4))
        assert [r["step"] for r in read_metrics(bucket / "tiny" / name / "metrics.jsonl")][-1] == 80
    assert (bucket / "tiny" / "trials.json").exists() and (bucket / "tiny" / "trial_00001" / "trial_timing.json").exists()

    # Reports and analyses read the same URI; analyses write their results back there.
    capsys.readouterr()
    assert main(["report", f"{uri}/tiny", "--csv"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert len(report) == 2 and report[1].split(",")[report[0].split(",").index("trials")] == "2", report
    assert main(["analyze", "params", f"{uri}/tiny", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["post_step"] == 80 for r in rows)
    assert (first / "analysis" / "params.json").exists()


def test_a_diverged_trial_fails_once_and_the_sweep_says_so(tmp_path, capsys):
    from raydt.cli import main

    # Two trials; the second's learning rate makes its loss NaN within the first window.
    spec = tiny_sweep(tmp_path, seeds=1, steps=8)
    spec.write_text(spec.read_text().replace(
        "search:\n", "optim.warmup_steps: 0\noptim.grad_clip: 0\nresources.max_failures: 3\n"
                     "search:\n  optim.lr: {grid: [0.0001, 1.0e+30]}\n"))
    proc = raydt_sweep(str(spec))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    assert "1 trial(s) TERMINATED, 1 in ERROR" in out
    failed = [line for line in out.splitlines() if line.startswith("  trial_")]
    assert len(failed) == 1 and failed[0].startswith("  trial_00001: training diverged: the loss is "), out
    assert "restarting from the last checkpoint" not in out + err  # a permanent error ran once
    assert "1 of 2 trial(s) failed" in err
    rows = read_metrics(tmp_path / "tiny" / "trial_00000" / "metrics.jsonl")
    assert rows[-1]["step"] == 8  # the other trial finished
    capsys.readouterr()
    assert main(["report", str(tmp_path / "tiny")]) == 0
    assert "failed trial trial_00001: training diverged" in capsys.readouterr().out


def test_an_interrupted_sweep_says_how_to_continue(tmp_path):
    spec = tiny_sweep(tmp_path, seeds=2, steps=400, extra="max_concurrent: 1")
    proc = raydt_sweep(str(spec))
    first = tmp_path / "tiny" / "trial_00000"
    wait_for(lambda: (first / "metrics.jsonl").exists() and len(eval_steps(first)) >= 2 or proc.poll() is not None,
             timeout=300, every=0.1)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert f"continue with: raydt sweep {spec} --resume" in err and "sweep interrupted" in err
    assert "Tuner.restore" not in out + err
    assert load_checkpoint_step(first) > 0  # what was done is kept


def load_checkpoint_step(run_dir: Path) -> int:
    from raydt.train.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"])
