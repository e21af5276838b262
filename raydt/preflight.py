"""Checks of everything a run will read, made before any run starts.

A sweep checks every point of its search space (every combination of its grid and choice
values), not only its spec's keys, so a missing backbone directory or dataset file fails
the sweep (and its ``--dry-run``) at once, naming the file and the searched value, instead
of failing each trial after Ray has started it. Nothing here downloads or generates data:
what needs the network is checked when the run fetches it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from raydt.config import PRETRAIN_SCHEME, ExperimentConfig
from raydt.errors import ConfigError, RaydtError


def check_backbone(backbone: str) -> None:
    """A directory must exist and hold a model; a ``pretrain:`` spec must exist and be valid;
    a hub id must be cached when raydt is offline."""
    if backbone == "random":
        return
    if backbone.startswith(PRETRAIN_SCHEME):
        from raydt.pretrain import pretrained_run

        pretrained_run(backbone[len(PRETRAIN_SCHEME):])  # the spec file exists and is valid
        return
    if backbone.startswith("hf-dt:"):
        backbone = backbone[len("hf-dt:"):]
    local = Path(backbone).expanduser()
    looks_local = backbone.startswith(("/", ".", "~")) or backbone.count("/") > 1
    if local.exists() or looks_local:
        if not local.is_dir():
            raise ConfigError(f"model.backbone={backbone!r}: no such directory; give a directory written by "
                              "save_pretrained (or raydt pretrain), a hub id such as 'gpt2', or random")
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.backbone={backbone!r}: {local} has no config.json; give a directory "
                              "written by save_pretrained (or raydt pretrain)")
        return
    from raydt.offline import is_offline

    if is_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(backbone, "config.json"), str):
            raise ConfigError(f"model.backbone={backbone!r}: not in the Hugging Face cache and downloads are "
                              "off (RAYDT_OFFLINE); download it once with the network, or give a local directory")


def check_dataset(uri: str) -> None:
    """The URI parses, and a file it names exists (names are fetched or made by the run)."""
    from raydt.data.sources import split_uri

    scheme, body = split_uri(uri)
    path_like = body.endswith((".hdf5", ".h5")) or body.startswith(("/", ".", "~"))
    if scheme == "dqn-replay" or (scheme == "d4rl" and path_like):
        path = Path(body.split("?", 1)[0]).expanduser()
        if not path.exists():
            raise ConfigError(f"data.dataset={uri!r}: {path} not found")


def check_text(config: ExperimentConfig) -> None:
    loss = config.loss
    if loss.lambda2 > 0 or loss.track_text_loss:
        from raydt.data.text import parse_text_uri

        parse_text_uri(loss.text)


def check_configs(configs: Iterable[tuple[str, ExperimentConfig]]) -> None:
    """Check every ``(label, config)``; each distinct value once. The error names every
    problem and the search point it came from."""
    seen: set[tuple[str, str]] = set()
    problems: list[str] = []
    for label, config in configs:
        for kind, value, check in (
            ("backbone", config.model.backbone, lambda c=config: check_backbone(c.model.backbone)),
            ("dataset", config.data.dataset, lambda c=config: check_dataset(c.data.dataset)),
            ("text", config.loss.text if config.loss.lambda2 > 0 or config.loss.track_text_loss else "",
             lambda c=config: check_text(c)),
        ):
            if not value or (kind, value) in seen:
                continue
            seen.add((kind, value))
            try:
                check()
            except RaydtError as exc:
                problems.append(f"{exc}{f' (search point: {label})' if label else ''}")
    if problems:
        raise ConfigError("\n".join(problems) if len(problems) == 1 else
                          f"{len(problems)} problems before any trial starts:\n  " + "\n  ".join(problems))
