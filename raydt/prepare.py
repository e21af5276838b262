"""Preparing what runs read, before any run starts: datasets, backbones, λ1 centres, text.

The driver of a sweep (or of ``raydt train``) calls :func:`prepare_runs` with every config
its trials can have. Each dataset raydt generates or downloads, each ``pretrain:`` backbone,
each set of k-means centres (λ1) and each tokenised text (λ2, held-out text loss) is built
once here, recorded as a content-addressed :class:`~raydt.artifacts.Artifact` and, where
there is a store every node reaches, published to it. A run finds what it needs by
:func:`needs`, computed from its config alone, so a node never has to read the sweep's spec
files to know what to pull.

Also here, because preparing and training must agree on them: the run's dataset and
evaluation settings (:func:`resolve_run_data`), the model a run builds first
(:func:`build_run_model`, whose token table the centres are computed from) and its tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raydt.artifacts import Artifact, Store, record
from raydt.config import PRETRAIN_SCHEME, ExperimentConfig, ModelConfig
from raydt.data.atari import game_from_env_id
from raydt.data.dqn_replay import STACK, AtariTrajectories
from raydt.data.sources import load_dataset, split_uri
from raydt.data.tasks import task_from_env_id
from raydt.data.text import parse_text_uri
from raydt.data.trajectories import Trajectories
from raydt.errors import ConfigError, DataError


@dataclass
class RunData:
    """The dataset of a run and what follows from it."""

    trajectories: Trajectories
    env_id: str
    """Evaluation environment: eval.env_id, else the one the dataset records."""
    targets: tuple[float, ...]
    """Evaluation targets: eval.target_returns, else the task's."""
    max_timestep: int
    """Size of the timestep table: the longest episode of data or environment."""


def resolve_run_data(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> RunData:
    """Load the dataset and settle the evaluation environment and targets, or fail clearly.

    Also checks the objectives' inputs that are cheap to check (before any model is built).
    """
    check_objectives(cfg)
    traj = load_dataset(cfg.data.dataset, log=log)
    env_id = cfg.eval.env_id or traj.env_id or ""
    if not env_id:
        raise ConfigError(
            f"the dataset {cfg.data.dataset} does not say which environment it came from; "
            "set eval.env_id (for example Hopper-v4)"
        )
    task = task_from_env_id(env_id)
    game = game_from_env_id(env_id)
    if task is not None and not isinstance(traj, AtariTrajectories) and (traj.obs_dim, traj.act_dim) != (task.obs_dim, task.act_dim):
        raise ConfigError(
            f"data.dataset={cfg.data.dataset}: its observations have {traj.obs_dim} values and its actions "
            f"{traj.act_dim}, but {env_id} (the evaluation environment) has {task.obs_dim} and {task.act_dim}; "
            "set eval.env_id to the environment the data came from, or use that environment's dataset"
        )
    if isinstance(traj, AtariTrajectories) != (game is not None):
        raise ConfigError(f"data.dataset={cfg.data.dataset} and the evaluation environment {env_id} do not "
                          "match: Atari data evaluates on ALE/<Game>-v5 (set eval.env_id), MuJoCo data on MuJoCo")
    if cfg.eval.target_returns:
        targets = tuple(cfg.eval.target_returns)
    elif task is not None:
        targets = task.target_returns
    elif game is not None:
        targets = (game.target_return,)
    else:
        raise ConfigError(f"no default target returns for {env_id}; set eval.target_returns")
    if not isinstance(traj, AtariTrajectories):
        check_action_range(traj.actions, cfg.data.dataset, log)
    longest = int(traj.lengths.max())
    if cfg.data.context_length > longest:
        raise ConfigError(f"data.context_length={cfg.data.context_length} exceeds the longest episode of "
                          f"{cfg.data.dataset} ({longest} steps): the rest of every window would be padding; "
                          f"give at most {longest}")
    max_timestep = max(int(traj.timesteps.max()) + 1, task.max_episode_steps if task else 0)
    return RunData(traj, env_id, targets, max_timestep)


ACTION_SLACK = 0.1
"""How far past [-1, 1] continuous actions may reach and only be noted: recorded actions a
little outside the bounds (the environment clips them) lose little to the tanh head."""


def check_action_range(actions: np.ndarray, dataset: str, log: Callable[[str], None] = print) -> None:
    """The model predicts continuous actions through tanh, in [-1, 1] (the bounds of the
    MuJoCo tasks' action spaces): data far outside cannot be fitted (a loss in the
    hundreds of thousands, exit 0), so it is refused; data slightly outside is noted."""
    low, high = float(np.min(actions)), float(np.max(actions))
    if low >= -1 - 1e-6 and high <= 1 + 1e-6:
        return
    span = f"data.dataset={dataset}: its actions span [{low:.4g}, {high:.4g}]"
    if low < -1 - ACTION_SLACK or high > 1 + ACTION_SLACK:
        raise DataError(f"{span}, but the model predicts actions through tanh, in [-1, 1] (the environment's "
                        "bounds): rescale the actions to [-1, 1], or check that this is the dataset you meant")
    log(f"note: {span}, a little outside [-1, 1], which the model's tanh head reaches at most")


def check_objectives(cfg: ExperimentConfig) -> None:
    """λ1 and λ2 need a language backbone (token embeddings, a tokenizer) and real text."""
    loss = cfg.loss
    if (loss.lambda1 or loss.lambda2) and cfg.model.backbone == "random" and cfg.model.replace_block is None:
        raise ConfigError(
            f"loss.lambda1={loss.lambda1}, loss.lambda2={loss.lambda2} need a language backbone "
            "(its token embeddings and tokenizer), but model.backbone is 'random'; set model.backbone "
            "to a pre-trained model (e.g. gpt2, a directory, or pretrain:SPEC.yaml) or set both to 0"
        )
    if loss.lambda2 or loss.track_text_loss:
        parse_text_uri(loss.text)


def build_run_model(cfg: ExperimentConfig, data: RunData, source: str, log: Callable[[str], None] = print):
    """The model a run starts from, and the backbone's load report: built from the run's
    seed, so the same config gives the same weights on every rank and in the driver (whose
    copy only serves to compute λ1's centres)."""
    from raydt.model.build import build_model
    from raydt.seeding import seed_everything

    traj = data.trajectories
    seed_everything(cfg.train.seed)
    atari = isinstance(traj, AtariTrajectories)
    return build_model(
        cfg.model, 0 if atari else traj.obs_dim, traj.num_actions if atari else traj.act_dim,
        cfg.data.context_length, data.max_timestep, log=log,
        discrete_actions=atari, frame_stack=STACK if atari else 0, source=source,
    )


def run_tokenizer(cfg: ExperimentConfig, source: str, table_rows: int):
    """The tokenizer of the run's backbone (λ2, held-out text loss), checked against its
    token table of ``table_rows`` rows."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"loss.lambda2 / loss.track_text_loss: model.backbone={cfg.model.backbone!r} has no "
            f"usable tokenizer ({exc.__class__.__name__}); co-training needs a language model"
        ) from None
    if len(tokenizer) > table_rows:
        raise ConfigError(f"the tokenizer of {source} ({len(tokenizer)} tokens) does not match its "
                          f"embedding table ({table_rows} rows)")
    return tokenizer


# --------------------------------------------------------------------------------------
# What a run needs, from its config alone


def backbone_need(model: ModelConfig, seed: int) -> str:
    """Names the backbone weights a run starts from: a ``pretrain:`` spec with the run's
    shape (its pre-trained twin has the run's size), a random one with its shape and seed
    (Takagi's block replacement takes λ1 centres from random token tables), else the id."""
    shape = f"size={model.size},n_embd={model.n_embd},n_head={model.n_head},n_layer={model.n_layer}"
    if model.backbone.startswith(PRETRAIN_SCHEME):
        return f"{model.backbone}|{shape}"
    if model.backbone == "random":
        return f"random|{shape}|seed={seed}"
    return model.backbone


def needs(cfg: ExperimentConfig) -> dict[str, str]:
    """kind → need of every prepared input of a run with this config (datasets from user
    paths are the user's files, not prepared: they are named here and never found)."""
    backbone = backbone_need(cfg.model, cfg.train.seed)
    out = {"dataset": cfg.data.dataset}
    if cfg.model.backbone.startswith(PRETRAIN_SCHEME):
        out["backbone"] = backbone
    if cfg.loss.lambda1 > 0:
        out["kmeans"] = f"{backbone}|clusters={cfg.loss.kmeans_clusters}"
    if cfg.loss.lambda2 > 0 or cfg.loss.track_text_loss:
        out["text"] = f"{cfg.loss.text}|{backbone}"
    return out


def dataset_location(uri: str) -> tuple[str, Path] | None:
    """(node folder, path) of the file or folder a dataset URI is made or downloaded into;
    None for files the user names by path (``d4rl:/file.hdf5``, ``dqn-replay:/dir``)."""
    scheme, body = split_uri(uri)
    if scheme == "generated" and body.startswith("atari-"):
        from raydt.data.atari import parse_atari

        return "data", parse_atari(body).directory
    if scheme == "generated":
        from raydt.data.generate import generated_path, parse_generated

        return "data", generated_path(parse_generated(body))
    if scheme == "minari":
        from raydt.fsutil import minari_dir

        return "minari", minari_dir() / body
    if scheme == "d4rl" and not (body.endswith((".hdf5", ".h5")) or "/" in body):
        from raydt.data.d4rl import d4rl_filename
        from raydt.fsutil import d4rl_dir

        return "d4rl", d4rl_dir() / d4rl_filename(body)
    return None


# --------------------------------------------------------------------------------------


def prepare_runs(configs: Iterable[ExperimentConfig], store: Store | None,
                 log: Callable[[str], None] = print) -> list[Artifact]:
    """Build (or find) every prepared input of ``configs`` once, record each by content and
    publish it to ``store`` (when given); returns the artifacts, which runs receive."""
    from raydt.data.text import tokenize_cached, tokens_path
    from raydt.model.clusters import cached_clusters, clusters_path
    from raydt.pretrain import resolve_backbone

    found: dict[tuple[str, str], Artifact] = {}
    data: dict[str, RunData] = {}

    def run_data(cfg: ExperimentConfig) -> RunData:
        if cfg.data.dataset not in data:
            data[cfg.data.dataset] = resolve_run_data(cfg, log=log)
        return data[cfg.data.dataset]

    for cfg in configs:
        wanted = needs(cfg)
        if all((kind, need) in found or (kind == "dataset" and need in data) for kind, need in wanted.items()):
            continue
        run_data(cfg)  # makes or downloads the dataset; checks the config against it
        location = dataset_location(cfg.data.dataset)
        if location is not None and ("dataset", wanted["dataset"]) not in found:
            found["dataset", wanted["dataset"]] = record("dataset", wanted["dataset"], *location)
        source = resolve_backbone(cfg.model.backbone, cfg.model, log=log)
        if "backbone" in wanted:
            found["backbone", wanted["backbone"]] = record("backbone", wanted["backbone"], "data", Path(source))
        if ("kmeans" in wanted and ("kmeans", wanted["kmeans"]) not in found) or \
                ("text" in wanted and ("text", wanted["text"]) not in found):
            model, _ = build_run_model(cfg, run_data(cfg), source, log=lambda _: None)
            table = model.backbone.token_embeddings.weight
            if "kmeans" in wanted:
                cached_clusters(table, cfg.loss.kmeans_clusters, seed=0, log=log)
                path = clusters_path(table, cfg.loss.kmeans_clusters, seed=0)
                found["kmeans", wanted["kmeans"]] = record("kmeans", wanted["kmeans"], "data", path)
            if "text" in wanted:
                tokenizer = run_tokenizer(cfg, source, table.shape[0])
                tokenize_cached(cfg.loss.text, tokenizer, log=log)
                path = tokens_path(cfg.loss.text, tokenizer)
                found["text", wanted["text"]] = record("text", wanted["text"], "data", path)
    artifacts = list(found.values())
    if store is not None:
        for artifact in artifacts:
            if store.publish(artifact):
                log(f"published {artifact.short} to {store.location}")
    return artifacts


def artifacts_of(cfg: ExperimentConfig, artifacts: Iterable[Artifact]) -> list[Artifact]:
    """The artifacts among ``artifacts`` that a run with ``cfg`` reads."""
    wanted = set(needs(cfg).items())
    return [a for a in artifacts if (a.kind, a.need) in wanted]


def describe(artifacts: Iterable[Artifact]) -> dict[str, dict[str, Any]]:
    """What ``run_info.json`` records of the artifacts a run used: kind → need and hash."""
    return {a.kind: {"need": a.need, "sha256": a.sha256} for a in artifacts}
