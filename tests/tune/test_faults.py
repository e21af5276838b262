"""Failures cost minutes, not runs: a lost node, a lost driver, a diverged trial and an
interrupted sweep each end in a finished sweep or a clear message, with every evaluation logged once."""

from __future__ import annotations

import json
import os
import signal

import pytest

from raydt.sinks import read_metrics
from tests.helpers import eval_steps, raydt_sweep, tiny_sweep, wait_for

pytestmark = pytest.mark.ray


def test_trials_spread_over_nodes_and_a_lost_node_moves_its_trial(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        # One CPU per node: two concurrent one-worker trials must land on different nodes,
        # and the third node is where the trial of a lost node can go.
        nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        spec = tiny_sweep(tmp_path, seeds=2, steps=120)
        proc = raydt_sweep(str(spec), "--address", cluster.address)
        runs = [tmp_path / "tiny" / f"trial_0000{i}" for i in range(2)]
        wait_for(lambda: all((r / "metrics.jsonl").exists() and len(eval_steps(r)) >= 3 for r in runs)
                 or proc.poll() is not None, timeout=300, every=0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        placed = [json.loads((r / "run_info.json").read_text())["ray_node"] for r in runs]
        assert len(set(placed)) == 2 and set(placed) <= {n.node_id for n in nodes}
        lost_at = max(eval_steps(runs[0]))
        cluster.remove_node(next(n for n in nodes if n.node_id == placed[0]), allow_graceful=False)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "2 trial(s) TERMINATED, 0 in ERROR" in out
        info = json.loads((runs[0] / "run_info.json").read_text())
        print(f"removed node {placed[0][:8]} after the evaluation at step {lost_at}; the trial resumed "
              f"at step {info['resumed_at_step']} on node {info['ray_node'][:8]}")
        assert info["ray_node"] != placed[0] and info["ray_node"] in {n.node_id for n in nodes}
        assert 0 < info["resumed_at_step"] < 120
        for run in runs:  # tiny_sweep evaluates every 4 steps: each evaluation once, none lost
            assert eval_steps(run) == list(range(4, 121, 4))
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
    spec.write_text(spec.read_text().replace("optim.warmup_steps: 4", "optim.warmup_steps: 0").replace(
        "search:\n", "optim.grad_clip: 0\nresources.max_failures: 3\n"
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
    assert "run them again with: " in err and "--resume --retry-failed" in err
    # --resume leaves a failed trial failed, and says how to run it again; nothing trains.
    proc = raydt_sweep(str(spec), "--resume")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "1 trial(s) failed in an earlier session and stay failed; add --retry-failed" in out + err
    assert "backbone random" not in out + err
    # --retry-failed runs it again (here it diverges again: the same permanent error, once).
    proc = raydt_sweep(str(spec), "--resume", "--retry-failed")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "backbone random" in out + err and "stay failed" not in out + err
    assert "trial_00001: training diverged" in out
