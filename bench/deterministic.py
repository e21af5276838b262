"""The cost of ``train.deterministic``: training steps per second with and without it, in one
invocation.

Two Trainers of the same run (DT size, batch 64, K 20, generated hopper-medium), one built
with ``train.deterministic=true``. The switch is process-wide, so before each timed block
the block's own setting is applied again (:func:`raydt.seeding.set_deterministic`); the two
settings alternate block by block, so load from other processes on the machine falls on
both alike. Each setting is warmed up first; the cost is the ratio of the medians over the
repeats, and beside it the median of the ratios of adjacent blocks (steadier when other
processes load the machine in bursts).
The dataset's size does not enter a step's time (a batch gathers K rows per window), so a
10k-step dataset stands in for D4RL's 1M. On a GPU both sides run with the fixed cuBLAS
workspace, set before any CUDA work: cuBLAS sizes it once per process, so the ratio leaves
out whatever that workspace alone costs.

    python -m bench.deterministic [--steps 10] [--repeats 9] [--threads 2] [--precision auto]
    python -m bench.deterministic --smoke-test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench.common import record
from bench.throughput import raydt_trainer
from raydt.seeding import CUBLAS_WORKSPACE, restore_deterministic, set_deterministic

DATASET = "generated:hopper-medium?steps=10000"


def time_steps(trainer, steps: int) -> float:
    """Seconds per training step over ``steps`` steps, synchronised on a GPU."""
    batch = trainer.config.train.batch_size
    device = trainer.ctx.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(trainer.sampler.sample(batch))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=9, help="timed blocks per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="train.precision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before any CUDA work
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    smoke = args.smoke_test
    steps, repeats, warmup = (2, 1, 1) if smoke else (args.steps, args.repeats, args.warmup)
    size, batch, k = ("dt", 8, 5) if smoke else ("dt", 64, 20)
    dataset = "generated:hopper-medium?steps=3000" if smoke else DATASET
    before = set_deterministic(False)
    try:
        trainers = {}
        for mode in (False, True):  # the config says which; the Trainer applies it when built
            torch.manual_seed(0)
            trainers[mode] = raydt_trainer(size, batch, k, device, args.threads, False, dataset, args.precision,
                                           extra=[f"train.deterministic={str(mode).lower()}"])
        times: dict[bool, list[float]] = {False: [], True: []}
        for mode, trainer in trainers.items():
            set_deterministic(mode)
            time_steps(trainer, warmup)
        for _ in range(repeats):
            for mode, trainer in trainers.items():
                set_deterministic(mode)
                times[mode].append(time_steps(trainer, steps))
    finally:
        restore_deterministic(before)
    median = {mode: statistics.median(t) for mode, t in times.items()}
    result = {
        "size": size, "batch_size": batch, "context_length": k, "threads": args.threads,
        "precision": args.precision, "device": str(device), "steps": steps, "repeats": repeats,
        "seconds_per_step": {"default": median[False], "deterministic": median[True]},
        "all_seconds_per_step": {"default": times[False], "deterministic": times[True]},
        "cost": median[True] / median[False],
        "paired_cost": statistics.median(d / b for b, d in zip(times[False], times[True])),
    }
    print(f"{'':16}{'ms/step':>10}{'steps/s':>10}")
    for label, mode in (("default", False), ("deterministic", True)):
        print(f"{label:16}{1e3 * median[mode]:10.1f}{1 / median[mode]:10.2f}")
    print(f"cost (deterministic / default time per step, median of {repeats}): {result['cost']:.3f}x; "
          f"median of adjacent blocks' ratios {result['paired_cost']:.3f}x")
    if not smoke:
        print(record(f"deterministic_{device.type}_{args.precision}", result))


if __name__ == "__main__":
    main()
