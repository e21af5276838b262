"""The values of raydt's measured tables that a GPU run supports, read from its results.

``train.compile: auto`` compiles models up to ``raydt.precision.COMPILE_WINS_UP_TO``
parameters, and ``resources.gpus_per_worker: auto`` takes ``raydt.resources.MEASURED_GPU_SHARES``;
both are empty until a GPU has measured them. After ``bench/gpu_check.sh`` this prints
what its results support (and records it in ``bench/results/gpu_tables.json``):

- compile: the largest size whose compiled training step (CUDA graphs) ran at least 1.1×
  the eager step's rate, every smaller size measured having won too
  (``throughput_gpu.json`` vs ``throughput_gpu_compile.json``);
- shares: ``bench/gpu_sweep.py``'s suggestion (``gpu_sweep.json``).

    python -m bench.gpu_tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS, record

WIN = 1.1
"""Compiled steps per second over eager steps per second that counts as a win."""


def compile_wins_up_to(eager: list[dict], compiled: list[dict], win: float = WIN) -> int | None:
    """Parameters of the largest size in ``compiled`` (rows of bench.throughput) that beat
    its eager row by ``win``, counting up from the smallest and stopping at the first loss."""
    rate = {row["size"]: row["raydt_steps_per_second"] for row in eager}
    best = None
    for row in sorted(compiled, key=lambda r: r["parameters"]):
        if row["size"] not in rate or row["raydt_steps_per_second"] < win * rate[row["size"]]:
            break
        best = row["parameters"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    folder = Path(args.results)

    def read(name: str) -> dict | None:
        path = folder / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    eager, compiled, sweep = read("throughput_gpu"), read("throughput_gpu_compile"), read("gpu_sweep")
    wins = compile_wins_up_to(eager["sizes"], compiled["sizes"]) if eager and compiled else None
    shares = (sweep or {}).get("suggested_shares", {})
    print(f"raydt.precision.COMPILE_WINS_UP_TO = {wins}"
          + ("" if eager and compiled else "  (throughput_gpu*.json missing)"))
    print(f"raydt.resources.MEASURED_GPU_SHARES = {shares}" + ("" if sweep else "  (gpu_sweep.json missing)"))
    record("gpu_tables", {"compile_wins_up_to": wins, "measured_gpu_shares": shares})


if __name__ == "__main__":
    main()
