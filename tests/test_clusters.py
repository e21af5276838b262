"""The cluster launchers in clusters/ pass Ray's own config validation (as `ray up` runs it),
use the image of the pinned Ray, keep secrets and the dashboard private, and their GPU node
types hold the trials of the GPU sweeps."""

import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raydt.resources import trial_capacity
from raydt.tune.spec import load_sweep
from tests.helpers import REPO

CLUSTERS = sorted((REPO / "clusters").glob("*.yaml"))


def ray_up_check(config: dict) -> dict:
    """What `ray up` does to a config before launching anything: defaults, then the schema."""
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def test_there_is_an_aws_and_a_local_cluster():
    assert {p.name for p in CLUSTERS} >= {"aws.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_cluster_config_passes_ray_validation(path):
    text = path.read_text()
    ray_up_check(yaml.safe_load(text))
    # No account ids or access keys; the dashboard is not opened beyond the head itself.
    assert not re.search(r"(?<![\d<])\d{12}(?![\d>])", text), "an AWS account id?"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an access key?"
    assert "0.0.0.0" not in text
    for command in yaml.safe_load(text)["head_start_ray_commands"]:
        if "ray start" in command:
            assert "--dashboard-host=127.0.0.1" in command


def test_validation_catches_a_misspelled_key():
    config = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    config["idle_timout_minutes"] = config.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timout_minutes"):
        ray_up_check(config)


def test_aws_uses_the_pinned_ray_image_and_installs_this_checkout():
    config = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert config["file_mounts"]["/home/ray/raydt"] == "."
    assert any("pip install" in c and "/home/ray/raydt" in c for c in config["setup_commands"])


def test_gpu_node_types_hold_the_gpu_sweeps_trials():
    config = ray_up_check(yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text()))
    gpu_types = {name: t["resources"] for name, t in config["available_node_types"].items()
                 if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 2 and any(r["GPU"] > 1 for r in gpu_types.values())  # single- and multi-GPU
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0
    for spec_name in ("size_scaling.yaml", "atari.yaml"):
        resources = load_sweep(REPO / "tune_specs" / spec_name).base_config().resources
        assert resources.use_gpu
        for name, node in gpu_types.items():  # every GPU type takes at least one trial on its own
            assert trial_capacity(resources, [node], f"{spec_name} on {name}").trials >= 1
    # A DDP trial over four GPUs fits the multi-GPU type only.
    from raydt.config import ResourcesConfig

    ddp = ResourcesConfig(num_workers=4, use_gpu=True, cpus_per_worker=4)
    assert trial_capacity(ddp, [gpu_types["gpu_4x"]], "ddp").trials == 1
    with pytest.raises(Exception, match="no node type holds that many"):
        trial_capacity(ddp, [gpu_types["gpu_1x"]], "ddp")


def test_readme_cluster_commands_name_real_files_and_valid_raydt_commands():
    import shlex

    from raydt.cli import build_parser

    text = (REPO / "README.md").read_text()
    section = text.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
             for line in block.splitlines()]
    ray_lines = [line for line in lines if line.startswith("ray ")]
    assert {line.split()[1] for line in ray_lines} >= {"up", "exec", "attach", "dashboard", "down"}
    inner = []
    for line in ray_lines:
        words = shlex.split(line)
        assert (REPO / words[2]).is_file(), line  # the cluster file each command names
        inner += [w for w in words[3:] if w.startswith("raydt ")]
    inner += re.findall(r"-- (raydt sweep [^`]+)`", section)  # the ray job submit example
    assert inner
    for command in inner:
        argv = shlex.split(command.replace("/home/ray/raydt/", f"{REPO}/"))[1:]
        args = build_parser().parse_args(argv)  # exits on an unknown option
        assert Path(args.spec).is_file() and args.address == "auto"
