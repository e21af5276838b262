"""Evaluation speed: 10 episodes × 1 target, batched across episodes vs one at a time.

Both use the same DT-size model and the same episode seeds in the same invocation; the
baseline runs each episode alone with a batch of one (the published code's way).
Target: ≥ 5× on a CPU.

    python bench/evaluation.py [--episodes 10] [--smoke-test]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import record
from raydt.config import ModelConfig
from raydt.eval.rollout import rollout
from raydt.model.build import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--env-id", default="HalfCheetah-v4", help="an env whose episodes all run the full horizon")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    episodes, steps = (2, 20) if args.smoke_test else (args.episodes, args.max_steps)
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), 17, 6, 20, 1000)
    model.eval()
    mean, std = np.zeros(17), np.ones(17)
    seeds = list(range(episodes))

    start = time.perf_counter()
    batched = rollout(model, args.env_id, 6000, seeds, mean, std, 1e-3, max_steps=steps)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    alone = [rollout(model, args.env_id, 6000, [s], mean, std, 1e-3, max_steps=steps) for s in seeds]
    t_alone = time.perf_counter() - start
    env_steps = int(batched.lengths.sum())
    assert env_steps == sum(int(a.lengths.sum()) for a in alone)
    result = {
        "env_id": args.env_id, "episodes": episodes, "env_steps": env_steps,
        "batched_seconds": t_batched, "one_by_one_seconds": t_alone, "speedup": t_alone / t_batched,
    }
    print(f"batched:    {t_batched:7.2f} s for {episodes} episodes ({env_steps} env steps)")
    print(f"one by one: {t_alone:7.2f} s")
    print(f"speedup:    {result['speedup']:.1f}x (target >= 5x)")
    if not args.smoke_test:
        print(record("evaluation", result))


if __name__ == "__main__":
    main()
