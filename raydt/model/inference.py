"""A CPU inference copy of a model with its linear layers' weights pre-packed for oneDNN.

Evaluation runs thousands of forward passes with fixed weights. On a CPU, PyTorch's default
``addmm`` re-reads the weight matrix in its plain layout every call; oneDNN's linear with a
weight reordered once into its blocked layout is about twice as fast for DT-sized layers
(measured by ``bench/evaluation.py``) and computes the same fp32 products. So the
evaluator packs a copy of the model once per evaluation; training never sees it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``y = x Wᵀ + b`` with W reordered for oneDNN (inference only, fp32, CPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_hint: int, fused: str = "none") -> None:
        super().__init__()
        self.fused = fused
        """An activation oneDNN applies to the output in the same pass ("none" or "relu")."""
        # weight: (out, in) as nn.Linear stores it.
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows_hint)
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).contiguous()  # (rows, in)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, self.fused, [], "")  # (rows, out)
        return y.view(*x.shape[:-1], self.out_features)


def packed_for_inference(model: nn.Module, rows_hint: int = 64) -> nn.Module:
    """An eval-mode copy of ``model`` whose ``nn.Linear`` and Hugging Face ``Conv1D`` layers
    use pre-packed oneDNN weights; ``model`` itself when packing does not apply (not on a
    CPU, not fp32, or a PyTorch without oneDNN). ``rows_hint``: typical rows per call."""
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu" or params[0].dtype != torch.float32 or not _packing_available():
        return model
    from transformers.pytorch_utils import Conv1D

    fast = copy.deepcopy(model).eval()
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child.weight, child.bias, rows_hint))
            elif isinstance(child, Conv1D):  # GPT-2's linear layers store W as (in, out)
                setattr(module, name, PackedLinear(child.weight.t(), child.bias, rows_hint))
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


# --------------------------------------------------------------------------------------
# The evaluator's policy: the next action only


class _GPT2Layers(nn.Module):
    """GPT-2's blocks for inference on inputs_embeds with positions off, computing the last
    block for the final query only (the only output a rollout needs).

    Same arithmetic as Hugging Face's GPT-2 forward in eval mode (pre-LN blocks, scaled
    dot-product attention, causal plus padding mask), without its per-call mask building
    and configuration look-ups, with packed weights and ReLU fused into the first MLP layer
    when the activation is ReLU.
    """

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.n_head = hf.config.n_head
        relu = hf.config.activation_function == "relu"
        self.layers = nn.ModuleList()
        for block in hf.h:  # linear layers already packed by packed_for_inference
            layer = nn.Module()
            layer.ln_1, layer.ln_2 = block.ln_1, block.ln_2
            layer.c_attn, layer.attn_proj = block.attn.c_attn, block.attn.c_proj
            layer.c_fc, layer.mlp_proj = block.mlp.c_fc, block.mlp.c_proj
            if relu:
                layer.c_fc.fused = "relu"
            layer.act = nn.Identity() if relu else ACT2FN[hf.config.activation_function]
            self.layers.append(layer)
        self.ln_f = hf.ln_f

    def _attend(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, last_only: bool) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.n_head
        q, k, v = layer.c_attn(layer.ln_1(x)).split(d, dim=2)  # 3 × (B, T, D)
        if last_only:
            q = q[:, -1:]  # (B, 1, D): the final query attends to every (unmasked) key
        q, k, v = (z.reshape(b, -1, self.n_head, hd).transpose(1, 2) for z in (q, k, v))  # (B, H, ·, hd)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, -1:] if last_only else mask)
        out = out.transpose(1, 2).reshape(b, -1, d)  # (B, T or 1, D)
        return layer.attn_proj(out)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), token_mask (B, T) bool → final hidden state of the last token (B, D)."""
        t = x.shape[1]
        mask = None
        if not bool(token_mask.all()):
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            # Padded queries see themselves, so no row is all masked (which would give NaN).
            mask = (causal & token_mask[:, None, :]) | torch.eye(t, dtype=torch.bool, device=x.device)
            mask = mask[:, None]  # (B, 1, T, T)
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            attended = self._attend(layer, x, mask, last_only=last)
            x = (x[:, -1:] if last else x) + attended
            x = x + layer.mlp_proj(layer.act(layer.c_fc(layer.ln_2(x))))
        return self.ln_f(x[:, -1])  # (B, D)


class ActionPolicy(nn.Module):
    """The action a Decision Transformer takes at the last step of its windows.

    ``forward(states, actions, returns_to_go, timesteps, mask)`` with the shapes of
    :meth:`DecisionTransformer.forward` → (B, act). For a GPT-2 backbone on a CPU it runs
    the packed inference path of this module (the state token s_t is the last one whose
    output matters, so the trailing action placeholder and the last block's other queries
    are never computed); otherwise it is the model's own forward.
    """

    def __init__(self, model: nn.Module, rows_hint: int = 64) -> None:
        super().__init__()
        packed = packed_for_inference(model, rows_hint)
        self.model = packed
        self.layers: _GPT2Layers | None = None
        backbone = getattr(packed, "backbone", None)
        hf = getattr(backbone, "hf", None)
        if packed is not model and getattr(backbone, "kind", None) == "gpt2" and _plain_gpt2(hf):
            self.layers = _GPT2Layers(hf)

    @torch.no_grad()
    def encode_states(self, states: torch.Tensor) -> torch.Tensor:
        """State tokens (B, K, h) of states (B, K, ...), for ``forward(state_tokens=...)``."""
        return self.model.embed_state(states)

    @torch.no_grad()
    def forward(self, states: torch.Tensor | None, actions: torch.Tensor, returns_to_go: torch.Tensor,
                timesteps: torch.Tensor, mask: torch.Tensor, state_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The action logits or values at the last step (B, act); ``state_tokens`` (B, K, h)
        from :meth:`encode_states` replace ``states``."""
        tokens, token_mask = self.model.embed(states, actions, returns_to_go, timesteps, mask,
                                              state_tokens=state_tokens)  # (B, 3K, h), (B, 3K)
        if self.layers is None:
            return self.model.predict(tokens, token_mask)[:, -1]  # (B, act)
        # Drop a_t's placeholder: s_t, the token the action is read from, comes before it.
        hidden = self.layers(tokens[:, :-1], token_mask[:, :-1])  # (B, h)
        return self.model.predict_action(hidden)  # (B, act)


def _plain_gpt2(hf: nn.Module | None) -> bool:
    """A GPT2Model whose attention is the standard scaled one and whose positions are off."""
    config = getattr(hf, "config", None)
    if config is None or getattr(config, "model_type", None) != "gpt2" or not hasattr(hf, "h"):
        return False
    return (
        config.scale_attn_weights and not config.scale_attn_by_inverse_layer_idx
        and not config.reorder_and_upcast_attn and not bool(hf.wpe.weight.any())
    )
