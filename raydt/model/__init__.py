"""The Decision Transformer and its backbones (plain PyTorch, no I/O)."""

from raydt.model.dt import DecisionTransformer, ModelArgs

__all__ = ["DecisionTransformer", "ModelArgs"]
