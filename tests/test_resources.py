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


def aws_config() -> dict:
    return yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())


def aws_shape():
    return shape_from_autoscaler_config(aws_config(), "aws.yaml")


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
    bad.write_text("cluster_name: x\nprovider: {type: aws}\n")
    with pytest.raises(ConfigError, match="bad.yaml: no available_node_types.*clusters/aws.yaml"):
        load_cluster_file(str(bad))
    bad.write_text("provider: {type: aws}\navailable_node_types: {w: {resources: {CPU: eight}}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: available_node_types.w.resources.CPU is 'eight'; give a number"):
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
    from raydt.resources import is_local_provider

    # The provider decides, not what the node types declare: Ray's fake multi-node provider
    # autoscales, and so does an AWS file whose types all leave resources to Ray.
    assert is_local_provider(yaml.safe_load((REPO / "clusters" / "local.yaml").read_text()))
    assert not is_local_provider(aws_config())
    assert not is_local_provider({"provider": {"type": "fake_multinode"}, "available_node_types": {"h": {"resources": {}}}})
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


# --------------------------------------------------------------------------------------
# Cluster files as Ray's examples write them: `resources: {}` for Ray to fill


def as_ray_writes_it(**types: str | None) -> dict:
    """clusters/aws.yaml with the named node types' resources left for Ray (``resources: {}``),
    each of the instance type given (None: a node_config that names none)."""
    config = aws_config()
    for name, instance in types.items():
        config["available_node_types"][name].update(
            resources={}, node_config={} if instance is None else {"InstanceType": instance})
    return config


def sizes(shape) -> dict:
    return {t.name: (t.cpus, t.gpus, t.guessed) for t in shape.types}


def test_a_head_that_declares_nothing_does_not_stop_the_plan(tmp_path):
    # An unknown head: 0 for trials, and the GPU workers plan as before (8 + 2 × 4 trials).
    shape = shape_from_autoscaler_config(as_ray_writes_it(head=None), "aws.yaml")
    assert shape.autoscaling and sizes(shape)["head"] == (0.0, 0.0, True)
    assert "head (size unknown" in next(t.describe() for t in shape.types if t.head)
    assert trial_capacity(ONE_GPU, shape, "spec").trials == 16
    # A head of a known instance type has its size, as `ray up` fills it: an m5.2xlarge's
    # 8 vCPUs take two 4-CPU workers, besides 8 gpu_1x nodes × 2 and 2 gpu_4x × 12.
    shape = shape_from_autoscaler_config(as_ray_writes_it(head="m5.2xlarge"), "aws.yaml")
    assert sizes(shape)["head"] == (8.0, 0.0, False)
    assert trial_capacity(ResourcesConfig(cpus_per_worker=4), shape, "spec").trials == 2 + 8 * 2 + 2 * 12
    # The same file through --cluster: accepted, and the sweep planned on the GPU workers.
    from raydt.tune.run import run_sweep
    from raydt.tune.spec import load_sweep

    file = tmp_path / "head_empty.yaml"
    file.write_text(yaml.safe_dump(as_ray_writes_it(head=None)))
    plan = run_sweep(load_sweep(REPO / "tune_specs" / "size_scaling.yaml"), out=str(tmp_path), dry_run=True,
                     cluster_file=str(file))
    assert plan.concurrency == 16 and plan.cluster.autoscaling


def test_worker_types_that_leave_resources_to_ray_get_their_instance_types_size(tmp_path):
    file = tmp_path / "ray_style.yaml"
    file.write_text(yaml.safe_dump(as_ray_writes_it(head="m5.2xlarge", gpu_1x="g5.2xlarge", gpu_4x="g5.12xlarge")))
    shape = load_cluster_file(str(file))
    assert sizes(shape) == {"head": (8.0, 0.0, False), "gpu_1x": (8.0, 1.0, False), "gpu_4x": (48.0, 4.0, False)}
    assert "gpu_1x (8 CPU, 1 GPU, filled in from instance type g5.2xlarge; 0 up, at most 8)" in [
        t.describe() for t in shape.types]
    # The numbers clusters/aws.yaml declares by hand: 8 × 1 + 2 × 4 one-GPU trials, 2 DDP ones.
    assert trial_capacity(ONE_GPU, shape, "spec").trials == 16
    assert trial_capacity(ResourcesConfig(num_workers=4, use_gpu=True, cpus_per_worker=4), shape, "spec").trials == 2
    # Each count a type leaves out is filled on its own: a declared CPU count stays.
    config = as_ray_writes_it(gpu_1x="g5.2xlarge")
    config["available_node_types"]["gpu_1x"]["resources"] = {"CPU": 6}
    assert sizes(shape_from_autoscaler_config(config, "c.yaml"))["gpu_1x"] == (6.0, 1.0, False)


def test_gcp_and_azure_instance_types_are_known_too():
    from raydt.resources import instance_size

    # n1 machines get their GPUs from guestAccelerators; a2 and g2 have theirs built in.
    n1 = {"machineType": "zones/us-west1-b/machineTypes/n1-standard-8",
          "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]}
    assert instance_size(n1)[1:] == (8.0, 2.0)
    assert instance_size({"machineType": "n1-standard-8"})[1:] == (8.0, 0.0)
    assert instance_size({"machineType": "a2-highgpu-1g"})[1:] == (12.0, 1.0)
    assert instance_size({"machineType": "g2-standard-24"})[1:] == (24.0, 2.0)
    assert instance_size({"azure_arm_parameters": {"vmSize": "Standard_NC24ads_A100_v4"}})[1:] == (24.0, 1.0)
    assert instance_size({"azure_arm_parameters": {"vmSize": "Standard_D2s_v3"}})[1:] == (2.0, 0.0)
    for aws, size in {"g5.xlarge": (4, 1), "g5.48xlarge": (192, 8), "g4dn.12xlarge": (48, 4), "g6.xlarge": (4, 1),
                      "p3.2xlarge": (8, 1), "p3.16xlarge": (64, 8), "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
                      "m5.large": (2, 0), "c5.9xlarge": (36, 0), "c5.18xlarge": (72, 0)}.items():
        assert instance_size({"InstanceType": aws})[1:] == size, aws
    assert instance_size({"InstanceType": "x9z.huge"}) is None and instance_size({}) is None


def test_an_unknown_instance_type_is_planned_as_guessed_and_the_plan_says_so(tmp_path):
    from raydt.tune.run import run_sweep
    from raydt.tune.spec import load_sweep

    file = tmp_path / "guess.yaml"
    file.write_text(yaml.safe_dump(as_ray_writes_it(head=None, gpu_1x="zz9.4xlarge")))
    shape = load_cluster_file(str(file))
    assert sizes(shape)["gpu_1x"] == (0.0, 0.0, True) and sizes(shape)["gpu_4x"] == (48.0, 4.0, False)
    # Assumed to hold one trial per node: 2 gpu_4x nodes × 4, then the 8 guessed nodes × 1.
    cap = trial_capacity(ONE_GPU, shape, "spec")
    assert cap.trials == 2 * 4 + 8 and cap.guessed == ("gpu_1x",)
    # A DDP trial too (its STRICT_PACK group is the one trial a guessed node holds).
    assert trial_capacity(ResourcesConfig(num_workers=4, use_gpu=True, cpus_per_worker=4), shape, "spec").trials == 2 + 8
    lines = run_sweep(load_sweep(REPO / "tune_specs" / "size_scaling.yaml"), out=str(tmp_path), dry_run=True,
                      cluster_file=str(file)).lines()
    text = "\n".join(lines)
    assert "gpu_1x (size unknown (no resources.CPU, no live node, no known instance type): guessed to hold " \
           "one trial per node; declare its resources to plan exactly; 0 up, at most 8)" in text
    assert "gpu_1x: 1 trial(s) per node (size guessed), up to 8 node(s)" in text
    assert "concurrency:   16 trial(s) at a time" in text


def test_a_live_node_of_a_type_fills_that_type():
    from raydt.resources import live_nodes_by_type

    config = as_ray_writes_it(head=None, gpu_1x="zz9.4xlarge")
    nodes = [
        {"Resources": {"CPU": 4.0, "node:__internal_head__": 1.0}},  # the head, by Ray's head marker
        # Launched by autoscaler v2: the node type is its ray.io/node-group label.
        {"Resources": {"CPU": 16.0, "GPU": 1.0}, "Labels": {"ray.io/node-group": "gpu_1x"}},
        {"Resources": {"CPU": 48.0, "GPU": 4.0}},  # no label (autoscaler v1): matched by size
        {"Resources": {"CPU": 3.0}},  # no type of that size: left out
    ]
    live = live_nodes_by_type(config, nodes, "c.yaml")
    assert live == {"head": [{"CPU": 4.0, "GPU": 0.0}], "gpu_1x": [{"CPU": 16.0, "GPU": 1.0}],
                    "gpu_4x": [{"CPU": 48.0, "GPU": 4.0}]}
    shape = shape_from_autoscaler_config(config, "c.yaml", live)
    assert sizes(shape) == {"head": (4.0, 0.0, False), "gpu_1x": (16.0, 1.0, False), "gpu_4x": (48.0, 4.0, False)}
    assert {t.name: t.alive for t in shape.types} == {"head": 1, "gpu_1x": 1, "gpu_4x": 1}
    assert "gpu_1x (16 CPU, 1 GPU, filled in from its live node; 1 up, at most 8)" in [t.describe() for t in shape.types]
    # The head's 4 CPUs take one 4-CPU GPU-less worker; 8 gpu_1x × 4 and 2 gpu_4x × 12 more.
    assert trial_capacity(ResourcesConfig(cpus_per_worker=4), shape, "spec").trials == 1 + 8 * 4 + 2 * 12
    # What a type declares is kept: a live node fills only what it leaves out.
    assert sizes(aws_shape())["head"] == (0.0, 0.0, False)


def test_the_connected_clusters_shape_follows_its_provider(tmp_path, monkeypatch):
    import ray
    import ray._private.state

    from raydt.train import worker

    head = {"Alive": True, "Resources": {"CPU": 0.0, "node:__internal_head__": 1.0}}
    cpu = {"Alive": True, "Resources": {"CPU": 2.0}}
    gone = {"Alive": False, "Resources": {"CPU": 2.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [head, cpu, cpu, gone])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"gcs_address": "10.0.0.1:6379"}))
    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: None)
    file = tmp_path / "bootstrap.yaml"
    monkeypatch.setattr(worker, "autoscaler_config_path", lambda address: file)
    # The local provider: the nodes alive now, whatever the file declares.
    file.write_text(yaml.safe_dump({"provider": {"type": "local", "head_ip": "h", "worker_ips": ["w"]},
                                    "available_node_types": {"local.cluster.node": {"resources": {}}},
                                    "head_node_type": "local.cluster.node"}))
    shape = worker.cluster_shape()
    assert not shape.autoscaling and {t.name: (t.cpus, t.alive) for t in shape.types} == {"0cpu": (0.0, 1), "2cpu": (2.0, 2)}
    assert "the local provider" in shape.source
    # An autoscaling provider whose head declares nothing (as the ray-tier test's cluster):
    # the node types, the head filled from its live node.
    file.write_text(yaml.safe_dump({"provider": {"type": "fake_multinode"}, "max_workers": 3,
                                    "available_node_types": {"head": {"resources": {}, "max_workers": 0},
                                                             "cpu_2x": {"resources": {"CPU": 2}, "max_workers": 3}},
                                    "head_node_type": "head"}))
    shape = worker.cluster_shape()
    assert shape.autoscaling and sizes(shape) == {"head": (0.0, 0.0, False), "cpu_2x": (2.0, 0.0, False)}
    assert {t.name: t.alive for t in shape.types} == {"head": 1, "cpu_2x": 2}
    assert trial_capacity(ResourcesConfig(cpus_per_worker=1), shape, "spec").trials == 3 * 2


@pytest.mark.parametrize("share, one, four", [(0.25, 4, 16), (0.5, 2, 8), (1.0, 1, 4),
                                              (0.3, 3, 12),  # 3 per GPU: a share never straddles two GPUs
                                              (0.1, 8, 40)])  # 10 per GPU, but g5.2xlarge has 8 vCPUs
def test_fractional_gpus_put_several_trials_on_each_gpu(share, one, four):
    res = ResourcesConfig(use_gpu=True, cpus_per_worker=1, gpus_per_worker=share)
    cap = trial_capacity(res, aws_shape(), "spec")
    # g5.2xlarge (gpu_1x): 1 GPU, 8 vCPUs; g5.12xlarge (gpu_4x): 4 GPUs, 48 vCPUs
    assert dict((name, per) for name, per, _ in cap.per_type) == {"gpu_1x": one, "gpu_4x": four}
    assert cap.trials == 8 * one + 2 * four  # at most 8 and 2 nodes of them


def test_cpus_still_bound_a_shared_gpu_and_ddp_keeps_whole_gpus():
    from raydt.resources import gpus_per_worker

    res = ResourcesConfig(use_gpu=True, cpus_per_worker=4, gpus_per_worker=0.25)
    cap = trial_capacity(res, aws_shape(), "spec")
    assert dict((n, p) for n, p, _ in cap.per_type) == {"gpu_1x": 2, "gpu_4x": 12}  # 8/4 CPUs; 48/4 CPUs
    assert gpus_per_worker(ResourcesConfig(gpus_per_worker=0.25)) == 0.0  # use_gpu off: no GPU at all
    with pytest.raises(ConfigError, match="multi-worker \\(DDP\\) run keeps whole GPUs"):
        trial_capacity(ResourcesConfig(use_gpu=True, num_workers=2, gpus_per_worker=0.5), aws_shape(), "spec")


def test_a_gpu_share_is_checked_as_a_config_value():
    from tests.helpers import tiny_config

    for bad in ("0", "1.5", "-0.25"):
        with pytest.raises(ConfigError, match="resources.gpus_per_worker.*0 < share <= 1"):
            tiny_config(f"resources.gpus_per_worker={bad}")


def test_gpu_share_auto_takes_the_measured_share_of_the_models_size(monkeypatch):
    from raydt import resources
    from tests.helpers import tiny_config

    measured = {"dt": 0.25, "3m": 0.5}
    auto = tiny_config("resources.gpus_per_worker=auto", "resources.use_gpu=true")
    assert auto.resources.gpus_per_worker == "auto"
    assert resources.gpu_share(auto, measured) == 0.25  # model.size dt
    assert resources.gpu_share(tiny_config("resources.gpus_per_worker=auto", "model.size=18m"), measured) == 1.0
    assert resources.gpu_share(tiny_config("resources.gpus_per_worker=auto", "model.backbone=gpt2"), measured) == 1.0
    ddp = tiny_config("resources.gpus_per_worker=auto", "resources.num_workers=2", "train.batch_size=8")
    assert resources.gpu_share(ddp, measured) == 1.0  # DDP keeps whole GPUs
    assert resources.gpu_share(auto, {}) == 1.0  # nothing measured: a whole GPU
    assert resources.with_gpu_share(auto, measured).resources.gpus_per_worker == 0.25
    with pytest.raises(AssertionError, match="with_gpu_share"):
        resources.gpus_per_worker(auto.resources)  # an unresolved auto never reaches Ray


def test_a_sweep_of_auto_shares_over_model_sizes_plans_for_the_largest(tmp_path, monkeypatch):
    from raydt import resources
    from raydt.tune.run import plan_sweep
    from raydt.tune.spec import load_sweep
    from tests.helpers import RUN_SPEC

    monkeypatch.setattr(resources, "MEASURED_GPU_SHARES", {"dt": 0.25, "3m": 0.5})
    spec_file = tmp_path / "sizes.yaml"
    spec_file.write_text(f"extends: {RUN_SPEC}\nresources: {{use_gpu: true, gpus_per_worker: auto}}\n"
                         "search:\n  model.size: {grid: [dt, 3m]}\n")
    plan = plan_sweep(load_sweep(spec_file), aws_shape())
    assert plan.gpus_per_worker == 0.5
    assert "(2 trials per GPU)" in "\n".join(plan.lines())
    spec_file.write_text(f"extends: {RUN_SPEC}\nresources: {{use_gpu: true, gpus_per_worker: auto}}\n"
                         "search:\n  optim.lr: {grid: [0.001, 0.0001]}\n")
    assert "(4 trials per GPU)" in "\n".join(plan_sweep(load_sweep(spec_file), aws_shape()).lines())


@pytest.mark.parametrize("where, value", [("max_workers", -3), ("max_workers", "two"), ("type", 1.5)])
def test_negative_or_non_numeric_node_counts_are_refused_naming_the_key(tmp_path, where, value):
    from raydt.resources import shape_from_autoscaler_config

    config = {"provider": {"type": "aws"}, "max_workers": 2, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 4}, "max_workers": 0},
                                       "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2}}}
    if where == "max_workers":
        config["max_workers"] = value
        key = "max_workers"
    else:
        config["available_node_types"]["gpu"]["max_workers"] = value
        key = "available_node_types.gpu.max_workers"
    with pytest.raises(ConfigError, match=f"c.yaml: {key} is {value!r}; give a whole number of nodes"):
        shape_from_autoscaler_config(config, "c.yaml")
