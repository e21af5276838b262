"""Training objectives of Reid et al.: L = L_action + λ1·L_cos + λ2·L_LM.

``cosine_cluster_loss`` is Eq. 7–8 (the similarity of the input representations to the
language model's token-embedding clusters); the LM term lives with the backbone
(:meth:`raydt.model.backbones.Backbone.lm_loss`). Both weights follow one schedule.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

CosineVariant = Literal["paper", "as_coded", "as_coded_cotraining"]
Schedule = Literal["linear", "sigmoid", "constant"]


def action_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Over real (unpadded) steps, mask (B, K) → scalar: MSE for continuous actions
    (pred/target (B, K, act)); cross-entropy for action ids (pred (B, K, n) logits, target
    (B, K) integers)."""
    pred = pred.float()  # the loss in fp32 under bf16 autocast
    if not target.is_floating_point():
        err = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none").view(mask.shape)  # (B, K)
    else:
        err = (pred - target.float()).square().mean(dim=-1)  # (B, K)
    weight = mask.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, T) over positions where ``mask`` (B, T) is true."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def cosine_cluster_loss(
    inputs: torch.Tensor,
    centers: torch.Tensor,
    mask: torch.Tensor | None = None,
    variant: CosineVariant = "paper",
) -> torch.Tensor:
    """−mean over real tokens i of max_j cos(inputs_i, centers_j).

    inputs (B, T, D): the token representations fed to the backbone; centers (C, D): cluster
    centres of the language model's token embeddings; mask (B, T): true for real tokens.

    ``paper`` is Reid et al. Eq. 7 with the mean over tokens in place of the sum (so λ1 does
    not scale with B·T): one (B·T, C) similarity matrix, never a (B, T, C, D) tensor.

    ``as_coded`` is what Reid's released main trainer computes (``kmeans_cosine_max_loss``
    on ``F.normalize``'d centres and inputs): for every token and every coordinate d, the
    maximum over centres of x̂[d]·ĉ_j[d] on unit vectors, averaged over tokens and
    coordinates. ``as_coded_cotraining`` is the same on the raw vectors (the released LM
    co-training trainer). The maximum of a product with a fixed factor is attained at the
    largest centre coordinate when the factor is positive and at the smallest when it is
    negative, so both take O(B·T·D) memory instead of the code's O(B·T·C·D). The released
    code averages over every token, padding included: callers pass ``mask=None`` for that.
    """
    if inputs.dim() != 3 or centers.dim() != 2 or inputs.shape[-1] != centers.shape[-1]:
        raise ValueError(
            f"cosine_cluster_loss: inputs {tuple(inputs.shape)} must be (B, T, D) and centers "
            f"{tuple(centers.shape)} (C, D) with the same D"
        )
    centers = centers.to(inputs.dtype)
    if variant == "paper":
        x = F.normalize(inputs, dim=-1)  # (B, T, D)
        c = F.normalize(centers, dim=-1)  # (C, D)
        best = (x @ c.T).amax(dim=-1)  # (B, T, C) → (B, T)
    elif variant in ("as_coded", "as_coded_cotraining"):
        if variant == "as_coded":
            inputs, centers = F.normalize(inputs, dim=-1), F.normalize(centers, dim=-1)
        hi = centers.amax(dim=0)  # (D,)
        lo = centers.amin(dim=0)  # (D,)
        per_coord = torch.where(inputs >= 0, inputs * hi, inputs * lo)  # (B, T, D)
        best = per_coord.mean(dim=-1)  # (B, T)
    else:
        raise ValueError(f"cosine_cluster_loss: unknown variant {variant!r}; use 'paper', 'as_coded' or "
                         "'as_coded_cotraining'")
    return -_masked_mean(best, mask)


def lambda_factor(schedule: Schedule, step: int, decay_steps: int) -> float:
    """The fraction of λ1 and λ2 in force at ``step`` (0-based).

    ``linear``: 1 → 0 over ``decay_steps`` and 0 after (the paper: both decay to 0 by 5000).
    ``sigmoid``: σ(5 − 10·step/decay_steps), the released code's annealing (σ(5 − step/500)
    for 5000 steps); about 0.99 at the start, 0.5 at half way, 0.007 at ``decay_steps``.
    ``constant``: 1 throughout.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - step / decay_steps)
    if schedule == "sigmoid":
        return 1.0 / (1.0 + math.exp(-(5.0 - 10.0 * step / decay_steps)))
    raise ValueError(f"unknown lambda schedule {schedule!r}; use linear, sigmoid or constant")
