"""Sweep efficiency: where a sweep's wall time goes, training and evaluation vs Ray/Tune.

Reads the timing files a sweep leaves (``timing.json`` of the sweep, ``trial_timing.json``
of each trial from the Tune trial function, ``timing.json`` of each run from the training
loop) and splits every trial's wall time into

- ``train``: training steps (sampling, forward, backward, optimizer);
- ``eval``: evaluation rollouts;
- ``setup``: dataset loading and model building inside the training worker;
- ``checkpoint_report``: checkpoint writes and ``ray.train.report`` (sync to storage);
- ``ray_train_start_stop``: the rest of the trial: Ray Train's worker group start-up and
  shutdown, Tune's reporting of the final result;

and the sweep's wall time × concurrency into the trials' time and ``idle`` (Tune start-up,
scheduling gaps, waves that do not fill the cluster).

    python -m bench.sweep_efficiency                    # runs tune_specs/quickstart.yaml (~15 min)
    python -m bench.sweep_efficiency --from runs/quickstart   # analyse a finished sweep
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import record

REPO = Path(__file__).resolve().parents[1]
PARTS = ("train", "eval", "setup", "checkpoint_report", "ray_train_start_stop")


def trial_parts(trial_dir: Path) -> dict[str, float]:
    """Seconds of each part of one trial (the latest session of a resumed trial)."""
    outer = json.loads((trial_dir / "trial_timing.json").read_text())
    inner = json.loads((trial_dir / "timing.json").read_text())
    wall = outer["finished"] - outer["started"]
    other = inner["loop_seconds"] - inner["train_seconds"] - inner["eval_seconds"]
    parts = {
        "train": inner["train_seconds"], "eval": inner["eval_seconds"], "setup": inner["setup_seconds"],
        "checkpoint_report": other,
    }
    parts["ray_train_start_stop"] = wall - sum(parts.values())
    return {"wall": wall, **parts}


def analyse(sweep_dir: Path) -> dict[str, Any]:
    """Per-trial parts, their totals and shares, and the sweep's idle share."""
    sweep = json.loads((sweep_dir / "timing.json").read_text())
    trials = {}
    for trial_dir in sorted(sweep_dir.glob("trial_*")):
        if (trial_dir / "trial_timing.json").is_file() and (trial_dir / "timing.json").is_file():
            trials[trial_dir.name] = trial_parts(trial_dir)
    if not trials:
        raise SystemExit(f"{sweep_dir}: no trial with timing files (trial_timing.json and timing.json)")
    totals = {k: sum(t[k] for t in trials.values()) for k in ("wall", *PARTS)}
    shares = {k: totals[k] / totals["wall"] for k in PARTS}
    # A resumed sweep lists its sessions; the time between them is nobody's.
    sessions = sweep.get("sessions", [sweep])
    capacity = sum((s["finished"] - s["started"]) * s["concurrency"] for s in sessions)
    return {
        "sweep_dir": str(sweep_dir),
        "sweep_seconds": sum(s["finished"] - s["started"] for s in sessions),
        "sessions": len(sessions),
        "concurrency": sweep["concurrency"],
        "trials": trials,
        "trial_seconds": totals,
        "trial_shares": shares,
        "train_and_eval_share": shares["train"] + shares["eval"],
        "sweep_idle_share": 1 - totals["wall"] / capacity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "tune_specs/quickstart.yaml"))
    parser.add_argument("--out", default=str(REPO / "runs/bench"), help="storage path of the sweep")
    parser.add_argument("--from", dest="from_dir", default=None, help="analyse this finished sweep")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    if args.from_dir:
        sweep_dir = Path(args.from_dir)
    else:
        from raydt.tune.spec import load_sweep

        sweep_dir = Path(args.out) / load_sweep(args.spec).name
        subprocess.run([sys.executable, "-m", "raydt", "sweep", args.spec, "--out", args.out], check=True)
    result = analyse(sweep_dir)
    print(f"sweep {sweep_dir.name}: {result['sweep_seconds']:.0f} s wall, {len(result['trials'])} trials, "
          f"{result['concurrency']} at a time")
    print(f"{'trial':<13}{'wall s':>8}" + "".join(f"{p:>22}" for p in PARTS))
    for name, t in result["trials"].items():
        print(f"{name:<13}{t['wall']:8.1f}" + "".join(f"{t[p]:13.1f} ({t[p] / t['wall']:5.1%})" for p in PARTS))
    shares = result["trial_shares"]
    print("share of trial time: " + ", ".join(f"{p} {shares[p]:.1%}" for p in PARTS))
    print(f"training + evaluation: {result['train_and_eval_share']:.1%} of trial time; "
          f"sweep capacity left idle: {result['sweep_idle_share']:.1%}")
    if not args.no_record:
        print(record("sweep_efficiency", result))


if __name__ == "__main__":
    main()
