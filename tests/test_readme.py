"""Every ``raydt`` command the README shows runs as shown: long jobs shrunk to seconds with
extra ``--set`` overrides, run and sweep directories redirected to a temporary folder.

The commands are walked in four independent parts (a sweep and what reads it, the sweep by
URI, one run and what reads it, the rest), each in README order, so that they can run side
by side (``pytest -n``)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, TINY_PRETRAIN, TINY_RUN, raydt

README = REPO / "README.md"
PARTS = ("sweep", "storage", "run", "other")


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("raydt ")]


def readme_part(command: str) -> str:
    """Which walk runs ``command``: the one that made what it reads."""
    if "raydt-store" in command:
        return "storage"
    if "quickstart" in command:
        return "sweep"
    if "hopper_medium_dt" in command and not command.startswith("raydt spec"):
        return "run"
    return "other"


def test_the_parts_walk_every_readme_command():
    commands = readme_commands()
    assert len(commands) > 20
    by_part = {part: [c for c in commands if readme_part(c) == part] for part in PARTS}
    assert all(by_part.values()), by_part
    assert sum(map(len, by_part.values())) == len(commands)
    assert by_part["sweep"][0] == "raydt sweep tune_specs/quickstart.yaml"  # made before it is read
    assert by_part["run"][0].startswith("raydt train tune_specs/runs/hopper_medium_dt.yaml")


def test_readme_lint_command_passes():
    assert "ruff check raydt tests bench" in README.read_text()
    subprocess.run([sys.executable, "-m", "ruff", "check", "raydt", "tests", "bench"], cwd=REPO, check=True)


def seed_pretrained_cache(sweep_file: Path, overrides: list[str]) -> None:
    """Put a tiny pre-trained LM where a sweep's `pretrain:` backbones are cached, so the
    walk spends seconds, not the minutes of real pre-training (tested on its own)."""
    from raydt.pretrain import load_pretrain_config, pretrain, pretrained_run, shape_overrides
    from raydt.tune.spec import load_sweep

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


def shrunk(command: str, tmp_path: Path, d4rl_file: Path) -> list[str]:
    """``command``'s arguments as the walk runs them."""
    shrink = [a for item in (*TINY_RUN, "resources.num_workers=1") for a in ("--set", item)]
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
    if argv[:2] == ["data", "make"]:  # a few thousand simulator steps instead of 100k
        argv[argv.index("--steps") + 1] = "2000"
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
    return argv


def walk(part: str, tmp_path: Path) -> dict[str, str]:
    """Run the part's commands in README order; returns each command's standard output."""
    # The README's placeholder path stands for a real D4RL file: give it one.
    from raydt.data.d4rl import write_d4rl_hdf5

    d4rl_file = tmp_path / "hopper_medium-v2.hdf5"
    n = 50
    write_d4rl_hdf5(d4rl_file, {
        "observations": np.zeros((n, 11), np.float32), "actions": np.zeros((n, 3), np.float32),
        "rewards": np.ones(n, np.float32), "terminals": np.eye(1, n, n - 1, dtype=bool)[0],
        "timeouts": np.zeros(n, bool),
    })
    if part in ("sweep", "storage"):
        seed_pretrained_cache(REPO / "tune_specs/quickstart.yaml", [*TINY_RUN, "resources.num_workers=1"])
    outputs = {}
    for command in (c for c in readme_commands() if readme_part(c) == part):
        argv = shrunk(command, tmp_path, d4rl_file)
        # A dry run checks hub ids only where the hub is reachable; offline, an uncached one
        # (gpt2 here) is an error, so the plan is made as a user with the network makes it.
        started = time.perf_counter()
        outputs[command] = raydt(*argv, env={"RAYDT_OFFLINE": "0"} if "--dry-run" in argv else None).stdout
        print(f"{time.perf_counter() - started:6.1f} s  {command}")  # shown by pytest -s or on failure
    return outputs


@pytest.mark.slow
def test_readme_sweep_and_what_reads_it(tmp_path, capsys):
    out = walk("sweep", tmp_path)
    sweep = tmp_path / "runs" / "quickstart"
    ran = out["raydt sweep tune_specs/quickstart.yaml"]
    assert "6 trial(s) TERMINATED, 0 in ERROR" in ran
    # The quickstart answers its question with intervals over its 3 seeds (report: compare).
    assert "iqm (final)" in ran and "P(backbone=pretrain:chibit_quick > backbone=random) = " in ran
    trials = sorted(p.name for p in sweep.glob("trial_*"))
    assert trials == [f"trial_{i:05d}" for i in range(6)]  # deterministic names
    from raydt.sinks import read_metrics

    for name in trials:
        rows = read_metrics(sweep / name / "metrics.jsonl")
        assert rows[-1]["step"] == 12 and "eval/normalized_score" in rows[-1]
        assert list((sweep / name).glob("events.out.tfevents.*"))
    bench = out["raydt bench convergence runs/quickstart --plot convergence.png"]
    rows = [line for line in bench.splitlines() if line.startswith(("random ", "pretrain:"))]
    assert len(rows) == 2 and all(row.split()[1] == "3" for row in rows), bench  # one per backbone, 3 seeds
    for image in (tmp_path / "curves.png", sweep / "profiles.png", tmp_path / "convergence.png"):
        assert image.stat().st_size > 10_000, image

    # The report groups seeds: one row per backbone, three trials each.
    from raydt.cli import main

    capsys.readouterr()
    assert main(["report", str(sweep), "--csv"]) == 0
    import csv

    report = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert sorted(r["model.backbone"].split("/")[-1] for r in report) == ["chibit_quick.yaml", "random"]
    assert [r["trials"] for r in report] == ["3", "3"]

    # Where the trials' wall time went, from the timing files the sweep left.
    from bench.sweep_efficiency import PARTS as TIME_PARTS
    from bench.sweep_efficiency import analyse

    eff = analyse(sweep)
    assert sorted(eff["trials"]) == trials
    for t in eff["trials"].values():
        assert t["train"] > 0 and t["eval"] > 0 and t["setup"] > 0
        assert sum(t[p] for p in TIME_PARTS) == pytest.approx(t["wall"])  # the parts cover the trial
    assert 0 < eff["train_and_eval_share"] < 1 and 0 <= eff["sweep_idle_share"] < 1

    # `tensorboard --logdir DIR` serves what TensorBoard's own reader finds there.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    logdirs = re.findall(r"^tensorboard --logdir (\S+)", README.read_text(), flags=re.M)
    assert logdirs
    for logdir in logdirs:
        mux = EventMultiplexer()
        mux.AddRunsFromDirectory(str(tmp_path / logdir))
        mux.Reload()
        runs = mux.Runs()
        assert len(runs) >= 6 + 2  # one per quickstart trial and one per group of seeds
        assert sum(run.startswith("groups") for run in runs) == 2, runs
        tags = set().union(*(set(v.get("scalars", [])) for v in runs.values()))
        assert {"eval/normalized_score", "train/loss", "perf/train_seconds", "eval/normalized_score/max"} <= tags
        assert not any(tag.startswith("ray/") for tag in tags)  # no second copy from Tune's loggers


@pytest.mark.slow
def test_readme_sweep_by_uri(tmp_path):
    out = walk("storage", tmp_path)
    assert len(list((tmp_path / "store" / "quickstart").glob("trial_*/checkpoints/last.pt"))) == 6
    report = out["raydt report file:///tmp/raydt-store/quickstart"]
    assert "random" in report and "pretrain:chibit_quick" in report


@pytest.mark.slow
def test_readme_run_and_what_reads_it(tmp_path):
    walk("run", tmp_path)
    run = tmp_path / "runs" / "hopper_medium_dt"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "runs" / "hopper_medium_dt_hf" / "config.json").is_file()
    for name in ("params", "cka", "attention", "mi", "grads"):
        assert list((run / "analysis").glob(f"{name}*")), name


@pytest.mark.slow
def test_readme_other_commands(tmp_path):
    out = walk("other", tmp_path)
    assert (tmp_path / "runs" / "chibit_quick" / "model" / "config.json").is_file()
    assert (tmp_path / "runs" / "atari_pong_cpu" / "checkpoints" / "last.pt").is_file()
    assert '"num_steps": 50' in out[next(c for c in out if c.startswith("raydt data info"))]
