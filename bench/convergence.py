"""Time to convergence, random init vs a language-pretrained backbone (Reid et al. Table 3).

Runs a sweep spec whose groups differ in ``model.backbone`` (seeds aggregated), then
applies raydt's convergence definition (``raydt.convergence``: first evaluation where the
seed-averaged normalized score is within 2 points of its best) and records, per group, the
best score, the convergence step and the training and total wall time to reach it, plus
the ratio of the language-pretrained group's times to the random group's.

    python -m bench.convergence                               # bench/specs/convergence_cpu.yaml (~30 min, 2 CPUs)
    python -m bench.convergence --spec bench/specs/convergence_gpu.yaml --name convergence_gpu
    python -m bench.convergence --from runs/bench_convergence_cpu  # analyse a finished sweep only
    python -m bench.convergence --smoke-test                  # two tiny in-process runs, nothing recorded
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import record
from raydt.convergence import convergence, format_table, plot

REPO = Path(__file__).resolve().parents[1]


def smoke_runs(root: Path) -> None:
    """Two seeds of a tiny random-init run in this process: exercises the analysis path."""
    from raydt.config import load_config
    from raydt.train.loop import RunContext, fit

    tiny = ["data.dataset=generated:hopper-medium?steps=3000", "data.context_length=5", "model.n_embd=32",
            "model.n_head=2", "model.n_layer=2", "train.steps=8", "train.eval_every=2", "train.log_every=2",
            "train.batch_size=8", "optim.warmup_steps=2", "eval.episodes=1", "resources.cpus_per_worker=1"]
    for seed in (0, 1):
        cfg = load_config(REPO / "tune_specs/runs/hopper_medium_dt.yaml", [*tiny, f"train.seed={seed}"])
        fit(cfg, root / f"seed{seed}", RunContext(log=lambda _: None))


def ratios(groups: list[dict]) -> dict[str, float]:
    """Language-pretrained over random: < 1 means the pre-trained backbone converged sooner."""
    random = [g for g in groups if g["group"].get("model.backbone") == "random"]
    others = [g for g in groups if g["group"].get("model.backbone") not in (None, "random")]
    if len(random) != 1 or not others:
        return {}
    out = {}
    for other in others:
        name = Path(str(other["group"]["model.backbone"])).stem
        for key in ("converged_step", "converged_train_seconds", "converged_total_seconds"):
            if random[0][key] and other[key] is not None:
                out[f"{name}/{key}"] = other[key] / random[0][key]
        out[f"{name}/best_score_difference"] = other["best_score"] - random[0]["best_score"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "bench/specs/convergence_cpu.yaml"))
    parser.add_argument("--out", default=str(REPO / "runs"), help="storage path of the sweep")
    parser.add_argument("--from", dest="from_dir", default=None, help="analyse this finished sweep instead of running one")
    parser.add_argument("--name", default="convergence_cpu", help="results file bench/results/<name>.json")
    parser.add_argument("--threshold", type=float, default=2.0)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()

    if args.smoke_test:
        root = Path(tempfile.mkdtemp(prefix="raydt-bench-"))
        smoke_runs(root)
        keys, results = convergence(root, by=["model.backbone"], threshold=args.threshold)
        print(format_table(keys, results))
        print("speedup: n/a (smoke test)")
        return
    if args.from_dir:
        sweep_dir = Path(args.from_dir)
    else:
        from raydt.tune.spec import load_sweep

        sweep_dir = Path(args.out) / load_sweep(args.spec).name
        cmd = [sys.executable, "-m", "raydt", "sweep", args.spec, "--out", args.out]
        if (sweep_dir / "sweep.yaml").exists():  # an interrupted benchmark goes on where it stopped
            cmd.append("--resume")
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    keys, results = convergence(sweep_dir, by=["model.backbone"], threshold=args.threshold)
    print(format_table(keys, results))
    groups = [r.summary() for r in results]
    result = {"spec": str(Path(args.spec).resolve().relative_to(REPO)) if not args.from_dir else None,
              "sweep_dir": str(sweep_dir), "threshold": args.threshold, "groups": groups,
              "pretrained_over_random": ratios(groups)}
    for key, value in result["pretrained_over_random"].items():
        print(f"{key}: {value:.2f}")
    png = plot(results, REPO / f"bench/results/{args.name}.png", title=args.name)
    print(record(args.name, result), png)


if __name__ == "__main__":
    main()
