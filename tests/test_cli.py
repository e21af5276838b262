"""The ``raydt`` command end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from raydt.config import ExperimentConfig, leaf_fields

REPO = Path(__file__).resolve().parents[1]


def raydt(*args: str, check: bool = True, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "raydt", *args], cwd=cwd, capture_output=True, text=True, env=os.environ | (env or {})
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"raydt {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_spec_show_resolves_with_overrides():
    out = raydt("spec", "show", "tune_specs/runs/hopper_medium_dt.yaml", "--set", "optim.lr=3e-4").stdout
    resolved = yaml.safe_load(out)
    assert resolved["optim"]["lr"] == 3e-4
    assert resolved["data"]["dataset"].startswith("generated:hopper-medium")
    assert resolved["train"]["batch_size"] == 64


def test_spec_show_doc_documents_every_leaf():
    out = raydt("spec", "show", "tune_specs/runs/hopper_medium_dt.yaml", "--doc").stdout
    for key, (_, doc) in leaf_fields(ExperimentConfig).items():
        assert f"# {doc}" in out, key


def test_user_mistakes_are_one_line_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 1\n")
    for args, fragment in [
        (("spec", "show", str(bad)), f"error: {bad}: unknown key in section 'optim' 'optim.lrr'"),
        (("spec", "show", "tune_specs/runs/hopper_medium_dt.yaml", "--set", "train.steps=x"), "expected an integer"),
        (("data", "info", "nothing:here"), "error: dataset URI 'nothing:here' is not understood"),
        (("data", "info", "d4rl:hopper-medium-v2"), "raydt data make generated:hopper-medium"),
        (("data", "make", "generated:ant-medium"), "valid tasks: hopper, halfcheetah, walker2d"),
        (("data", "make", "d4rl:hopper-medium-v2"), "makes generated: datasets only"),
    ]:
        proc = raydt(*args, check=False)
        assert proc.returncode == 2, args
        assert fragment in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_data_make_then_info_json():
    made = json.loads(raydt("data", "make", "generated:hopper-medium", "--steps", "3000", "--seed", "2").stdout)
    assert made["uri"] == "generated:hopper-medium?steps=3000&seed=2"
    assert Path(made["path"]).is_file()
    info = json.loads(raydt("data", "info", made["uri"], "--json").stdout)
    for key in ("num_episodes", "num_steps", "obs_dim", "act_dim", "return_mean", "return_std",
                "return_min", "return_max", "normalized_return_mean"):
        assert key in info
    assert (info["num_steps"], info["obs_dim"], info["act_dim"]) == (3000, 11, 3)
    text = raydt("data", "info", made["uri"]).stdout
    assert "normalized return" in text and "transitions" in text


def test_data_train_policy_writes_snapshots(tmp_path):
    out = tmp_path / "hopper.npz"
    raydt("data", "train-policy", "hopper", "--env-steps", "3000", "--out", str(out))
    with np.load(out) as f:
        assert f["weights"].shape[1:] == (3, 11)
        assert f["weights"].shape[0] == f["eval_return_mean"].shape[0] >= 2
        assert json.loads(str(f["meta"]))["task"] == "hopper"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("raydt ")]


def test_readme_lint_command_passes():
    text = (REPO / "README.md").read_text()
    assert "ruff check raydt tests bench" in text
    subprocess.run([sys.executable, "-m", "ruff", "check", "raydt", "tests", "bench"], cwd=REPO, check=True)


def seed_pretrained_cache(sweep_file, overrides):
    """Put a tiny pre-trained LM where a sweep's `pretrain:` backbones are cached, so the
    README test spends seconds, not the minutes of real pre-training (tested on its own)."""
    from raydt.pretrain import load_pretrain_config, pretrain, pretrained_run, shape_overrides
    from raydt.tune.spec import load_sweep
    from tests.test_text_pretrain import TINY_PRETRAIN

    spec = load_sweep(sweep_file, overrides)
    for params in spec.grid():
        model = spec.trial_config(params).model
        if model.backbone.startswith("pretrain:"):
            _, run_dir = pretrained_run(model.backbone[len("pretrain:"):], shape_overrides(model))
            if (run_dir / "done").exists():  # trials that differ only in seed share it
                continue
            tiny = run_dir.parent / "tiny.yaml"
            tiny.parent.mkdir(parents=True, exist_ok=True)
            tiny.write_text(TINY_PRETRAIN)
            pretrain(load_pretrain_config(tiny, shape_overrides(model)), run_dir, log=lambda _: None)
            (run_dir / "done").write_text("{}")


@pytest.mark.slow
def test_every_raydt_command_in_the_readme_runs(tmp_path):
    """Each README command runs as shown, long jobs shrunk to seconds with extra --set
    overrides and run/sweep directories redirected to a temporary folder."""
    commands = readme_commands()
    text = (REPO / "README.md").read_text()
    tensorboard_dirs = re.findall(r"^tensorboard --logdir (\S+)", text, flags=re.M)
    assert any(c.startswith("raydt sweep tune_specs/quickstart.yaml") for c in commands)
    # The README's placeholder path stands for a real D4RL file: give it one.
    from raydt.data.d4rl import write_d4rl_hdf5
    from tests.test_train import TINY

    d4rl_file = tmp_path / "hopper_medium-v2.hdf5"
    n = 50
    write_d4rl_hdf5(d4rl_file, {
        "observations": np.zeros((n, 11), np.float32), "actions": np.zeros((n, 3), np.float32),
        "rewards": np.ones(n, np.float32), "terminals": np.eye(1, n, n - 1, dtype=bool)[0],
        "timeouts": np.zeros(n, bool),
    })
    shrink = [a for item in (*TINY, "resources.num_workers=1") for a in ("--set", item)]
    seed_pretrained_cache(REPO / "tune_specs/quickstart.yaml", [*TINY, "resources.num_workers=1"])
    for command in commands:
        command = command.replace("/path/to/hopper_medium-v2.hdf5", str(d4rl_file))
        argv = [re.sub(r"^runs/", f"{tmp_path}/runs/", a) for a in shlex.split(command)[1:]]
        if argv[0] == "train" and "atari" in argv[1]:  # Atari data and a few capped games
            atari = ["data.dataset=generated:atari-pong?steps=600&seed=1", "data.context_length=4", "train.steps=4",
                     "train.eval_every=2", "train.log_every=2", "train.batch_size=4", "eval.max_steps=20",
                     "resources.cpus_per_worker=1"]
            argv += [*(a for item in atari for a in ("--set", item)), "--out", f"{tmp_path}/runs/{Path(argv[1]).stem}"]
        elif argv[0] == "train":
            argv += [*shrink, "--no-ray", "--out", f"{tmp_path}/runs/{Path(argv[1]).stem}"]
        argv = [a.replace("file:///tmp/raydt-store", f"file://{tmp_path}/store") for a in argv]
        if argv[0] == "sweep" and "--dry-run" not in argv:
            argv += [*shrink] + ([] if "--out" in argv else ["--out", f"{tmp_path}/runs"])
        if argv[0] == "pretrain":
            argv += ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "corpus.vocab_size=300",
                     "--set", "corpus.block_size=32", "--set", "train.batch_size=4", "--set", "model.n_embd=32"]
            argv[argv.index("--out") + 1] = f"{tmp_path}/runs/chibit_quick"
        if argv[:2] == ["analyze", "mi"]:  # a few windows and MINE steps: the wiring, not the estimate
            argv += ["--windows", "64", "--mine-steps", "5"]
        if argv[0] == "compare":
            argv[argv.index("--out") + 1] = str(tmp_path / "curves.png")
        if argv[0] == "bench":
            argv[argv.index("--plot") + 1] = str(tmp_path / "convergence.png")
        # A dry run checks hub ids only where the hub is reachable; offline, an uncached one
        # (gpt2 here) is an error, so the plan is made as a user with the network makes it.
        out = raydt(*argv, env={"RAYDT_OFFLINE": "0"} if "--dry-run" in argv else None).stdout
        if argv[0] == "bench":  # one row per backbone, both converged somewhere
            rows = [line for line in out.splitlines() if line.startswith(("random ", "pretrain:"))]
            assert len(rows) == 2 and all(row.split()[1] == "2" for row in rows), out
    assert len(list((tmp_path / "store" / "quickstart").glob("trial_*/checkpoints/last.pt"))) == 4  # by URI
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "quickstart" / "profiles.png").stat().st_size > 10_000
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    # `tensorboard --logdir DIR` serves what TensorBoard's own reader finds there.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    assert tensorboard_dirs
    for logdir in tensorboard_dirs:
        mux = EventMultiplexer()
        mux.AddRunsFromDirectory(str(tmp_path / logdir))
        mux.Reload()
        runs = mux.Runs()
        assert len(runs) >= 4 + 2  # one per quickstart trial and one per group of seeds
        assert sum(run.startswith("groups") for run in runs) == 2, runs
        tags = set().union(*(set(v.get("scalars", [])) for v in runs.values()))
        assert {"eval/normalized_score", "train/loss", "perf/train_seconds", "eval/normalized_score/max"} <= tags
        assert not any(tag.startswith("ray/") for tag in tags)  # no second copy from Tune's loggers
