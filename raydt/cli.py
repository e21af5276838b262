"""The ``raydt`` command: parse arguments, call one library function, print.

User mistakes (:class:`raydt.errors.RaydtError`) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raydt.errors import RaydtError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# spec


def cmd_spec_show(args: argparse.Namespace) -> int:
    from raydt.config import load_config, to_yaml

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydt",
        description="Decision Transformers initialised from pre-trained language models: runs, sweeps, analyses.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    spec = sub.add_parser("spec", help="inspect specs").add_subparsers(dest="spec_command", required=True)
    show = spec.add_parser("show", help="print the fully resolved config of a spec")
    show.add_argument("file", help="spec YAML file")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key, e.g. --set optim.lr=3e-4 (repeatable)")
    show.add_argument("--doc", action="store_true", help="print each key's documentation above it")
    show.set_defaults(func=cmd_spec_show)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    info = data.add_parser("info", help="summary statistics of a dataset")
    info.add_argument("uri", help="dataset URI: d4rl:NAME|PATH, minari:ID, generated:TASK-QUALITY")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_data_info)

    make = data.add_parser("make", help="generate a D4RL-style dataset on the MuJoCo simulator")
    make.add_argument("uri", help="generated:TASK-QUALITY, e.g. generated:hopper-medium")
    make.add_argument("--steps", type=int, default=None, help="transitions (default: D4RL's size)")
    make.add_argument("--seed", type=int, default=None, help="rollout seed (default 0)")
    make.add_argument("--force", action="store_true", help="remake even if the file exists")
    make.set_defaults(func=cmd_data_make)

    train_policy = data.add_parser(
        "train-policy", help="re-train a task's behaviour policies with ARS (ships with raydt)"
    )
    train_policy.add_argument("task", help="hopper, halfcheetah or walker2d")
    train_policy.add_argument("--seed", type=int, default=0)
    train_policy.add_argument("--env", default="v4", help="gymnasium environment version (v4|v5)")
    train_policy.add_argument("--env-steps", type=int, default=None, help="training budget in env steps")
    train_policy.add_argument("--out", default=None, help="output .npz (default: the packaged file)")
    train_policy.set_defaults(func=cmd_data_train_policy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RaydtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
