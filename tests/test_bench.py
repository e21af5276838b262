"""Benchmarks stay runnable: each runs its --smoke-test (tiny sizes, no result written)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["bench.sampling", "bench.evaluation", "bench.throughput", "bench.convergence",
                                    "bench.dqn_replay_memory"])
def test_benchmark_smoke(module):
    out = subprocess.run([sys.executable, "-m", module, "--smoke-test"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "speedup" in out
