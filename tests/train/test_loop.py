from __future__ import annotations

import json
import math

import pytest
import torch

from raydt.errors import RaydtError
from raydt.sinks import read_metrics
from raydt.train.checkpoint import load_checkpoint
from raydt.train.driver import run_training
from raydt.train.loop import RunContext, fit
from tests.helpers import TINY_MODEL, TINY_RUN, quiet, random_batch, raydt, tiny_config, tiny_model


def test_run_directory_contract(tmp_path):
    out = fit(tiny_config(), tmp_path, quiet())
    assert out["step"] == 12
    assert (tmp_path / "config.resolved.yaml").is_file()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    evals = [r for r in rows if "eval/normalized_score" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    for key in ("train/loss", "train/action_mse", "train/lr", "train/grad_norm", "perf/train_seconds",
                "perf/steps_per_second", "perf/total_seconds"):
        assert key in rows[0]
    for key in ("eval/return_mean", "eval/rtg3600/return_mean", "eval/rtg1800/normalized_score",
                "perf/eval_seconds", "eval/best_normalized_score"):
        assert key in evals[0]
    # training time never includes evaluation
    assert evals[-1]["perf/total_seconds"] == pytest.approx(evals[-1]["perf/train_seconds"] + evals[-1]["perf/eval_seconds"])
    # warm-up: the learning rate rises linearly to its peak, then stays
    assert rows[0]["train/lr"] == pytest.approx(1e-4 * 3 / 4) and rows[-1]["train/lr"] == pytest.approx(1e-4)
    payload = load_checkpoint(tmp_path)
    assert payload["step"] == 12 and payload["env_id"] == "Hopper-v4"
    assert payload["config"]["data"]["context_length"] == 5


def test_same_seed_same_run(tmp_path):
    fit(tiny_config(), tmp_path / "a", quiet())
    fit(tiny_config(), tmp_path / "b", quiet())
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    fit(tiny_config("train.seed=1"), tmp_path / "c", quiet())
    c = load_checkpoint(tmp_path / "c")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


class Interrupt(Exception):
    pass


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    fit(tiny_config(), tmp_path / "whole", quiet())

    def crash_at_8(step, metrics, checkpoint):
        if step == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tiny_config(), tmp_path / "cut", RunContext(log=lambda _: None, report=crash_at_8))
    assert load_checkpoint(tmp_path / "cut")["step"] == 8
    out = fit(tiny_config(), tmp_path / "cut", quiet(), resume=True)
    assert out["step"] == 12
    rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]  # no evaluation point lost or repeated
    whole, cut = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "cut")
    # every RNG is restored, so the resumed run is the uninterrupted one, bit for bit
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path):
    # A learning rate of ~0 leaves the policy unchanged, so no evaluation improves on the first.
    out = fit(tiny_config("optim.lr=1e-20", "train.early_stop_patience=2", "train.steps=40"), tmp_path, quiet())
    assert out["step"] == 12  # evaluations at 4 (best), 8 and 12 (no better): stop


def test_run_directory_is_never_clobbered(tmp_path):
    config = tiny_config("train.steps=4")
    run_training(config, tmp_path, use_ray=False, log=lambda _: None)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(RaydtError, match="already holds a run; continue it with --resume"):
        run_training(config, tmp_path, use_ray=False, log=lambda _: None)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    run_training(config, tmp_path, use_ray=False, overwrite=True, log=lambda _: None)
    with pytest.raises(RaydtError, match="holds no checkpoint"):
        run_training(config, tmp_path / "new", use_ray=False, resume=True, log=lambda _: None)


def test_bad_inputs_fail_before_training(tmp_path):
    with pytest.raises(RaydtError, match="does not split evenly"):
        fit(tiny_config("train.batch_size=7"), tmp_path, RunContext(world_size=2, log=lambda _: None))
    with pytest.raises(RaydtError, match="needs Ray Train"):
        run_training(tiny_config("resources.num_workers=2"), tmp_path / "x", use_ray=False, log=lambda _: None)
    with pytest.raises(RaydtError, match="loss.lambda1=0.1.*need a language backbone"):
        run_training(tiny_config("loss.lambda1=0.1"), tmp_path / "z", use_ray=False, log=lambda _: None)
    with pytest.raises(RaydtError, match="not understood"):
        run_training(tiny_config("data.dataset=nope"), tmp_path / "y", use_ray=False, log=lambda _: None)


def test_train_and_eval_commands(tmp_path):
    args = [a for item in TINY_RUN for a in ("--set", item)]
    proc = raydt("train", "tune_specs/runs/hopper_medium_dt.yaml", "--no-ray", "--out", str(tmp_path), *args)
    summary = json.loads(proc.stdout)
    assert summary["step"] == 12 and "eval/normalized_score" in summary
    assert "step 12/12" in proc.stderr  # the live progress line
    evaluated = json.loads(raydt("eval", str(tmp_path), "--episodes", "2", "--target", "1000", "--json").stdout)
    assert evaluated["step"] == 12 and "eval/rtg1000/normalized_score" in evaluated


def test_bf16_precision_trains_on_cpu(tmp_path):
    """train.precision=bf16 autocasts the forward on a CPU too: same start, slightly different losses."""
    from raydt.train.loop import Trainer

    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(tiny_config(f"train.precision={precision}"), tmp_path / precision, quiet())
        batch = trainer.sampler.sample(8)
        losses[precision] = [float(trainer.train_step(batch)["action"]) for _ in range(3)]
    assert all(map(math.isfinite, losses["bf16"]))
    assert losses["bf16"] != losses["fp32"]  # bf16 rounding is visible: autocast is on
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_random_streams_never_share_a_seed():
    from raydt.seeding import STREAMS, stream_seed

    seeds = [stream_seed(seed, rank, stream, step) for seed in (0, 1) for rank in range(8)
             for stream in STREAMS for step in (0, 100)]
    assert len(set(seeds)) == len(seeds)  # e.g. rank 0's text stream is not rank 1's windows
    assert stream_seed(3, 1, "text") == stream_seed(3, 1, "text")  # deterministic
    assert all(0 <= s < 2**63 for s in seeds)


def test_dt_atari_optimiser_groups_and_cosine_schedule():
    import math

    from raydt.config import OptimConfig
    from raydt.train.loop import lr_schedule, param_groups

    model = tiny_model(cfg=TINY_MODEL)
    decayed, rest = param_groups(model, "matmul_weights", 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") for p in decayed["params"])
    assert {"embed_timestep.weight", "embed_ln.weight", "embed_return.bias"} <= {names[id(p)] for p in rest["params"]}
    assert "backbone.hf.h.0.attn.c_attn.weight" in {names[id(p)] for p in decayed["params"]}  # GPT-2's Conv1D
    assert len(decayed["params"]) + len(rest["params"]) == sum(1 for p in model.parameters() if p.requires_grad)
    (everything,) = param_groups(model, "all", 1e-4)
    assert len(everything["params"]) == len(decayed["params"]) + len(rest["params"])
    # trainer_atari.py: linear warm-up, then 0.5·(1 + cos(π·progress)), floored at 0.1.
    f = lr_schedule(OptimConfig(schedule="warmup_cosine", warmup_steps=10, decay_steps=110, min_lr_ratio=0.1), 1000)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(max(0.1, 0.5 * (1 + math.cos(math.pi * 0.9))))
    assert f(110) == f(500) == pytest.approx(0.1)  # stays at the floor
    assert lr_schedule(OptimConfig(warmup_steps=4), 100)(50) == 1.0  # warmup only: constant after


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("bf16", True), ("auto", True)])
def test_tf32_only_where_precision_is_reduced_and_never_in_the_losses(tmp_path, monkeypatch, precision, tf32):
    import raydt.train.loop as loop
    from raydt.data.sampler import Batch
    from raydt.train.loop import Trainer, restore_tf32, set_tf32, tf32_enabled

    before = set_tf32(not tf32)  # what an earlier run in this process may have left
    try:
        trainer = Trainer(tiny_config(f"train.precision={precision}", "loss.lambda1=0"), tmp_path, quiet())
        assert tf32_enabled() is tf32
        seen = []
        real = loop.action_loss
        monkeypatch.setattr(loop, "action_loss", lambda *a: seen.append(tf32_enabled()) or real(*a))
        # The flag a CUDA device sets: the loss block turns TF32 off and back on after it.
        trainer.objective.exact_losses = True
        args = trainer.model.args
        batch = Batch(**random_batch(b=2, k=5, obs_dim=args.obs_dim, act_dim=args.act_dim))
        trainer.objective(batch, None)
        assert seen == [False] and tf32_enabled() is tf32
    finally:
        restore_tf32(before)


def test_a_run_resumed_at_its_last_step_reports_its_last_evaluation_again(tmp_path):
    fit(tiny_config(), tmp_path, quiet())
    reports = []
    ctx = RunContext(log=lambda _: None, report=lambda step, metrics, checkpoint: reports.append((step, metrics)))
    out = fit(tiny_config(), tmp_path, ctx, resume=True)
    assert out["step"] == 12
    [(step, metrics)] = reports
    last = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert step == 12 and metrics["eval/normalized_score"] == last["eval/normalized_score"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2, 4, 6, 8, 10, 12]  # nothing logged twice


def test_eta_counts_training_and_the_evaluations_still_due():
    from raydt.train.loop import _progress_line, eta_seconds, evaluations_by

    assert [evaluations_by(s, 10, 4) for s in (3, 4, 8, 10)] == [0, 1, 2, 3]  # at 4, 8 and the end
    # 4 of 10 steps in 8 s (2 s/step), one evaluation so far in 3 s: 6 steps and 2 evaluations left.
    assert eta_seconds(4, 10, 4, train_seconds=8.0, eval_seconds=3.0) == 6 * 2.0 + 2 * 3.0
    assert eta_seconds(0, 10, 4, 0.0, 0.0) is None
    metrics = {"train/loss": 0.5, "perf/steps_per_second": 2.0}
    assert _progress_line(4, 10, metrics, 18.0).endswith("eta 0m18s")
    assert _progress_line(4, 10, metrics, 7322.0).endswith("eta 2h02m")
    assert "eta" not in _progress_line(10, 10, metrics, 0.0)


def test_train_deterministic_sets_the_process_wide_switches_and_a_run_trains_under_them(tmp_path, monkeypatch):
    import os

    from raydt.seeding import deterministic_enabled, restore_deterministic, set_deterministic
    from raydt.train.loop import Trainer

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = set_deterministic(False)
    try:
        Trainer(tiny_config("train.deterministic=true"), tmp_path / "built", quiet())
        assert deterministic_enabled()
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        # Every op of training and evaluation has a deterministic implementation on a CPU.
        out = fit(tiny_config("train.deterministic=true", "train.steps=4"), tmp_path / "run", quiet())
        assert out["step"] == 4 and math.isfinite(out["eval/normalized_score"])
        Trainer(tiny_config(), tmp_path / "default", quiet())  # false: PyTorch's defaults again
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        restore_deterministic(before)


def test_a_run_directory_in_use_or_holding_a_sweep_is_refused(tmp_path):
    import os
    import platform

    from raydt.rundir import RunDir

    run = tmp_path / "twin"
    with RunDir(run).lock():  # a first `raydt train --out twin` still running
        with pytest.raises(RaydtError, match=f"in use by a run that is still going \\(pid {os.getpid()} on "
                                             f"{platform.node()}\\)"):
            run_training(tiny_config(), run, use_ray=False, log=lambda _: None)
    assert not (run / "metrics.jsonl").exists()
    run_training(tiny_config("train.steps=4"), run, use_ray=False, log=lambda _: None)  # free again
    sweep = tmp_path / "sweep"
    (sweep / "trial_00000").mkdir(parents=True)
    (sweep / "trial_00000" / "config.resolved.yaml").write_text("{}")
    with pytest.raises(RaydtError, match="holds other runs \\(trial_00000\\)"):
        run_training(tiny_config(), sweep, use_ray=False, log=lambda _: None)
    (sweep / "sweep.yaml").write_text("{}")
    with pytest.raises(RaydtError, match="holds a sweep \\(sweep.yaml\\)"):
        run_training(tiny_config(), sweep, use_ray=False, log=lambda _: None)


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A session that logged past its last checkpoint (step 4) before it stopped...
    fit(tiny_config("train.steps=8", "train.keep_checkpoints=[4]"), tmp_path, quiet())
    shutil.copy(tmp_path / "checkpoints" / "step_4.pt", tmp_path / "checkpoints" / "last.pt")
    # ...resumed from step 4: steps 6 and 8 are logged again, into a second event file.
    fit(tiny_config("train.steps=8", "train.keep_checkpoints=[4]"), tmp_path, quiet(), resume=True)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]  # not 2, 4, 6, 8, 6, 8
