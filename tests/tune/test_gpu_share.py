"""Several small trials on one GPU: a local Ray node that declares one GPU it does not have
(`ray start --num-gpus 1`; RAYDT_FORCE_CPU makes the trials train on the CPU), four trials
asking for a quarter of it each, all running at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import (
    REPO,
    eval_steps,
    free_port,
    kill_processes_under,
    kill_processes_with_env,
    raydt,
    tiny_sweep,
)

pytestmark = pytest.mark.ray


def test_four_quarter_gpu_trials_share_one_gpu(tmp_path):
    tag = ("RAYDT_TEST_CLUSTER", str(tmp_path))
    env = dict(os.environ, RAYDT_FORCE_CPU="1", RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), **dict([tag]))
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    started = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=4",
         "--num-gpus=1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, cwd=tmp_path, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        spec = tiny_sweep(tmp_path, seeds=4, steps=40)
        spec.write_text(spec.read_text().replace(
            "resources.cpus_per_worker: 1", "resources.cpus_per_worker: 1\nresources.use_gpu: true\n"
                                            "resources.gpus_per_worker: 0.25"))
        run_env = {"RAYDT_FORCE_CPU": "1", "RAY_AUTH_MODE": "disabled"}
        plan = raydt("sweep", str(spec), "--dry-run", "--address", f"127.0.0.1:{port}", env=run_env).stdout
        assert "1 worker(s) × 1 CPU + 0.25 GPU (4 trials per GPU)" in plan
        assert "concurrency:   4 trial(s) at a time" in plan
        out = raydt("sweep", str(spec), "--address", f"127.0.0.1:{port}", env=run_env, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "4 trial(s) TERMINATED, 0 in ERROR" in out.stdout
        trials = sorted((tmp_path / "tiny").glob("trial_*"))
        spans = [json.loads((t / "trial_timing.json").read_text()) for t in trials]
        assert len(spans) == 4 and max(s["started"] for s in spans) < min(s["finished"] for s in spans)  # all at once
        for trial in trials:
            assert eval_steps(trial) == list(range(4, 41, 4))
    finally:
        kill_processes_with_env(*tag)
        kill_processes_under(tmp_path)  # Ray's agents drop the tag
