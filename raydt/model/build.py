"""Models from configs and from checkpoints."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raydt.config import PRETRAIN_SCHEME, ModelConfig
from raydt.errors import ConfigError
from raydt.model.backbone import Dropouts, LoadReport, build_backbone, freeze
from raydt.model.dt import DecisionTransformer, ModelArgs, extend_table


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def build_model(
    cfg: ModelConfig, obs_dim: int, act_dim: int, context_length: int, max_timestep: int,
    log: Callable[[str], None] = print, discrete_actions: bool = False, frame_stack: int = 0,
    source: str | None = None,
) -> tuple[DecisionTransformer, LoadReport]:
    """A Decision Transformer as ``cfg`` describes it, and the backbone's load report
    (``discrete_actions``: act_dim action ids; ``frame_stack``: image states, Atari).

    ``source``: where the backbone's weights are (default ``cfg.backbone``). A
    ``pretrain:SPEC`` backbone is resolved to its directory before building
    (:func:`raydt.pretrain.resolve_backbone`), so building a model never pre-trains one.
    """
    source = source or cfg.backbone
    if source.startswith(PRETRAIN_SCHEME):
        raise ConfigError(f"model.backbone={source!r}: resolve it with raydt.pretrain.resolve_backbone "
                          "and pass the directory as source=")
    if cfg.action_head == "tied" and discrete_actions:
        raise ConfigError("model.action_head=tied shares the action embedding of continuous actions; "
                          "Atari's action ids use a table (set model.action_head=linear)")
    dropout = Dropouts(cfg.dropout, _or(cfg.attn_dropout, cfg.dropout), _or(cfg.embd_dropout, cfg.dropout))
    from raydt.hf_dt import is_hf_dt

    if is_hf_dt(source):
        return _from_decision_transformer(cfg, source, obs_dim, act_dim, context_length, max_timestep, dropout,
                                          discrete_actions, log)
    backbone, report = build_backbone(
        cfg.dims, source, dropout, cfg.activation, 3 * context_length, replace_block=cfg.replace_block
    )
    table = backbone.position_table
    if cfg.positions == "pretrained" and (table is None or cfg.backbone == "random"):
        raise ConfigError(
            f"model.positions=pretrained: model.backbone={cfg.backbone!r} has no pre-trained position "
            "table to reuse; use positions 'timestep' or 'random'"
        )
    args = ModelArgs(
        obs_dim=obs_dim,
        act_dim=act_dim,
        n_embd=backbone.n_embd,
        context_length=context_length,
        max_timestep=max_timestep,
        backbone_source=cfg.backbone,
        backbone_config=backbone.config.to_dict(),
        backbone_kind=backbone.kind,
        discrete_actions=discrete_actions,
        frame_stack=frame_stack,
        ln_order=cfg.ln_order,
        action_head=cfg.action_head,
        time_embedding=cfg.time_embedding,
        embed_tanh=cfg.embed_tanh,
        embed_ln=cfg.embed_ln,
    )
    model = DecisionTransformer(args, backbone)
    if cfg.positions == "pretrained":
        with torch.no_grad():
            model.embed_timestep.weight.copy_(extend_table(table, max_timestep))
        report.loaded.append(f"embed_timestep.weight (from the position table, {table.shape[0]} rows tiled)")
    elif cfg.positions == "random":
        # The pre-trained table's shape and initial scale, none of its values (Reid Table 6).
        std = float(getattr(backbone.config, "initializer_range", 0.02))
        nn.init.normal_(model.embed_timestep.weight, std=std)
    report.frozen = freeze(backbone, cfg.freeze)
    return model, report


def _from_decision_transformer(cfg: ModelConfig, source: str, obs_dim: int, act_dim: int, context_length: int,
                               max_timestep: int, dropout: Dropouts, discrete_actions: bool,
                               log: Callable[[str], None]) -> tuple[DecisionTransformer, LoadReport]:
    """Fine-tune from a transformers DecisionTransformerModel: all of it (embeddings, blocks,
    action head) is loaded, so the run's settings must describe the same architecture."""
    from raydt.hf_dt import expressible, from_hf

    model, _ = from_hf(source, context_length=context_length, max_timestep=max_timestep, dropout=dropout)
    if discrete_actions or (model.args.obs_dim, model.args.act_dim) != (obs_dim, act_dim):
        raise ConfigError(f"model.backbone={source!r}: its states and actions are {model.args.obs_dim} and "
                          f"{model.args.act_dim} wide, this run's data {obs_dim} and {act_dim}")
    expressible(ModelArgs(**{**model.args.to_dict(), "ln_order": cfg.ln_order, "action_head": cfg.action_head,
                             "time_embedding": cfg.time_embedding, "embed_tanh": cfg.embed_tanh,
                             "embed_ln": cfg.embed_ln}))
    # Its one-row token table is no input of the DT (as build_backbone's is not): left
    # trainable, it gets no gradient and DDP fails the second step of a multi-worker run.
    model.backbone.token_embeddings.weight.requires_grad_(False)
    report = LoadReport(source, kind="gpt2")
    report.loaded = [name for name, _ in model.named_parameters()]
    report.frozen = freeze(model.backbone, cfg.freeze)
    log(f"fine-tuning the whole DecisionTransformerModel {source} (embeddings, blocks and action head); "
        "states are normalised with this run's dataset statistics")
    return model, report
