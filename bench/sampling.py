"""Windows per second: raydt's vectorised sampler vs a per-sample Python slicer.

The baseline is the original DT's ``get_batch`` pattern (a Python loop over the batch that
slices each episode, pads and normalises), run in the same invocation on the same data.
Target: ≥ 20×.

    python bench/sampling.py [--uri generated:hopper-medium?steps=100000] [--smoke-test]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import median_seconds, record
from raydt.data.sampler import ACTION_PAD, WindowSampler
from raydt.data.sources import load_dataset


def naive_batch(traj, rng, batch_size, k, scale, mean, std):
    """Per-sample slicing as in the original DT code (episode ∝ length, start uniform)."""
    p = traj.lengths / traj.lengths.sum()
    episodes = rng.choice(len(traj.lengths), size=batch_size, p=p)
    s, a, r, t, m = [], [], [], [], []
    for e in episodes:
        start, length = traj.starts[e], traj.lengths[e]
        si = rng.integers(0, length)
        sl = slice(start + si, start + min(si + k, length))
        obs = (traj.observations[sl] - mean) / std
        n = obs.shape[0]
        pad = k - n
        s.append(np.concatenate([np.zeros((pad, traj.obs_dim)), obs]))
        a.append(np.concatenate([np.full((pad, traj.act_dim), ACTION_PAD), traj.actions[sl]]))
        r.append(np.concatenate([np.zeros(pad), traj.returns_to_go[sl] * scale])[:, None])
        t.append(np.concatenate([np.zeros(pad), traj.timesteps[sl]]))
        m.append(np.concatenate([np.zeros(pad), np.ones(n)]))
    return [torch.from_numpy(np.stack(x)).float() for x in (s, a, r, t, m)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="generated:hopper-medium?steps=100000")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--context-length", type=int, default=20)
    parser.add_argument("--smoke-test", action="store_true", help="a tiny run to check the script works")
    args = parser.parse_args()
    uri = "generated:hopper-medium?steps=5000" if args.smoke_test else args.uri
    traj = load_dataset(uri)
    k, b = args.context_length, args.batch_size
    sampler = WindowSampler(traj, k, reward_scale=1e-3)
    mean, std = sampler.state_mean, sampler.state_std
    rng = np.random.default_rng(0)
    batches = 5 if args.smoke_test else 200

    def ours():
        for _ in range(batches):
            sampler.sample(b)

    def baseline():
        for _ in range(batches):
            naive_batch(traj, rng, b, k, 1e-3, mean, std)

    t_ours = median_seconds(ours)
    t_base = median_seconds(baseline)
    result = {
        "dataset": uri,
        "batch_size": b,
        "context_length": k,
        "raydt_windows_per_second": batches * b / t_ours,
        "baseline_windows_per_second": batches * b / t_base,
        "speedup": t_base / t_ours,
    }
    print(f"raydt:    {result['raydt_windows_per_second']:12,.0f} windows/s")
    print(f"baseline: {result['baseline_windows_per_second']:12,.0f} windows/s")
    print(f"speedup:  {result['speedup']:.1f}x (target >= 20x)")
    if not args.smoke_test:
        print(record("sampling", result))


if __name__ == "__main__":
    main()
