"""Models from configs and from checkpoints."""

from __future__ import annotations

from torch import nn

from raydt.config import ModelConfig
from raydt.model.backbone import LoadReport, build_backbone
from raydt.model.dt import DecisionTransformer, ModelArgs


def build_model(
    cfg: ModelConfig, obs_dim: int, act_dim: int, context_length: int, max_timestep: int
) -> tuple[DecisionTransformer, LoadReport]:
    """A Decision Transformer as ``cfg`` describes it, and the backbone's load report."""
    backbone, report = build_backbone(cfg.dims, cfg.backbone, cfg.dropout, cfg.activation, 3 * context_length)
    args = ModelArgs(
        obs_dim=obs_dim,
        act_dim=act_dim,
        n_embd=backbone.config.n_embd,
        context_length=context_length,
        max_timestep=max_timestep,
        backbone_source=cfg.backbone,
        backbone_config=backbone.config.to_dict(),
    )
    return DecisionTransformer(args, backbone), report


def rebuild_model(args: ModelArgs) -> DecisionTransformer:
    """An uninitialised-weights twin of a saved model, ready for ``load_state_dict``."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config.from_dict(args.backbone_config)
    backbone: nn.Module = GPT2Model._from_config(config, attn_implementation="sdpa")
    backbone.wpe.weight.requires_grad_(False)
    backbone.wte.weight.requires_grad_(False)
    return DecisionTransformer(args, backbone)
