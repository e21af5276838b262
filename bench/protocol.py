"""One cycle of the paper's protocol, end to end: N training steps, then E episodes at each
of the task's target returns, for raydt and for the published loop, in one invocation.

Same data (generated hopper-medium), same model size (DT: 128 wide, 3 layers, 1 head),
same batch (64 windows of K = 20), same threads. The published side is the original DT
code's shape, re-implemented as the other benchmarks do: per-sample batch slicing
(``bench.sampling.naive_batch``) feeding transformers' ``DecisionTransformerModel`` with
AdamW, then one episode at a time with a batch of one and histories grown every step
(``bench.evaluation.published_episode``). raydt's side is its ``Trainer`` (``train_step``
on its window sampler) and its evaluator (``raydt.eval.protocol.evaluate``).

    python -m bench.protocol [--steps 2500] [--episodes 100] [--threads 2] [--precision auto]
    python -m bench.protocol --smoke-test
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import record
from bench.evaluation import published_episode
from bench.throughput import hf_model, raydt_trainer, time_baseline
from raydt.data.sources import load_dataset
from raydt.eval.protocol import evaluate

DATASET = "generated:hopper-medium"


def raydt_cycle(trainer, steps: int, episodes: int, max_steps: int | None) -> dict[str, float]:
    batch = trainer.config.train.batch_size
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(trainer.sampler.sample(batch))
    train = time.perf_counter() - start
    task = trainer.eval_task()
    if max_steps:
        task = type(task)(**{**task.__dict__, "max_steps": max_steps})
    start = time.perf_counter()
    metrics, results = evaluate(trainer.model, task, episodes, seed=0)
    evaluation = time.perf_counter() - start
    env_steps = int(sum(r.lengths.sum() for r in results))
    return {"train_seconds": train, "eval_seconds": evaluation, "env_steps": env_steps,
            "mean_length": env_steps / (episodes * len(results)), "score": metrics.get("eval/normalized_score")}


def published_cycle(trainer, steps: int, episodes: int, max_steps: int | None) -> dict[str, float]:
    model = hf_model(trainer, torch.device("cpu"))
    traj = load_dataset(trainer.config.data.dataset, log=lambda _: None)
    batch, k = trainer.config.train.batch_size, trainer.config.data.context_length
    train = time_baseline(model, trainer, traj, batch, k, steps, torch.device("cpu")) * steps
    task = trainer.eval_task()
    horizon = max_steps or 1000
    model.eval()

    class Adapter(torch.nn.Module):  # the published get_action calls model(s, a, r, t, mask)
        def __init__(self, hf) -> None:
            super().__init__()
            self.hf, self.args = hf, trainer.model.args

        def forward(self, s, a, r, t, mask):
            return self.hf(states=s, actions=a, returns_to_go=r, timesteps=t, attention_mask=mask.long(),
                           return_dict=True).action_preds

    policy = Adapter(model)
    start = time.perf_counter()
    env_steps = 0
    for target in task.targets:
        for seed in range(episodes):
            _, length, _ = published_episode(policy, task.env_id, target, seed, task.state_mean, task.state_std,
                                             task.reward_scale, horizon)
            env_steps += length
    evaluation = time.perf_counter() - start
    return {"train_seconds": train, "eval_seconds": evaluation, "env_steps": env_steps,
            "mean_length": env_steps / (episodes * len(task.targets))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--episodes", type=int, default=100, help="episodes per target return")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="raydt's train.precision; the published loop stays fp32")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, episodes, max_steps = (2, 2, 20) if args.smoke_test else (args.steps, args.episodes, None)
    dataset = "generated:hopper-medium?steps=3000" if args.smoke_test else DATASET
    torch.manual_seed(0)
    trainer = raydt_trainer("dt", 8 if args.smoke_test else 64, 20, torch.device("cpu"), args.threads, False,
                            dataset, args.precision)
    ours = raydt_cycle(trainer, steps, episodes, max_steps)
    theirs = published_cycle(trainer, steps, episodes, max_steps)
    total = {side: r["train_seconds"] + r["eval_seconds"] for side, r in (("raydt", ours), ("published", theirs))}
    per_step = {side: 1e3 * r["eval_seconds"] / max(r["env_steps"], 1)
                for side, r in (("raydt", ours), ("published", theirs))}
    result = {
        "steps": steps, "episodes_per_target": episodes, "threads": args.threads, "precision": args.precision,
        "raydt": ours, "published": theirs, "total_seconds": total,
        "eval_ms_per_env_step": per_step,
        "speedup": total["published"] / total["raydt"],
        "train_speedup": theirs["train_seconds"] / ours["train_seconds"],
        "eval_speedup_per_env_step": per_step["published"] / per_step["raydt"],
    }
    rows = [("training", "train_seconds", "s"), ("evaluation", "eval_seconds", "s")]
    print(f"{'':24}{'raydt':>12}{'published':>12}{'ratio':>8}")
    for label, key, unit in rows:
        print(f"{label:24}{ours[key]:11.1f}{unit}{theirs[key]:11.1f}{unit}{theirs[key] / max(ours[key], 1e-9):7.2f}x")
    print(f"{'eval ms / env step':24}{per_step['raydt']:12.3f}{per_step['published']:12.3f}"
          f"{result['eval_speedup_per_env_step']:7.2f}x")
    print(f"{'env steps (mean length)':24}{ours['env_steps']:>7} ({ours['mean_length']:.0f}){theirs['env_steps']:>7} "
          f"({theirs['mean_length']:.0f})")
    print(f"{'whole cycle':24}{total['raydt']:11.1f}s{total['published']:11.1f}s{result['speedup']:7.2f}x")
    if not args.smoke_test:
        print(record(f"protocol_{args.precision}", result))
    assert np.isfinite(total["raydt"])


if __name__ == "__main__":
    main()
