"""The ``raydt`` command: parse arguments, call one library function, print.

User mistakes (:class:`raydt.errors.RaydtError`) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from raydt.errors import RaydtError, RunFailed
from raydt.fsutil import data_dir, writable_dir
from raydt.rundir import RunDir, SweepDir
from raydt.storage import Mirror, is_uri, join, local_view


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# numeric options: argparse types that refuse a value that cannot work before any work
# starts. They raise RaydtError, which argparse lets through (it catches only ValueError,
# TypeError and ArgumentTypeError), so main prints it as one error: line, exit status 2.


def _whole(option: str, least: int, wanted: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise RaydtError(f"{option} {text}: not a whole number; give {wanted}") from None
        if value < least:
            raise RaydtError(f"{option} {text}: give {wanted}")
        return value

    return parse


def positive_int(option: str):
    """A whole number ≥ 1 (counts: episodes, steps, replications, windows)."""
    return _whole(option, 1, "a positive number")


def nonnegative_int(option: str):
    """A whole number ≥ 0 (seeds)."""
    return _whole(option, 0, "0 or a positive number")


def finite_float(option: str, least: float | None = None):
    """A finite number (NaN and ±inf refused), at least ``least`` when given."""
    wanted = "a finite number" if least is None else f"a finite number ≥ {least:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise RaydtError(f"{option} {text}: not a number; give {wanted}") from None
        if not math.isfinite(value) or (least is not None and value < least):
            raise RaydtError(f"{option} {text}: give {wanted}")
        return value

    return parse


def kept_step(option: str):
    """A kept checkpoint's step (a whole number ≥ 0) or "last"."""
    step = _whole(option, 0, "a kept step (0 or a positive number) or last")
    return lambda text: text if text == "last" else step(text)


# --------------------------------------------------------------------------------------
# spec


def cmd_spec_show(args: argparse.Namespace) -> int:
    from raydt.config import load_config, read_spec, to_yaml

    if {"search", "tune"} & set(read_spec(args.file).values):  # a sweep spec: its run part, search and tune
        from raydt.tune.spec import load_sweep, sweep_yaml

        sys.stdout.write(sweep_yaml(load_sweep(args.file, args.set), doc=args.doc))
        return 0
    if "corpus" in {key.split(".", 1)[0] for key in read_spec(args.file).values}:  # a pre-training spec
        from raydt.pretrain.config import load_pretrain_config

        sys.stdout.write(to_yaml(load_pretrain_config(args.file, args.set), doc=args.doc))
        return 0
    config = load_config(args.file, args.set)
    sys.stdout.write(to_yaml(config, doc=args.doc))
    return 0


# --------------------------------------------------------------------------------------
# data


def cmd_data_info(args: argparse.Namespace) -> int:
    from raydt.data.sources import load_dataset

    info = load_dataset(args.uri, log=_log).info()
    if args.json:
        print(json.dumps(info))
        return 0
    rows = [
        ("source", info["source"]),
        ("environment", info["env_id"] or "unknown"),
        ("episodes", f"{info['num_episodes']} ({info['num_terminal_episodes']} ended by the environment)"),
        ("transitions", info["num_steps"]),
        ("obs / act dim", f"{info['obs_dim']} / {info['act_dim']}"),
        ("episode length", f"{info['episode_length_mean']:.1f} mean"),
        ("return", f"{info['return_mean']:.1f} ± {info['return_std']:.1f} "
                   f"(min {info['return_min']:.1f}, max {info['return_max']:.1f})"),
    ]
    if "normalized_return_mean" in info:
        rows.append(("normalized return", f"{info['normalized_return_mean']:.1f} ± "
                     f"{info['normalized_return_std']:.1f} (D4RL scale, {info['task']})"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def cmd_data_make(args: argparse.Namespace) -> int:
    from raydt.data.generate import make_dataset, parse_generated
    from raydt.data.sources import split_uri

    scheme, body = split_uri(args.uri)
    if scheme != "generated":
        raise RaydtError(
            f"raydt data make makes generated: datasets only, not {args.uri!r}; "
            "for example raydt data make generated:hopper-medium --steps 100000"
        )
    spec = parse_generated(body, steps=args.steps, seed=args.seed)
    path = make_dataset(spec, force=args.force, log=_log)
    print(json.dumps({"uri": spec.uri, "path": str(path)}))
    return 0


def cmd_data_train_policy(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from raydt.data.ars import ARS_DEFAULTS, train_ars
    from raydt.data.generate import policy_file
    from raydt.data.tasks import get_task

    task = get_task(args.task)
    settings = ARS_DEFAULTS[task.name]
    if args.env_steps is not None:
        settings = replace(settings, env_steps=args.env_steps)
    out = Path(args.out) if args.out else policy_file(task.name)
    train_ars(task, settings, seed=args.seed, env_version=args.env, out=out, log=_log)
    print(json.dumps({"task": task.name, "path": str(out)}))
    return 0


# --------------------------------------------------------------------------------------
# train / eval


def cmd_train(args: argparse.Namespace) -> int:
    from raydt.config import load_config
    from raydt.train.driver import run_training

    config = load_config(args.spec, args.set)
    # A URI (s3://…, file:// on a shared filesystem): rank 0 stages the run on its node and
    # mirrors it there, and the results are read back from it, wherever rank 0 ran.
    run_dir: Path | str = args.out.rstrip("/") if args.out and is_uri(args.out) else \
        writable_dir(Path(args.out) if args.out else Path("runs") / Path(args.spec).stem, "--out")
    writable_dir(data_dir(), "RAYDT_DATA_DIR (raydt's data cache)")
    try:
        metrics = run_training(
            config, run_dir, use_ray=not args.no_ray, resume=args.resume, overwrite=args.overwrite,
            address=args.address, log=_log,
        )
    except KeyboardInterrupt:
        from raydt import storage
        from raydt.rundir import RunDir, last_checkpoint_uri

        kept = storage.exists(last_checkpoint_uri(str(run_dir))) if is_uri(run_dir) else RunDir(Path(run_dir)).last.is_file()
        again = ["raydt", "train", args.spec, *(a for s in args.set or [] for a in ("--set", s)), "--out", str(run_dir),
                 *(["--address", args.address] if args.address else []), *(["--no-ray"] if args.no_ray else [])]
        if kept:
            print(f"error: training interrupted; {run_dir} keeps its last checkpoint; continue with: "
                  f"{shlex.join([*again, '--resume'])}", file=sys.stderr)
        else:
            print(f"error: training interrupted before its first checkpoint (written at each evaluation); start "
                  f"again with: {shlex.join([*again, '--overwrite'])}", file=sys.stderr)
        return 130
    summary = {k: metrics[k] for k in ("eval/normalized_score", "eval/best_normalized_score",
                                       "eval/return_mean", "perf/train_seconds") if k in metrics}
    print(json.dumps({"run_dir": str(run_dir), "step": metrics.get("step"), **summary}))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from raydt.reproduce import reproduce

    outcome = reproduce(Path(args.run_dir), out=Path(args.out) if args.out else None, steps=args.steps, log=_log)
    print("\n".join(outcome.lines()))
    return 0 if outcome.comparison.match else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from raydt.pretrain import load_pretrain_config, pretrain

    config = load_pretrain_config(args.spec, args.set)
    run_dir = writable_dir(Path(args.out) if args.out else Path("runs") / "pretrain" / Path(args.spec).stem, "--out")
    metrics = pretrain(config, run_dir, resume=args.resume, log=_log)
    print(json.dumps({"run_dir": str(run_dir), "model_dir": str(run_dir / "model"), "step": metrics.get("step"),
                      **{k: metrics[k] for k in ("eval/loss", "eval/perplexity") if k in metrics}}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from raydt.eval.saved import evaluate_checkpoint, evaluate_hf
    from raydt.hf_dt import is_hf_dt

    if is_hf_dt(args.checkpoint):
        metrics = evaluate_hf(args.checkpoint, episodes=args.episodes, targets=args.target, seed=args.seed,
                              dataset=args.dataset, env_id=args.env, log=_log)
    else:
        metrics = evaluate_checkpoint(
            args.checkpoint, episodes=args.episodes, targets=args.target, seed=args.seed, log=_log, env_id=args.env
        )
    if args.json:
        print(json.dumps(metrics))
        return 0
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------------------
# sweeps


def cmd_sweep(args: argparse.Namespace) -> int:
    from raydt.tune.spec import load_sweep

    spec = load_sweep(args.spec, args.set)  # every searched key is checked before Ray starts
    from raydt.tune.run import Plan, run_sweep

    outcome = run_sweep(spec, out=args.out, address=args.address, resume=args.resume,
                        dry_run=args.dry_run, log=_log, cluster_file=args.cluster, retry_failed=args.retry_failed)
    if isinstance(outcome, Plan):
        print("\n".join([f"sweep {spec.name} ({spec.path})", *filter(None, outcome.lines())]))
        if spec.replicated:
            print(f"search points: {spec.num_points} ({spec.tune.searcher}), each run as "
                  f"{len(spec.replicate_values())} replicate(s); the searcher sees the {spec.tune.replicates.aggregate} "
                  f"of their {spec.tune.replicates.score} {spec.tune.metric}")
            for i, replicate in enumerate(spec.replicate_values()):
                print(f"  replicate {i}: " + ", ".join(f"{k}={v}" for k, v in replicate.items()))
        points = spec.grid_points() if spec.tune.searcher == "grid" else []
        for i, point in enumerate(p for p in points[:20] if p):
            print(f"  grid point {i}: " + ", ".join(f"{k}={v}" for k, v in point.items()))
        return 0
    from raydt.report import format_table, summarize

    if outcome.unfinished:
        again = shlex.join(["raydt", "sweep", args.spec, *(a for s in args.set or [] for a in ("--set", s)),
                            *(["--out", args.out] if args.out else []),
                            *(["--address", args.address] if args.address else []), "--resume"])
        print(f"error: sweep interrupted with {outcome.unfinished} trial(s) unfinished; finished trials and "
              f"checkpoints are kept in {outcome.sweep_dir}; continue with: {again}", file=sys.stderr)
        return 130
    errored = [t for t in outcome.trials if t["status"] == "ERROR"]
    print(f"sweep directory: {outcome.sweep_dir}")
    print(f"{len(outcome.trials) - len(errored)} trial(s) TERMINATED, {len(errored)} in ERROR")
    for trial in errored:
        print(f"  {trial['trial']}: {trial['error']}")
    if "://" not in outcome.sweep_dir and len(errored) < len(outcome.trials):
        from raydt.points import format_points, point_rows, replicated_settings

        settings = replicated_settings(Path(outcome.sweep_dir))
        if settings is not None:
            print(format_points(settings, point_rows(Path(outcome.sweep_dir), settings)))
        else:
            try:
                print(format_table(*summarize(Path(outcome.sweep_dir))))
            except RunFailed:  # the trials that finished wrote no run either: the list above says why
                pass
            compare = tuple(spec.report.get("compare", ()))
            if compare and not errored:  # the spec's question, answered with intervals (report: compare)
                _report_intervals(argparse.Namespace(by=None, score="final", intervals=True, compare=compare,
                                                     profile=None, reps=2000), Path(outcome.sweep_dir))
    if errored:
        again = shlex.join(["raydt", "sweep", args.spec, *(a for s in args.set or [] for a in ("--set", s)),
                            *(["--out", args.out] if args.out else []),
                            *(["--address", args.address] if args.address else []), "--resume", "--retry-failed"])
        print(f"error: {len(errored)} of {len(outcome.trials)} trial(s) failed (above; full logs in each "
              f"trial's directory); once fixed, run them again with: {again}", file=sys.stderr)
    return 1 if errored else 0


def cmd_export(args: argparse.Namespace) -> int:
    from raydt import hf_dt

    if args.push_to_hub:  # fails now, before anything is written, when no upload can work
        hf_dt.check_push(args.push_to_hub)
    command = shlex.join(["raydt", "export", args.run_dir, "--format", args.format, "--out", args.out,
                          *(["--push-to-hub", args.push_to_hub] if args.push_to_hub else [])])
    out = hf_dt.export_run(Path(args.run_dir), Path(args.out), command=command, log=_log,
                           overwrite=args.overwrite)
    if args.push_to_hub:
        print(f"pushed: {hf_dt.push(out, args.push_to_hub)}")
    print(out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raydt.points import (
        format_points,
        point_rows,
        points_csv,
        replicated_settings,
        search_progress_figure,
    )
    from raydt.report import format_csv, format_table, summarize

    root = local_view(args.sweep_dir)
    settings = replicated_settings(root)
    if args.search_plot and settings is None:
        raise RaydtError(f"--search-plot: {args.sweep_dir} is not a replicated search (tune.replicates or an "
                         "Optuna searcher); it has no search points to plot")
    if args.table:
        from raydt.tables import paper_table

        print(paper_table(args.table, root, fmt=args.format, cells=args.cells, which=args.score, by=args.by,
                          reps=args.reps))
    elif settings is not None and not args.by:
        # A replicated search: one row per point, as its searcher saw it.
        points = point_rows(root, settings, reps=args.reps)
        print(points_csv(settings, points) if args.csv else format_points(settings, points), end="" if args.csv else "\n")
        if args.search_plot:
            print(f"search progress: {search_progress_figure(settings, points, Path(args.search_plot))}")
    else:
        keys, rows = summarize(root, by=args.by)
        print(format_csv(keys, rows) if args.csv else format_table(keys, rows), end="" if args.csv else "\n")
    if args.intervals or args.compare or args.profile:
        _report_intervals(args, root)
    if args.wandb or args.mlflow:
        from raydt.config import LogConfig, MlflowConfig, WandbConfig
        from raydt.trackers import upload_sweep

        log = LogConfig(WandbConfig(args.wandb, args.wandb_entity, args.wandb_mode),
                        MlflowConfig(args.mlflow, args.mlflow_uri))
        upload_sweep(root, str(args.sweep_dir) if is_uri(args.sweep_dir) else str(root.resolve()), log, say=_log)
    if args.tensorboard:
        from raydt.report import write_group_runs

        written = write_group_runs(root, by=args.by)
        print(f"grouped TensorBoard runs: {len(written)} under {SweepDir(root).groups} "
              f"(tensorboard --logdir {root})")
    failed = SweepDir(root).failed_trials()
    for name, error in failed.items():  # on stderr: the CSV on stdout stays a table
        print(f"failed trial {name}: {error}", file=sys.stderr if args.csv else sys.stdout)
    return 0


def short_label(name: str) -> str:
    """A group named with full keys (``optim.lr=0.0003``, as table headers show them) in the
    labels groups carry (``lr=0.0003``: the last part of each key)."""
    parts = []
    for part in name.split(", "):
        key, sep, value = part.partition("=")
        parts.append(f"{key.strip().rsplit('.', 1)[-1]}{sep}{value}" if sep else part)
    return ", ".join(parts)


def _report_intervals(args: argparse.Namespace, root: Path) -> None:
    """Interval estimates, probability of improvement and performance profiles (rliable)."""
    import numpy as np

    from raydt import stats

    final = stats.score_matrices(root, by=args.by, which=args.score)
    if not final.scores:
        raise RaydtError(f"{root}: no group has an evaluated run for every dataset; nothing to estimate")
    shape = ", ".join(f"{g}: {m.shape[0]} run(s) × {m.shape[1]} dataset(s)" for g, m in final.scores.items())
    print(f"\ninterval estimates over seeds and datasets ({shape}); stratified bootstrap, {args.reps} reps, 95% CI")
    single = [g for g, m in final.scores.items() if m.shape[0] < 2]
    if single:  # a bootstrap of one run per dataset resamples nothing: zero-width intervals
        print(f"warning: {', '.join(single)}: one run per dataset (n = 1): its intervals have no width and "
              "comparisons with it are certain by construction; add seeds before reading them")
    if args.intervals:
        for which in ("final", "best", "converged_step"):
            m = final if which == args.score else stats.score_matrices(root, by=args.by, which=which)
            step = which == "converged_step"
            est = stats.interval_estimates(m.scores, reps=args.reps, scale=1.0 if step else 100.0,
                                           aggregates=stats.STEP_AGGREGATES if step else stats.AGGREGATES)
            print(stats.format_estimates(est, which))
    if args.compare:
        from raydt.tables import sweep_layout

        # A group by its label, or by the name the spec's report: labels give it.
        names = {v: k for k, v in sweep_layout(root).labels.items()}
        a, b = (names.get(name, short_label(name)) for name in args.compare)
        missing = [g for g in (a, b) if g not in final.scores]
        if missing:
            raise RaydtError(f"--compare {' '.join(missing)}: no such group; groups: {', '.join(final.scores)}")
        point, low, high = stats.probability_of_improvement(final.scores[a], final.scores[b], reps=args.reps)
        few = min(final.scores[a].shape[0], final.scores[b].shape[0])
        print(f"P({a} > {b}) = {point:.3f} [{low:.3f}, {high:.3f}] ({args.score} score)"
              + (f"  (n = {few}: not evidence)" if few < 2 else ""))
    if args.profile:
        writable_dir(Path(args.profile).parent, "--profile's folder")
        taus = np.linspace(0, 110, 111)
        path = stats.plot_profiles(stats.performance_profiles(final.scores, taus, reps=args.reps), taus,
                                   Path(args.profile), f"{Path(root).name}: performance profiles ({args.score} score)")
        print(f"performance profiles: {path}")
    for note in final.notes:
        print(f"note: {note}")


def cmd_compare(args: argparse.Namespace) -> int:
    from raydt.report import plot_curves

    writable_dir(Path(args.out).parent, "--out's folder")
    root = local_view(args.sweep_dir)
    print(plot_curves(root, Path(args.out), by=args.by, band=args.band))
    if args.profile:
        import numpy as np

        from raydt import stats

        matrices = stats.score_matrices(root, by=args.by)
        taus = np.linspace(0, 110, 111)
        print(stats.plot_profiles(stats.performance_profiles(matrices.scores, taus), taus, Path(args.profile),
                                  f"{Path(root).name}: performance profiles (final score)"))
    return 0


def cmd_bench_convergence(args: argparse.Namespace) -> int:
    from raydt.convergence import convergence, format_table, plot

    keys, results = convergence(local_view(args.run_dir), by=args.by, threshold=args.threshold,
                                metric=args.metric, mode=args.mode)
    if args.json:
        print("\n".join(json.dumps(r.summary()) for r in results))
    else:
        print(format_table(keys, results))
    if args.plot:
        path = plot(results, Path(args.plot), title=args.run_dir.rstrip("/").rsplit("/", 1)[-1], metric=args.metric)
        print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from raydt import analyze as registry
    from raydt.analysis import run as analysis

    options = registry.Options(
        pre=args.pre, post=args.post, step=args.step,
        windows=args.windows, mine_steps=args.mine_steps, protocol=args.protocol, definition=args.definition,
        mine_preset=args.mine_preset, representation=args.representation,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    registry.check(args.what, options)  # before any checkpoint is fetched or read
    # A sweep or a folder of runs: every run below it, each checked before any is measured.
    root = local_view(args.run_dir, checkpoints=True)
    run_dirs = analysis.run_dirs(root, registry.ANALYSES[args.what].steps(options))
    for run_dir in run_dirs:
        result, path = registry.analyze(run_dir, args.what, options)
        if args.json:
            print(json.dumps({"run": str(run_dir), **analysis.public(result)}))
        else:
            heading = [f"== {run_dir}"] if len(run_dirs) > 1 else []
            print("\n".join([*heading, *analysis.summary(args.what, result), f"written: {path}"]))
    if is_uri(args.run_dir):  # the results go back beside the runs they measure
        for run_dir in run_dirs:
            rel = run_dir.relative_to(root).as_posix()
            local = RunDir(run_dir).analysis
            remote = join(args.run_dir, rel, local.name) if rel != "." else join(args.run_dir, local.name)
            Mirror(local, remote).sync_up()
        print(f"analysis/ written back to {args.run_dir}", file=sys.stderr)
    return 0




# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydt",
        description="Decision Transformers initialised from pre-trained language models: runs, sweeps, analyses.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # One function per command below: its arguments and its handler.
    for add in (_add_spec, _add_data, _add_train, _add_reproduce, _add_pretrain, _add_export, _add_eval, _add_sweep,
                _add_report, _add_compare, _add_bench, _add_analyze):
        add(sub)
    return parser


def _add_spec(sub) -> None:
    spec = sub.add_parser("spec", help="inspect specs").add_subparsers(dest="spec_command", required=True)
    show = spec.add_parser("show", help="print the fully resolved config of a spec (a sweep spec: its run part, "
                           "search: and every tune: setting)")
    show.add_argument("file", help="run or sweep spec YAML file")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key, e.g. --set optim.lr=3e-4 (repeatable)")
    show.add_argument("--doc", action="store_true", help="print each key's documentation above it")
    show.set_defaults(func=cmd_spec_show)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    info = data.add_parser("info", help="summary statistics of a dataset")
    info.add_argument("uri", help="dataset URI: d4rl:NAME|PATH, minari:ID, generated:TASK-QUALITY")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_data_info)

    make = data.add_parser("make", help="generate a D4RL-style dataset on the MuJoCo simulator")
    make.add_argument("uri", help="generated:TASK-QUALITY, e.g. generated:hopper-medium")
    make.add_argument("--steps", type=positive_int("--steps"), default=None, help="transitions (default: D4RL's size)")
    make.add_argument("--seed", type=nonnegative_int("--seed"), default=None, help="rollout seed (default 0)")
    make.add_argument("--force", action="store_true", help="remake even if the file exists")
    make.set_defaults(func=cmd_data_make)

    train_policy = data.add_parser(
        "train-policy", help="re-train a task's behaviour policies with ARS (ships with raydt)"
    )
    train_policy.add_argument("task", help="hopper, halfcheetah or walker2d")
    train_policy.add_argument("--seed", type=nonnegative_int("--seed"), default=0)
    train_policy.add_argument("--env", default="v4", help="gymnasium environment version (v4|v5)")
    train_policy.add_argument("--env-steps", type=positive_int("--env-steps"), default=None,
                              help="training budget in env steps")
    train_policy.add_argument("--out", default=None, help="output .npz (default: the packaged file)")
    train_policy.set_defaults(func=cmd_data_train_policy)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="fine-tune one Decision Transformer (Ray Train, or in-process)")
    train.add_argument("spec", help="run spec YAML")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. --set train.steps=5000 (repeatable)")
    train.add_argument("--out", default=None, help="run directory (default runs/<spec name>), or a URI every node "
                       "reaches (s3://..., file://...) for a run on a multi-node cluster")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in the directory")
    train.add_argument("--no-ray", action="store_true", help="run the same loop in this process, without Ray")
    train.add_argument("--address", default=None, help="Ray cluster to join (auto on a cluster head)")
    train.set_defaults(func=cmd_train)


def _add_reproduce(sub) -> None:
    rep = sub.add_parser("reproduce", help="train a run again from its directory and compare metrics.jsonl row by "
                                           "row (exit 0 match, 1 mismatch, 2 bad input)")
    rep.add_argument("run_dir", help="a run directory (its config.resolved.yaml, metrics.jsonl and run_info.json)")
    rep.add_argument("--steps", type=positive_int("--steps"), default=None,
                     help="reproduce the first N steps (default: the run's train.steps); the schedule stays the run's")
    rep.add_argument("--out", default=None, help="directory for the reproduction (default: a fresh temporary one)")
    rep.set_defaults(func=cmd_reproduce)


def _add_pretrain(sub) -> None:
    pre = sub.add_parser("pretrain", help="pre-train a GPT-2 on text (ChibiT) into a directory model.backbone accepts")
    pre.add_argument("spec", help="pre-training spec YAML (corpus:, model:, optim:, train:)")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. --set train.steps=2000 (repeatable)")
    pre.add_argument("--out", default=None, help="run directory (default runs/pretrain/<spec name>); the model is in OUT/model")
    pre.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    pre.set_defaults(func=cmd_pretrain)


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="a run as a Hugging Face DecisionTransformerModel")
    export.add_argument("run_dir", help="a run directory (its last checkpoint is exported)")
    export.add_argument("--format", choices=("hf",), default="hf", help="hf: transformers' DecisionTransformerModel")
    export.add_argument("--out", required=True, help="directory to write (weights, config, raydt_eval.json, README.md); "
                        "new, empty or an earlier export, replaced only once the new export is complete")
    export.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds other files (all of them go)")
    export.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                        help="also upload it (token from HF_TOKEN or `hf auth login`)")
    export.set_defaults(func=cmd_export)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a saved run on the simulator")
    ev.add_argument("checkpoint", help="a run directory, a checkpoint .pt file, or a transformers "
                                       "DecisionTransformerModel (its directory, or hf-dt:ORG/NAME)")
    ev.add_argument("--dataset", default=None, help="a DecisionTransformerModel without raydt_eval.json: the "
                                                    "dataset whose state statistics it was trained with")
    ev.add_argument("--env", default=None, help="evaluation environment id, where nothing else names it")
    ev.add_argument("--episodes", type=positive_int("--episodes"), default=None,
                    help="episodes per target (default: the run's)")
    ev.add_argument("--target", type=finite_float("--target"), action="append", default=None,
                    help="target return (repeatable)")
    ev.add_argument("--seed", type=nonnegative_int("--seed"), default=0, help="seed of the evaluation episodes")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_eval)


def _add_sweep(sub) -> None:
    sweep = sub.add_parser("sweep", help="run a sweep of trials on Ray Tune")
    sweep.add_argument("spec", help="sweep spec YAML (a run spec with search: and tune:)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a run key for every trial (repeatable)")
    sweep.add_argument("--out", default=None, help="storage path (local folder or s3://...; default tune.storage_path)")
    sweep.add_argument("--address", default=None, help="Ray cluster to join (auto on a cluster head)")
    sweep.add_argument("--dry-run", action="store_true", help="print the trial plan and exit")
    sweep.add_argument("--cluster", default=None, metavar="CLUSTER.yaml",
                       help="with --dry-run: plan for this cluster file's node types (e.g. clusters/aws.yaml)")
    sweep.add_argument("--resume", action="store_true", help="finish an interrupted sweep")
    sweep.add_argument("--retry-failed", action="store_true",
                       help="with --resume: run the trials that ended in error again, each from its last checkpoint")
    sweep.set_defaults(func=cmd_sweep)


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="table of a sweep's results, seeds aggregated")
    report.add_argument("sweep_dir")
    report.add_argument("--by", action="append", default=None, metavar="KEY", help="group by this key (repeatable)")
    report.add_argument("--csv", action="store_true", help="CSV instead of a table")
    report.add_argument("--table", choices=("reid2", "reid3", "reid6"), default=None,
                        help="a paper's table: reid2 (datasets × groups, scores), reid3 (convergence steps), "
                             "reid6 (groups × datasets, ablations); order and labels from the spec's report: section")
    report.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="format of --table (default md)")
    report.add_argument("--cells", choices=("mean_std", "iqm"), default="mean_std",
                        help="--table cells: mean ± std over seeds, or IQM [95%% CI] (default mean_std)")
    report.add_argument("--score", choices=("final", "best"), default="final",
                        help="which score of a run --table and --intervals use (default final)")
    report.add_argument("--intervals", action="store_true",
                        help="IQM, mean, median and optimality gap with stratified-bootstrap 95%% CIs (rliable), "
                             "per group across datasets: final and best score, convergence step")
    report.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                        help="probability that group A improves on group B (labels as --intervals prints them)")
    report.add_argument("--profile", default=None, metavar="OUT.png", help="draw performance profiles (with CIs)")
    report.add_argument("--reps", type=positive_int("--reps"), default=2000, help="bootstrap replications (default 2000)")
    report.add_argument("--wandb", default=None, metavar="PROJECT",
                        help="upload every run to this W&B project (a sweep run without log.wandb)")
    report.add_argument("--wandb-entity", default=None, help="W&B team or user for --wandb")
    report.add_argument("--wandb-mode", choices=("online", "offline"), default="online",
                        help="--wandb: stream now, or write offline runs beside each run for `wandb sync`")
    report.add_argument("--mlflow", default=None, metavar="EXPERIMENT",
                        help="upload every run to this MLflow experiment (a sweep run without log.mlflow)")
    report.add_argument("--mlflow-uri", default=None, metavar="URI",
                        help="--mlflow: tracking server or store (default: mlflow.db beside the runs)")
    report.add_argument("--search-plot", default=None, metavar="OUT.png",
                        help="a replicated search: draw the best point so far against trials and training hours")
    report.add_argument("--tensorboard", action="store_true",
                        help="(re)write SWEEP/groups/: one TensorBoard run per group, seed mean and min-max "
                             "(a sweep writes them when it ends)")
    report.set_defaults(func=cmd_report)


def _add_compare(sub) -> None:
    compare = sub.add_parser("compare", help="learning curves of a sweep's groups")
    compare.add_argument("sweep_dir")
    compare.add_argument("--out", required=True, help="PNG to write")
    compare.add_argument("--by", action="append", default=None, metavar="KEY", help="group by this key (repeatable)")
    compare.add_argument("--band", choices=("ci", "minmax"), default="ci",
                         help="band around each group's mean: 95%% bootstrap CI of the mean (default) or the seeds' range")
    compare.add_argument("--profile", default=None, metavar="OUT.png",
                         help="also draw performance profiles of the final scores (groups across datasets)")
    compare.set_defaults(func=cmd_compare)


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks over finished runs").add_subparsers(dest="bench_command", required=True)
    conv = bench.add_parser(
        "convergence",
        help="time to convergence: first evaluation where the seed-averaged score is within --threshold of its best",
    )
    conv.add_argument("run_dir", help="a run directory, a sweep directory, or a folder of runs")
    conv.add_argument("--by", action="append", default=None, metavar="KEY",
                      help="group by this key (repeatable; default: the sweep's searched keys without the seed)")
    conv.add_argument("--threshold", type=finite_float("--threshold", least=0), default=2.0,
                      help="points within the best that count as converged (default 2)")
    conv.add_argument("--metric", default="eval/normalized_score", help="metric of the curves (default eval/normalized_score)")
    conv.add_argument("--mode", choices=("max", "min"), default="max", help="whether higher (max) or lower (min) is better")
    conv.add_argument("--json", action="store_true", help="one JSON object per group")
    conv.add_argument("--plot", default=None, metavar="OUT.png", help="plot the averaged curves with best and convergence marked")
    conv.set_defaults(func=cmd_bench_convergence)


def _add_analyze(sub) -> None:
    analyze = sub.add_parser("analyze", help="inside the transformer: pre vs post fine-tuning (Takagi 2022)")
    from raydt.analyze import ANALYSES

    analyze.add_argument("what", choices=list(ANALYSES),
                         help="; ".join(f"{a.name}: {a.help}" for a in ANALYSES.values()))
    analyze.add_argument("run_dir", help="a run directory with kept checkpoints (train.keep_checkpoints)")
    analyze.add_argument("--pre", type=kept_step("--pre"), default=0,
                         help="kept step to compare from (default 0: before fine-tuning)")
    analyze.add_argument("--post", type=kept_step("--post"), default="last",
                         help="kept step to compare to (default: the last checkpoint)")
    analyze.add_argument("--step", type=kept_step("--step"), default=None,
                         help="the kept step mi or grads measures at (default: --post for "
                                                         "mi, --pre for grads)")
    analyze.add_argument("--windows", type=positive_int("--windows"), default=None,
                         help="fixed windows of the run's data to measure on (default: " + ", ".join(
                             f"{a.name} {a.windows}" for a in ANALYSES.values() if a.windows) + ")")
    analyze.add_argument("--mine-steps", type=positive_int("--mine-steps"), default=1000,
                         help="training steps of each MINE estimate")
    analyze.add_argument("--protocol", choices=("raydt", "takagi"), default="raydt",
                         help="grads: raydt's (every trained parameter, eval mode, before and after clipping) "
                              "or Takagi's code's (train mode, clipped, transformer blocks only; use with "
                              "--windows 50 --step 2500)")
    analyze.add_argument("--definition", choices=("paper", "takagi_code"), default="paper",
                         help="attention: the paper's (ViT) attention distance, or the one Takagi's released "
                              "code computes (one head, no causal mask before the softmax)")
    analyze.add_argument("--mine-preset", choices=("raydt", "takagi"), default="raydt",
                         help="mi: raydt's estimator (2 × 64 units, lr 1e-3, batch 256, bound on 20%% held out) or "
                              "Takagi's (3 × 400 units, lr 1e-4, batch 50, bound on the training samples)")
    analyze.add_argument("--representation", choices=("mlp", "residual"), default="mlp",
                         help="mi: T_l is the MLP branch's output before the residual add (Takagi's code, "
                              "default) or the block's output (the residual stream)")
    analyze.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    analyze.set_defaults(func=cmd_analyze)



def main(argv: Sequence[str] | None = None) -> int:
    from raydt import offline

    offline.apply()  # before any library that downloads is imported
    try:
        args = build_parser().parse_args(argv)  # inside: the numeric options' types raise RaydtError
        return int(args.func(args))
    except RaydtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
