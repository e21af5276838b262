"""A sweep on an autoscaling cluster shaped like clusters/aws.yaml: a 0-CPU head, worker
types at min_workers 0. Nothing can run when the sweep starts; the trials' pending
placement groups make the autoscaler launch the nodes they run on (Ray's fake multi-node
provider: each "node" is a local raylet the autoscaler starts). Its head type declares no
resources, as Ray's example cluster files leave them: the live head node tells raydt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import REPO, kill_processes_with_env, ray_temp_dir, raydt_sweep, tiny_sweep

pytestmark = pytest.mark.ray

HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the fake provider's head


def fake_cluster_config() -> dict:
    """A complete config for the fake multi-node provider (the wheel lacks its example)."""
    empty: list = []
    return {
        "cluster_name": "raydt-fake",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        # Fake nodes are local processes: no SSH updater, no launch-config hash to compare.
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            # `resources: {}` as in Ray's own examples; `ray start --num-cpus=0` makes it 0 CPU.
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            "cpu_1x": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
            # What size_scaling.yaml's dry run plans with; CPU trials may land here too.
            "gpu_1x": {"resources": {"CPU": 8, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": empty, "file_mounts_sync_continuously": False,
        "rsync_exclude": empty, "rsync_filter": empty, "initialization_commands": empty,
        "setup_commands": empty, "head_setup_commands": empty, "worker_setup_commands": empty,
        "head_start_ray_commands": empty, "worker_start_ray_commands": empty,
    }


@pytest.fixture
def autoscaling_cluster(tmp_path):
    config = tmp_path / "fake_cluster.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config()))
    # Every process of this cluster (head, autoscaler, the nodes it launches, their workers)
    # inherits the tag, so stopping it spares any other Ray on the machine. (The fake provider's
    # nodes join the head at Ray's default port, so that port must be free.)
    tag = ("RAYDT_TEST_CLUSTER", str(tmp_path))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", **dict([tag]))
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    started = subprocess.run([*ray, "start", "--head", "--num-cpus=0", "--include-dashboard=true",
                              f"--autoscaling-config={config}"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield ray_temp_dir() / "session_latest" / "logs"
    finally:
        kill_processes_with_env(*tag)
        # As `ray stop` does: a plain ray.init() must not try to join the cluster that was here.
        (ray_temp_dir() / "ray_current_cluster").unlink(missing_ok=True)


def test_sweep_grows_the_cluster_from_a_head_that_declares_nothing(autoscaling_cluster, tmp_path):
    plan = subprocess.run([sys.executable, "-m", "raydt", "sweep", "tune_specs/size_scaling.yaml",
                           "--address", "auto", "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "autoscaling, node types from the autoscaler config" in plan.stdout
    assert "ray.head.default (0 CPU, filled in from its live node; head)" in plan.stdout
    assert "gpu_1x: 1 trial(s) per node, up to 1 node(s)" in plan.stdout  # 8 CPU, 1 GPU holds one
    assert "concurrency:   1 trial(s) at a time" in plan.stdout

    spec = tiny_sweep(tmp_path, seeds=2)
    started = time.time()
    proc = raydt_sweep(str(spec), "--address", "auto")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    assert "cpu_1x: 1 trial(s) per node, up to 2 node(s)" in err  # the plan, logged at the start
    assert "concurrency:   2 trial(s) at a time" in err
    assert "2 trial(s) TERMINATED, 0 in ERROR" in out
    sweep = tmp_path / "tiny"
    nodes = set()
    for trial in ("trial_00000", "trial_00001"):
        rows = [json.loads(line) for line in (sweep / trial / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 8
        info = json.loads((sweep / trial / "run_info.json").read_text())
        assert info["ray_node"] != HEAD_ID  # the head has no CPU: a launched node ran it
        nodes.add(info["ray_node"])
    launches = [line for p in sorted(autoscaling_cluster.glob("monitor.*"))
                for line in p.read_text(errors="replace").splitlines() if "Adding" in line]
    assert any("of type cpu_1x" in line for line in launches), launches
    print(f"autoscaling sweep: {time.time() - started:.0f} s, trials ran on {len(nodes)} launched node(s)")
    print("\n".join(launches))
