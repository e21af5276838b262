"""Sweeps, not steps: the same 16-trial DT-size sweep with a whole GPU per trial and with a
share of one (``resources.gpus_per_worker``), in one invocation.

Per setting: wall time, trials per GPU-hour, the GPU's mean utilisation (``nvidia-smi``
sampled every half second), each trial's steps per second and peak device memory (from its
``timing.json`` and metrics), and the time to the convergence threshold (raydt's definition:
the first evaluation whose seed-averaged score is within 2 points of the best; the mean over
the learning-rate groups of the wall seconds to reach it). Then the ratio of trials per
GPU-hour, and the entries to put in raydt's measured tables where sharing won
(``raydt.resources.MEASURED_GPU_SHARES``).

    python -m bench.gpu_sweep                          # shares 1 and 0.25, bench/specs/gpu_share.yaml
    python -m bench.gpu_sweep --shares 1 0.5 0.25
    python -m bench.gpu_sweep --smoke-test             # 2 tiny CPU trials through the same path
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import record
from raydt.convergence import convergence
from raydt.tune.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "bench/specs/gpu_share.yaml"
SMOKE = ["data.dataset=generated:hopper-medium?steps=3000", "data.context_length=5", "model.n_embd=32",
         "model.n_head=2", "model.n_layer=2", "train.steps=8", "train.eval_every=4", "train.log_every=4",
         "train.batch_size=8", "optim.warmup_steps=2", "eval.episodes=1", "resources.cpus_per_worker=1",
         "resources.use_gpu=false"]
WIN = 1.1
"""A share goes in the measured table when it gives at least this many times the trials per
GPU-hour of a whole GPU, with no trial failed."""


class Utilisation:
    """The GPU's utilisation sampled by ``nvidia-smi`` every 500 ms while a sweep runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                continue

    def stop(self) -> float | None:
        """Mean utilisation in percent (None without nvidia-smi)."""
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        return sum(self.samples) / len(self.samples) if self.samples else None


def gpu_count() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def trial_facts(sweep_dir: Path) -> list[dict]:
    """Each trial's steps per second (its last logged value), peak device memory and status."""
    facts = []
    for metrics in sorted(sweep_dir.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        speeds = [r["perf/steps_per_second"] for r in rows if "perf/steps_per_second" in r]
        timing = metrics.parent / "timing.json"
        peak = json.loads(timing.read_text()).get("peak_device_memory_bytes") if timing.exists() else None
        facts.append({"trial": metrics.parent.name, "steps_per_second": speeds[-1] if speeds else None,
                      "peak_device_memory_bytes": peak, "last_step": rows[-1].get("step") if rows else None})
    return facts


def run_setting(spec: Path, share: float, root: Path, extra: list[str]) -> dict:
    """One sweep of ``spec`` at ``share`` GPUs per trial, timed and read back."""
    out = root / f"share_{share:g}"
    name = load_sweep(spec).name
    cmd = [sys.executable, "-m", "raydt", "sweep", str(spec), "--out", str(out),
           "--set", f"resources.gpus_per_worker={share:g}", *[a for s in extra for a in ("--set", s)]]
    monitor = Utilisation()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - start
    utilisation = monitor.stop()
    sweep_dir = out / name
    trials = trial_facts(sweep_dir)
    _, groups = convergence(sweep_dir)
    reach = [g.converged_total_seconds for g in groups if g.converged_total_seconds is not None]
    gpus = gpu_count()
    speeds = [t["steps_per_second"] for t in trials if t["steps_per_second"]]
    peaks = [t["peak_device_memory_bytes"] for t in trials if t["peak_device_memory_bytes"]]
    return {
        "share": share, "exit_status": done.returncode, "trials": len(trials), "wall_seconds": wall,
        "trials_per_gpu_hour": len(trials) / (wall / 3600 * gpus) if wall else math.nan,
        "gpu_utilisation_mean": utilisation,
        "steps_per_second_mean": sum(speeds) / len(speeds) if speeds else None,
        "peak_device_memory_bytes_max": max(peaks) if peaks else None,
        "seconds_to_convergence_mean": sum(reach) / len(reach) if reach else None,
        "trial_facts": trials,
    }


def suggested_shares(results: list[dict], model: str = "dt") -> dict[str, float]:
    """``{model: share}`` for the smallest share that beat a whole GPU by :data:`WIN` with
    every trial finished; empty when none did (or no whole-GPU baseline ran)."""
    whole = next((r for r in results if r["share"] == 1 and r["exit_status"] == 0), None)
    if whole is None:
        return {}
    wins = [r for r in results if r["share"] < 1 and r["exit_status"] == 0
            and r["trials_per_gpu_hour"] >= WIN * whole["trials_per_gpu_hour"]]
    return {model: min(r["share"] for r in wins)} if wins else {}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(SPEC))
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--out", default=None, help="where the sweeps go (default: a temporary folder)")
    parser.add_argument("--name", default="gpu_sweep")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    for share in args.shares:
        if not 0 < share <= 1:
            parser.error(f"--shares: {share:g} is not a share of one GPU (0 < share <= 1)")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="raydt-gpu-sweep-"))
    spec, extra = Path(args.spec), []
    if args.smoke_test:  # two tiny CPU trials per setting, through the same path
        spec, extra = root / "smoke.yaml", SMOKE
        root.mkdir(parents=True, exist_ok=True)
        spec.write_text(f"extends: {REPO / 'tune_specs/runs/hopper_medium_dt.yaml'}\n"
                        "search:\n  train.seed: {grid: [0, 1]}\ntune:\n  name: smoke\n")
    results = [run_setting(spec, share, root, extra) for share in args.shares]
    print(f"\n{'share':>6} {'trials':>6} {'wall s':>8} {'trials/GPU-h':>13} {'GPU util %':>10} "
          f"{'steps/s':>8} {'peak MiB':>9} {'s to converge':>13}")
    for r in results:
        peak = r["peak_device_memory_bytes_max"]
        print(f"{r['share']:>6g} {r['trials']:>6} {r['wall_seconds']:>8.1f} {r['trials_per_gpu_hour']:>13.1f} "
              f"{_fmt(r['gpu_utilisation_mean'], '.1f'):>10} {_fmt(r['steps_per_second_mean'], '.1f'):>8} "
              f"{_fmt(None if peak is None else peak / 2**20, '.0f'):>9} "
              f"{_fmt(r['seconds_to_convergence_mean'], '.1f'):>13}")
    base = results[0]["trials_per_gpu_hour"]
    for r in results[1:]:
        print(f"speedup (trials per GPU-hour), share {r['share']:g} vs {results[0]['share']:g}: "
              f"{r['trials_per_gpu_hour'] / base:.2f}x")
    shares = suggested_shares(results)
    print(f"raydt.resources.MEASURED_GPU_SHARES entries this measurement supports: {shares or 'none'}")
    if args.smoke_test:
        return
    print(f"recorded {record(args.name, {'spec': args.spec, 'results': results, 'suggested_shares': shares})}")
    if any(r["exit_status"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
