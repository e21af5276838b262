"""Benchmarks stay runnable: each runs its --smoke-test (tiny sizes, no result written)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["bench.sampling", "bench.evaluation", "bench.throughput", "bench.convergence",
                                    "bench.dqn_replay_memory", "bench.protocol"])
def test_benchmark_smoke(module):
    out = subprocess.run([sys.executable, "-m", module, "--smoke-test"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "speedup" in out or "whole cycle" in out


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
