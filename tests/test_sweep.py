"""Sweeps end to end on a local Ray: trials, reports, TensorBoard, interruption and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from raydt.sinks import read_metrics
from raydt.tune.spec import load_sweep
from tests.test_train import TINY

REPO = Path(__file__).resolve().parents[1]


def tiny_sweep(tmp_path: Path, seeds: int, steps: int = 8, extra: str = "") -> Path:
    run = "\n".join(f"{k}: {v!r}" if not isinstance(v, str) or ":" in v else f"{k}: {v}"
                    for k, v in (item.split("=", 1) for item in TINY))
    text = f"""\
extends: {REPO / 'tune_specs/runs/hopper_medium_dt.yaml'}
{run}
train.steps: {steps}
resources.cpus_per_worker: 1
search:
  train.seed: {{grid: {list(range(seeds))}}}
tune:
  searcher: grid
  storage_path: {tmp_path}
  name: tiny
{textwrap.indent(extra, '  ')}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def raydt_sweep(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-m", "raydt", "sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_tiny_sweep_runs_every_trial_and_reports(tmp_path):
    spec = tiny_sweep(tmp_path, seeds=2)
    assert load_sweep(spec).num_trials == 2
    proc = raydt_sweep(str(spec))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    sweep = tmp_path / "tiny"
    assert "2 trial(s) TERMINATED, 0 in ERROR" in out
    trials = sorted(p.name for p in sweep.glob("trial_*"))
    assert trials == ["trial_00000", "trial_00001"]  # deterministic names
    for name in trials:
        rows = read_metrics(sweep / name / "metrics.jsonl")
        assert rows[-1]["step"] == 8 and "eval/normalized_score" in rows[-1]
        assert list((sweep / name).glob("events.out.tfevents.*"))  # per-step curves and Tune's own
    assert "trials" in out and "best" in out  # the report table
    report = subprocess.run([sys.executable, "-m", "raydt", "report", str(sweep), "--csv"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert report.splitlines()[0].startswith("trials,best_mean")  # seeds aggregated into one group
    assert report.splitlines()[1].startswith("2,")
    # Where the trials' wall time went, from the timing files the sweep left.
    from bench.sweep_efficiency import PARTS, analyse

    eff = analyse(sweep)
    assert sorted(eff["trials"]) == trials
    for t in eff["trials"].values():
        assert t["train"] > 0 and t["eval"] > 0 and t["setup"] > 0
        assert sum(t[p] for p in PARTS) == pytest.approx(t["wall"])  # the parts cover the trial
    assert 0 < eff["train_and_eval_share"] < 1 and 0 <= eff["sweep_idle_share"] < 1


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    # One trial at a time, so the interruption finds one finished and one under way.
    spec = tiny_sweep(tmp_path, seeds=3, steps=40, extra="max_concurrent: 1")
    sweep = tmp_path / "tiny"
    proc = raydt_sweep(str(spec), start_new_session=True)
    deadline = time.time() + 400
    first = sweep / "trial_00000" / "metrics.jsonl"
    second_ckpt = sweep / "trial_00001" / "checkpoints" / "last.pt"
    while time.time() < deadline:
        done = first.exists() and read_metrics(first) and read_metrics(first)[-1]["step"] == 40
        if done and second_ckpt.exists():
            break
        if proc.poll() is not None:
            pytest.fail("the sweep ended before it could be interrupted: " + proc.stderr.read()[-2000:])
        time.sleep(0.5)
    else:
        pytest.fail("the sweep never reached the interruption point")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on the driver
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = first.read_text()
    from raydt.train.checkpoint import load_checkpoint

    saved_step = load_checkpoint(second_ckpt)["step"]
    second_rows = [r for r in read_metrics(sweep / "trial_00001" / "metrics.jsonl") if r["step"] <= saved_step]
    resumed = raydt_sweep(str(spec), "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "3 trial(s) TERMINATED, 0 in ERROR" in out
    assert first.read_text() == finished  # the finished trial was not run again
    for name in ("trial_00001", "trial_00002"):
        steps = [r["step"] for r in read_metrics(sweep / name / "metrics.jsonl")]
        assert steps == sorted(set(steps)) and steps[-1] == 40  # no evaluation twice, none lost
    # Trial 1 continued from its checkpoint: the rows it had logged up to it are kept as they
    # were (a restart would have rewritten them, with other timings).
    after = read_metrics(sweep / "trial_00001" / "metrics.jsonl")
    assert second_rows and [r for r in after if r["step"] <= saved_step] == second_rows


def test_sweep_refuses_to_overwrite_and_dry_run_plans(tmp_path):
    spec = tiny_sweep(tmp_path, seeds=2)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "sweep.yaml").write_text("{}")
    proc = raydt_sweep(str(spec))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "already holds a sweep" in err
    plan = subprocess.run([sys.executable, "-m", "raydt", "sweep", str(spec), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert "trials:        2" in plan and "concurrency" in plan


@pytest.mark.ray
def test_sweep_on_a_two_node_cluster_places_trials_on_both(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        # One CPU per node: two concurrent one-worker trials must land on different nodes.
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        spec = tiny_sweep(tmp_path, seeds=2)
        proc = raydt_sweep(str(spec), "--address", cluster.address)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "2 trial(s) TERMINATED" in out
        placed = {json.loads((p / "run_info.json").read_text())["ray_node"] for p in (tmp_path / "tiny").glob("trial_*")}
        assert placed == {n.node_id for n in nodes}
    finally:
        cluster.shutdown()


