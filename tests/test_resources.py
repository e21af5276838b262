"""Planning against what a cluster can become: node types, caps, placement, discovery."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from raydt.config import ResourcesConfig
from raydt.errors import ConfigError
from raydt.resources import (
    load_cluster_file,
    placement_strategy,
    shape_from_autoscaler_config,
    shape_from_nodes,
    trial_capacity,
)
from tests.helpers import REPO

ONE_GPU = ResourcesConfig(num_workers=1, use_gpu=True, cpus_per_worker=4)


def aws_shape(alive=None):
    config = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    return shape_from_autoscaler_config(config, "aws.yaml", alive)


def test_an_autoscaling_cluster_with_no_worker_up_is_planned_by_its_node_types():
    # Alive now: only the 0-CPU head. Judged by those nodes the trial fits nowhere...
    with pytest.raises(ConfigError, match="no node type of the cluster has that much"):
        trial_capacity(ONE_GPU, [{"CPU": 0.0}], "spec")
    # ...judged by what the cluster can become, it fits: 8 gpu_1x nodes hold one trial each,
    # 2 gpu_4x nodes four each (4 GPUs; 48 CPU // 4), within max_workers = 10 nodes.
    cap = trial_capacity(ONE_GPU, aws_shape(), "spec")
    assert cap.trials == 8 * 1 + 2 * 4
    assert dict((name, (per, nodes)) for name, per, nodes in cap.per_type) == {"gpu_1x": (1, 8), "gpu_4x": (4, 2)}


def test_the_cluster_wide_node_cap_goes_to_the_types_that_hold_most():
    config = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    config["max_workers"] = 3
    cap = trial_capacity(ONE_GPU, shape_from_autoscaler_config(config, "aws.yaml"), "spec")
    assert cap.trials == 2 * 4 + 1 * 1  # both gpu_4x nodes, then one gpu_1x


def test_a_trial_no_node_type_can_hold_is_refused_with_the_types_named():
    with pytest.raises(ConfigError, match=r"a worker needs 64 CPU.*gpu_4x \(48 CPU, 4 GPU; 0 up, at most 2\)"):
        trial_capacity(ResourcesConfig(use_gpu=True, cpus_per_worker=64), aws_shape(), "spec")
    cpu_only = {"available_node_types": {"head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 16}, "max_workers": 4}},
                "head_node_type": "head", "max_workers": 4}
    with pytest.raises(ConfigError, match="needs 4 CPU and 1 GPU"):
        trial_capacity(ONE_GPU, shape_from_autoscaler_config(cpu_only, "c.yaml"), "spec")


def test_multi_gpu_trials_stay_on_one_node_unless_the_spec_lets_them_spread():
    ddp = ResourcesConfig(num_workers=4, use_gpu=True, cpus_per_worker=4)
    assert placement_strategy(ddp) == "STRICT_PACK"
    assert placement_strategy(ResourcesConfig(num_workers=4, cpus_per_worker=1)) == "PACK"
    assert placement_strategy(ResourcesConfig(num_workers=1, use_gpu=True)) == "PACK"
    cap = trial_capacity(ddp, aws_shape(), "spec")
    assert cap.placement == "STRICT_PACK" and cap.trials == 2  # only gpu_4x nodes hold one
    assert [name for name, _, _ in cap.per_type] == ["gpu_4x"]
    spread = ResourcesConfig(num_workers=4, use_gpu=True, cpus_per_worker=4, placement="pack")
    assert trial_capacity(spread, aws_shape(), "spec").trials == (8 * 1 + 2 * 4) // 4
    one_gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}] * 4
    with pytest.raises(ConfigError, match="STRICT_PACK.*resources.placement=pack"):
        trial_capacity(ddp, one_gpu_nodes, "spec")


def test_scaling_config_asks_ray_for_the_placement():
    from raydt.config import ExperimentConfig
    from raydt.train.worker import scaling_config

    ddp = ExperimentConfig(resources=ResourcesConfig(num_workers=4, use_gpu=True, cpus_per_worker=2))
    assert scaling_config(ddp).placement_strategy == "STRICT_PACK"
    assert scaling_config(ExperimentConfig()).placement_strategy == "PACK"


def test_fixed_clusters_count_the_nodes_alive():
    shape = shape_from_nodes([{"CPU": 8.0}, {"CPU": 8.0}, {"CPU": 4.0, "GPU": 1.0}])
    assert not shape.autoscaling and sorted(t.max_nodes for t in shape.types) == [1, 2]
    assert trial_capacity(ResourcesConfig(cpus_per_worker=4), shape, "spec").trials == 5


def test_cluster_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="--cluster .*nope.yaml: no such file"):
        load_cluster_file(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\n")
    with pytest.raises(ConfigError, match="bad.yaml: its nodes. CPUs and GPUs are left for Ray"):
        load_cluster_file(str(bad))
    assert load_cluster_file(str(REPO / "clusters" / "aws.yaml")).autoscaling


def test_the_autoscaler_config_is_found_from_the_monitor_serving_this_cluster(tmp_path):
    from raydt.train.worker import autoscaler_config_path

    config = tmp_path / "autoscaling.yaml"
    config.write_text("available_node_types: {}\n")
    other = tmp_path / "other.yaml"
    other.write_text("available_node_types: {}\n")
    # Stand-ins for two clusters' monitor processes, as `ray start --autoscaling-config` runs them.
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "/site-packages/ray/autoscaler/_private/monitor.py",
                               f"--gcs-address=10.0.0.1:{port}", f"--autoscaling-config={path}"])
             for port, path in ((6391, config), (6392, other))]
    try:
        time.sleep(0.2)
        assert autoscaler_config_path("10.0.0.1:6391") == config
        assert autoscaler_config_path("10.0.0.1:6392") == other
        assert autoscaler_config_path("10.0.0.1:6393") != config
    finally:
        for proc in procs:
            proc.kill()


def test_clusters_whose_node_resources_ray_detects_are_planned_on_the_live_nodes(tmp_path):
    from raydt.resources import declares_resources

    local = {"available_node_types": {"local.cluster.node": {"resources": {}, "node_config": {}}},
             "head_node_type": "local.cluster.node"}  # what Ray makes of clusters/local.yaml
    assert not declares_resources(local)
    assert declares_resources(yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text()))
    with pytest.raises(ConfigError, match="left for Ray to detect.*--dry-run --address auto"):
        load_cluster_file(str(REPO / "clusters" / "local.yaml"))
    # Ray's defaults: max_workers 2 for the cluster, a type's own is the cluster's; the head's
    # type may launch workers of its own kind.
    shape = shape_from_autoscaler_config({"available_node_types": {"head": {"resources": {"CPU": 4}},
                                                                   "w": {"resources": {"CPU": 4}}},
                                          "head_node_type": "head"}, "c.yaml")
    assert shape.max_worker_nodes == 2 and {t.name: t.max_nodes for t in shape.types} == {"head": 3, "w": 2}
    assert trial_capacity(ResourcesConfig(cpus_per_worker=4), shape, "spec").trials == 1 + 2  # head + 2 launched


def test_cluster_file_plans_only_dry_runs_without_an_address(tmp_path):
    from raydt.tune.run import run_sweep
    from raydt.tune.spec import load_sweep

    spec = load_sweep(REPO / "tune_specs" / "size_scaling.yaml")
    aws = str(REPO / "clusters" / "aws.yaml")
    with pytest.raises(ConfigError, match="--cluster plans a sweep for a cluster file"):
        run_sweep(spec, out=str(tmp_path), cluster_file=aws)
    with pytest.raises(ConfigError, match="without --address"):
        run_sweep(spec, out=str(tmp_path), address="auto", dry_run=True, cluster_file=aws)
    assert run_sweep(spec, out=str(tmp_path), dry_run=True, cluster_file=aws).concurrency == 16
