"""Benchmarks stay runnable: each runs its --smoke-test (tiny sizes, no result written), and
bench/gpu_check.sh names files and flags that exist."""

import shlex
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize("module", ["bench.sampling", "bench.evaluation", "bench.throughput", "bench.convergence",
                                    "bench.dqn_replay_memory", "bench.protocol", "bench.deterministic"])
def test_benchmark_smoke(module):
    out = subprocess.run([sys.executable, "-m", module, "--smoke-test"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "speedup" in out or "whole cycle" in out or "cost (deterministic / default" in out


def test_mfu_counts_matmul_weights_not_embedding_tables():
    from bench.throughput import matmul_parameters
    from raydt.config import ModelConfig
    from raydt.model.build import build_model

    d, layers, obs, act = 32, 2, 5, 3
    model, _ = build_model(ModelConfig(n_embd=d, n_head=2, n_layer=layers), obs, act, 6, 1000, log=lambda _: None)
    # Per GPT-2 block: c_attn d×3d, attention c_proj d×d, c_fc d×4d, MLP c_proj 4d×d = 12d².
    # DT: return (1×d), state (obs×d) and action (act×d) embeddings, the action head (d×act).
    assert matmul_parameters(model) == layers * 12 * d * d + d * (1 + obs + act) + d * act
    total = sum(p.numel() for p in model.parameters())
    assert total - matmul_parameters(model) > 1000 * d  # the timestep table is not counted


def test_a_resumed_sweep_keeps_its_earlier_sessions_and_idle_is_counted_over_them(tmp_path, monkeypatch):
    import json

    import raydt.tune.run as tune_run
    from bench.sweep_efficiency import analyse

    sweep = tmp_path / "sweep"
    trial = sweep / "trial_00000"
    trial.mkdir(parents=True)
    # One trial of 60 s wall (started at t=10) in a sweep of concurrency 1.
    (trial / "trial_timing.json").write_text(json.dumps({"started": 10.0, "finished": 70.0}))
    (trial / "timing.json").write_text(json.dumps({"setup_seconds": 5.0, "loop_seconds": 40.0,
                                                   "train_seconds": 20.0, "eval_seconds": 10.0}))
    clock = iter([80.0, 200.0])  # the end of each session
    monkeypatch.setattr(tune_run.time, "time", lambda: next(clock))
    timing = str(sweep / "timing.json")
    tune_run._record_session(timing, 0.0, 1, resume=False)     # 0..80 s: the trial ran
    tune_run._record_session(timing, 180.0, 1, resume=True)    # 180..200 s: resumed, nothing left
    saved = json.loads((sweep / "timing.json").read_text())
    assert [(s["started"], s["finished"]) for s in saved["sessions"]] == [(0.0, 80.0), (180.0, 200.0)]
    assert (saved["started"], saved["finished"]) == (0.0, 200.0)
    eff = analyse(sweep)
    assert eff["sweep_seconds"] == 100.0 and eff["sessions"] == 2  # the 100 s between sessions are not the sweep's
    assert eff["sweep_idle_share"] == pytest.approx(1 - 60 / 100)
    assert eff["trials"]["trial_00000"]["ray_train_start_stop"] == pytest.approx(60 - 20 - 10 - 5 - 10)
    # A sweep written before sessions were recorded is one session.
    (sweep / "timing.json").write_text(json.dumps({"started": 0.0, "finished": 80.0, "concurrency": 1}))
    assert analyse(sweep)["sweep_idle_share"] == pytest.approx(1 - 60 / 80)


def gpu_check_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of each ``python -m`` line of bench/gpu_check.sh."""
    commands = []
    for line in (REPO / "bench/gpu_check.sh").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["python", "-m"]:
            commands.append((words[2], words[3:]))
    return commands


def test_gpu_check_names_files_that_exist():
    # The script runs only on a lent GPU, where a moved file costs the whole (short) loan.
    commands = gpu_check_commands()
    assert {module for module, _ in commands} >= {"pytest", "bench.throughput", "bench.convergence", "bench.prepare",
                                                  "bench.gpu_sweep", "bench.gpu_tables"}
    for module, args in commands:
        if module.startswith("bench."):
            assert (REPO / f"{module.replace('.', '/')}.py").is_file(), module
        for word in args:
            if "/" in word and not word.startswith("-"):
                assert (REPO / word).exists(), f"bench/gpu_check.sh: python -m {module} … {word}: no such file"


def test_gpu_check_flags_are_accepted_by_each_benchmark(monkeypatch):
    import argparse
    import importlib

    class Built(Exception):
        def __init__(self, parser):
            self.parser = parser

    def stop(parser, *_args, **_kwargs):
        raise Built(parser)

    parse = argparse.ArgumentParser.parse_args
    for module, args in gpu_check_commands():
        if not module.startswith("bench."):
            continue
        # Each benchmark builds its parser inside main(): stop main() there to get it.
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
        with pytest.raises(Built) as built:
            importlib.import_module(module).main()
        monkeypatch.undo()
        try:
            parse(built.value.parser, args)
        except SystemExit:
            pytest.fail(f"bench/gpu_check.sh: python -m {module} {shlex.join(args)}: refused by its parser")


def test_compile_table_counts_sizes_up_to_the_first_that_did_not_win():
    from bench.gpu_tables import compile_wins_up_to

    eager = [{"size": "dt", "raydt_steps_per_second": 100.0}, {"size": "3m", "raydt_steps_per_second": 50.0},
             {"size": "18m", "raydt_steps_per_second": 10.0}]
    compiled = [{"size": "3m", "parameters": 3_700_000, "raydt_steps_per_second": 60.0},
                {"size": "dt", "parameters": 900_000, "raydt_steps_per_second": 180.0},
                {"size": "18m", "parameters": 20_000_000, "raydt_steps_per_second": 30.0}]
    assert compile_wins_up_to(eager, compiled) == 20_000_000  # 1.8x, 1.2x and 3x: every size won
    compiled[0]["raydt_steps_per_second"] = 52.0  # 3m: 1.04x, not a win: stop there, though 18m won
    assert compile_wins_up_to(eager, compiled) == 900_000
    compiled[1]["raydt_steps_per_second"] = 90.0  # dt lost: nothing
    assert compile_wins_up_to(eager, compiled) is None


def test_a_share_is_suggested_only_where_it_beat_a_whole_gpu():
    from bench.gpu_sweep import suggested_shares

    whole = {"share": 1.0, "exit_status": 0, "trials_per_gpu_hour": 100.0}
    quarter = {"share": 0.25, "exit_status": 0, "trials_per_gpu_hour": 250.0}
    half = {"share": 0.5, "exit_status": 0, "trials_per_gpu_hour": 105.0}
    assert suggested_shares([whole, half, quarter]) == {"dt": 0.25}
    assert suggested_shares([whole, half]) == {}  # 1.05x is not a win
    assert suggested_shares([whole, dict(quarter, exit_status=1)]) == {}  # a trial failed
    assert suggested_shares([quarter]) == {}  # no whole-GPU baseline


@pytest.mark.ray
def test_gpu_sweep_benchmark_runs_its_sweeps_and_reads_them_back(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.gpu_sweep", "--smoke-test", "--shares", "1", "0.5",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "speedup (trials per GPU-hour), share 0.5 vs 1" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "0.5 "))]
    assert [r[:2] for r in rows] == [["1", "2"], ["0.5", "2"]]  # both trials of each setting read back
