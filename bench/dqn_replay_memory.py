"""Peak memory of the DQN-replay reader for 500k transitions (target: well under 8 GB).

Writes synthetic Dopamine checkpoints (episodes of a moving block on a dark screen, padding
transitions included) to a scratch folder, then reads ``--steps`` transitions in a fresh
process and reports its peak resident memory next to the 3.5 GB the frames themselves take
(4-frame stacks would take 14 GB).

    python -m bench.dqn_replay_memory [--steps 500000] [--dir /tmp/raydt-dqn-replay]
    python -m bench.dqn_replay_memory --smoke-test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import record


def synthetic_checkpoints(directory: Path, transitions: int, per_checkpoint: int, episode_length: int) -> None:
    from raydt.data.dqn_replay import dopamine_layout, write_checkpoint

    rng = np.random.default_rng(0)
    per_ckpt_episodes = per_checkpoint // (episode_length + 3)
    n_ckpt = -(-transitions // (per_ckpt_episodes * episode_length))
    for index in range(n_ckpt):
        episodes = []
        for e in range(per_ckpt_episodes):
            t = np.arange(episode_length)
            frames = np.zeros((episode_length, 84, 84), np.uint8)
            rows = (t + e) % 76  # a 8×8 block moving down the screen
            for dy in range(8):
                frames[t, rows + dy, 40:48] = 200
            episodes.append((frames, rng.integers(0, 6, episode_length), (rng.random(episode_length) < 0.05).astype(np.float32)))
        write_checkpoint(directory, index, *dopamine_layout(episodes))


def read_in_child(directory: Path, steps: int, capacity: int) -> dict:
    code = (
        "import json, resource, time\n"
        "from raydt.data.dqn_replay import read_dqn_replay\n"
        "t = time.perf_counter()\n"
        f"d = read_dqn_replay({str(directory)!r}, num_steps={steps}, buffer_capacity={capacity}, log=lambda _: None)\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'num_steps': d.num_steps,\n"
        "  'num_episodes': d.num_episodes, 'frames_bytes': int(d.frames.nbytes),\n"
        "  'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--dir", default=None, help="scratch folder for the checkpoints (default: a temporary one)")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    steps = 2_000 if args.smoke_test else args.steps
    per_ckpt, length = (1_000, 97) if args.smoke_test else (100_000, 997)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="raydt-dqn-replay-"))
    start = time.perf_counter()
    if not any(directory.glob("$store$_observation_ckpt.*.gz")):
        synthetic_checkpoints(directory, steps, per_ckpt, length)
    written = time.perf_counter() - start
    result = read_in_child(directory, steps, per_ckpt)
    result |= {"write_seconds": written, "disk_bytes": sum(p.stat().st_size for p in directory.iterdir()),
               "baseline_stacked_bytes": 4 * result["frames_bytes"]}
    gb = 1 << 30
    print(f"read {result['num_steps']:,} transitions ({result['num_episodes']} episodes) in {result['seconds']:.1f} s")
    print(f"peak RSS {result['peak_rss_bytes'] / gb:.2f} GiB; frames {result['frames_bytes'] / gb:.2f} GiB; "
          f"pre-stacked states would be {result['baseline_stacked_bytes'] / gb:.2f} GiB")
    print(f"speedup: {result['baseline_stacked_bytes'] / result['peak_rss_bytes']:.1f}x less memory than stacked frames")
    if not args.smoke_test:
        print(record("dqn_replay_memory", result))


if __name__ == "__main__":
    main()
