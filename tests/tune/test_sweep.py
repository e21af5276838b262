"""Sweeps end to end on a local Ray: trials, reports, TensorBoard, interruption and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from raydt.sinks import read_metrics
from tests.helpers import REPO, raydt_sweep, tiny_sweep


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
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the driver's whole process group
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    # It says what happened and how to go on, in raydt's words, not Tune's.
    assert proc.returncode == 130, err[-3000:]
    assert "sweep interrupted with " in err and " trial(s) unfinished" in err, err[-3000:]
    assert f"continue with: raydt sweep {spec} --resume" in err
    assert "Tuner.restore" not in out + err
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
