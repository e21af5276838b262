"""Nodes with disks of their own: a local Ray cluster whose nodes are separate `ray start`
processes, each with its own RAYDT_DATA_DIR, temp directory and working directory, so the
only thing they share is storage (a file:// URI). What the driver prepares (a generated
dataset, a pre-trained backbone) reaches every node through that storage, built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    TINY_PRETRAIN,
    TINY_RUN,
    eval_steps,
    free_port,
    kill_processes_under,
    kill_processes_with_env,
    raydt,
    tiny_run_yaml,
)

pytestmark = pytest.mark.ray

AUTH_OFF = {"RAY_AUTH_MODE": "disabled"}
"""Ray turns token authentication on for a new head when ~/.ray/auth_token exists (an earlier
cluster on this machine may have written it); these nodes join without one."""


@pytest.fixture(scope="module")
def separate_nodes(tmp_path_factory):
    """A 0-CPU head and two 1-CPU worker nodes, each with its own data, temp and working
    directory; yields (address, {node name: its data directory})."""
    root = tmp_path_factory.mktemp("nodes")
    tag = ("RAYDT_TEST_CLUSTER", str(root))
    # Ray's socket paths live under the temp dir and must stay short (108 bytes on Linux).
    temps = [Path(tempfile.mkdtemp(prefix="rt", dir="/tmp")) for _ in range(3)]
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--disable-usage-stats"]
    data: dict[str, Path] = {}
    try:
        for i, (name, args) in enumerate([
            ("head", ["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"]),
            ("node_a", [f"--address={address}", "--num-cpus=1"]),
            ("node_b", [f"--address={address}", "--num-cpus=1"]),
        ]):
            workdir = root / name
            data[name] = workdir / "data"
            data[name].mkdir(parents=True)
            env = dict(os.environ, RAYDT_DATA_DIR=str(data[name]), PYTHONPATH=str(REPO), **AUTH_OFF, **dict([tag]))
            started = subprocess.run(
                [*ray, *args, f"--temp-dir={temps[i]}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"],
                cwd=workdir, env=env, capture_output=True, text=True)
            assert started.returncode == 0, started.stderr[-3000:]
        yield address, data
    finally:
        kill_processes_with_env(*tag)
        kill_processes_under(root)  # Ray's agents drop the tag


def _spec(tmp_path: Path, bucket: str) -> Path:
    (tmp_path / "lm.yaml").write_text(TINY_PRETRAIN)
    run = tiny_run_yaml("train.steps")
    spec = tmp_path / "nodes.yaml"
    spec.write_text(f"""\
extends: {REPO / 'tune_specs/runs/hopper_medium_dt.yaml'}
{run}
train.steps: 8
search:
  model.backbone: {{grid: [random, "pretrain:{tmp_path / 'lm.yaml'}"]}}
  train.seed: {{grid: [0, 1]}}
tune:
  searcher: grid
  storage_path: {bucket}
  name: nodes
""")
    return spec


def _built_here(data: Path) -> dict[str, list[str]]:
    """What a node's data directory shows it built itself: pre-training runs (checkpoints,
    a done marker) and datasets nobody published to it."""
    return {"pretrained": sorted(p.parent.name for p in data.glob("pretrained/*/done")),
            "pretrain_checkpoints": sorted(str(p) for p in data.glob("pretrained/*/checkpoints"))}


def test_a_sweep_and_a_two_node_run_read_what_the_driver_prepared_once(separate_nodes, tmp_path):
    address, nodes = separate_nodes
    bucket = tmp_path / "bucket"
    uri = f"file://{bucket}"
    driver = tmp_path / "driver_data"  # the driver's own disk: nothing there yet
    env = {"RAYDT_DATA_DIR": str(driver), "PYTHONPATH": str(REPO), **AUTH_OFF}
    out = raydt("sweep", str(_spec(tmp_path, uri)), "--address", address, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    log = out.stdout + out.stderr
    assert "4 trial(s) TERMINATED, 0 in ERROR" in out.stdout
    # Built once, by the driver; no trial generated data or pre-trained on its node.
    assert log.count("making generated:hopper-medium") == 1, log[-3000:]
    assert log.count("pre-training the backbone") == 1, log[-3000:]
    for name in ("node_a", "node_b", "head"):
        assert _built_here(nodes[name]) == {"pretrained": [], "pretrain_checkpoints": []}, name
    infos = {}
    for trial in sorted((bucket / "nodes").glob("trial_*")):
        assert eval_steps(trial) == [4, 8]  # complete in storage
        infos[trial.name] = json.loads((trial / "run_info.json").read_text())
    assert len(infos) == 4
    assert len({i["ray_node"] for i in infos.values()}) == 2  # trials on both nodes
    datasets = {i["artifacts"]["dataset"]["sha256"] for i in infos.values()}
    backbones = {i["artifacts"]["backbone"]["sha256"] for i in infos.values() if "backbone" in i["artifacts"]}
    assert len(datasets) == 1 and len(backbones) == 1
    assert sum("backbone" in i["artifacts"] for i in infos.values()) == 2
    published = {p.parent.name for p in (bucket / "prepared").glob("*/*/.complete")}
    assert datasets | backbones <= published
    # Each node pulled the driver's bytes into its own cache.
    from raydt.artifacts import content_hash

    for name in ("node_a", "node_b"):
        [file] = (nodes[name] / "generated").glob("*.hdf5")
        assert content_hash(file) in datasets

    # One run, two workers on two nodes, written to storage and read back from it.
    run_uri = f"{uri}/one"
    train = raydt("train", str(REPO / "tune_specs/runs/hopper_medium_dt.yaml"), "--address", address,
                  "--out", run_uri, *(f"--set={s}" for s in TINY_RUN), "--set=train.steps=8",
                  f"--set=model.backbone=pretrain:{tmp_path / 'lm.yaml'}", "--set=resources.num_workers=2",
                  "--set=resources.placement=spread", env=env, check=False)
    assert train.returncode == 0, train.stderr[-3000:] + train.stdout[-3000:]
    result = json.loads(train.stdout.strip().splitlines()[-1])
    assert result["step"] == 8 and "eval/normalized_score" in result
    info = json.loads((bucket / "one" / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["artifacts"]["dataset"]["sha256"] in datasets
    assert info["artifacts"]["backbone"]["sha256"] in backbones
    assert eval_steps(bucket / "one") == [4, 8]
    assert "pre-training the backbone" not in train.stdout + train.stderr  # made by the sweep before
    for name in ("node_a", "node_b"):
        assert _built_here(nodes[name]) == {"pretrained": [], "pretrain_checkpoints": []}, name
