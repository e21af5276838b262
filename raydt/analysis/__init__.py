"""What happens inside the transformer during fine-tuning (Takagi 2022; Reid et al. Fig. 2).

The measures are plain functions on tensors; :mod:`raydt.analysis.run` applies them to the
checkpoints a run keeps (``train.keep_checkpoints``) and ``raydt analyze`` prints and saves
the results under ``RUN_DIR/analysis/``.
"""

from __future__ import annotations

import torch

from raydt.analysis.mine import mine_batched, mutual_information

__all__ = ["attention_distance", "attention_distance_single_head", "cka_matrix", "gradient_confusion", "linear_cka", "mine_batched", "mutual_information",
           "pairwise_cosines", "parameter_change"]


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) of features ``x`` (n, d1) and ``y`` (n, d2) of the
    same n examples: ‖yᵀx‖²_F / (‖xᵀx‖_F ‖yᵀy‖_F) on column-centred features; 1 for the same
    features up to an orthogonal transform and isotropic scaling.

    The plain (biased) estimator has a floor that grows with the width: independent random
    features at n = 512 give about 0.6 at 768 dimensions. ``debiased`` uses the unbiased
    HSIC estimator (Song et al. 2012) instead, as Takagi's analysis code does: about 0 for
    independent features at any width (and no longer confined to [0, 1] for small n).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs (n, d1) and (n, d2) with the same n; got {tuple(x.shape)}, {tuple(y.shape)}")
    x = x.double() - x.double().mean(dim=0, keepdim=True)  # (n, d1)
    y = y.double() - y.double().mean(dim=0, keepdim=True)  # (n, d2)
    if debiased:
        if x.shape[0] < 4:
            raise ValueError("debiased linear CKA needs at least 4 examples")
        gx, gy = x @ x.T, y @ y.T  # (n, n) Gram matrices
        denom = (_hsic_unbiased(gx, gx) * _hsic_unbiased(gy, gy)).sqrt()
        return float(_hsic_unbiased(gx, gy) / denom) if float(denom) > 0 else 0.0
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / denom) if float(denom) > 0 else 0.0


def cka_matrix(xs: list[torch.Tensor], ys: list[torch.Tensor], debiased: bool = False) -> torch.Tensor:
    """Linear CKA of every feature set in ``xs`` with every one in ``ys`` (each (n, d_i), the
    same n examples) → (len(xs), len(ys)); the same values as :func:`linear_cka`, with each
    Gram matrix computed once."""
    def gram(f: torch.Tensor) -> torch.Tensor:
        f = f.double() - f.double().mean(dim=0, keepdim=True)
        return f @ f.T  # (n, n), of centred features: already H·K·H

    gx, gy = [gram(x) for x in xs], [gram(y) for y in ys]
    if debiased:
        sx = torch.stack([_hsic_unbiased(g, g) for g in gx]).sqrt()
        sy = torch.stack([_hsic_unbiased(g, g) for g in gy]).sqrt()
        cross = torch.tensor([[float(_hsic_unbiased(a, b)) for b in gy] for a in gx], dtype=torch.float64)
    else:
        sx = torch.stack([g.square().sum() for g in gx]).sqrt()
        sy = torch.stack([g.square().sum() for g in gy]).sqrt()
        cross = torch.tensor([[float((a * b).sum()) for b in gy] for a in gx], dtype=torch.float64)
    return cross / (sx[:, None] * sy[None, :]).clamp(min=torch.finfo(torch.float64).tiny)


def _hsic_unbiased(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC of Gram matrices (n, n), up to the factor 1/(n(n−3)),
    which cancels in CKA: tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2), K̃ = K with
    its diagonal zeroed."""
    n = gx.shape[0]
    kt = gx - torch.diag(torch.diagonal(gx))  # (n, n), diagonal zeroed
    lt = gy - torch.diag(torch.diagonal(gy))
    return ((kt * lt).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2))
            - 2.0 * (kt.sum(dim=0) @ lt.sum(dim=1)) / (n - 2))


def attention_distance(attn: torch.Tensor) -> torch.Tensor:
    """Mean attention distance: for attention weights (..., T, T) whose rows (queries i) sum to
    1 over the keys j they may see, Σ_j attn[i, j]·|i − j| averaged over the queries → (...)."""
    t = attn.shape[-1]
    positions = torch.arange(t, device=attn.device, dtype=attn.dtype)
    distance = (positions[:, None] - positions[None, :]).abs()  # (T, T)
    return (attn * distance).sum(dim=-1).mean(dim=-1)


def attention_distance_single_head(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention distance as Takagi's released code computes it (not the paper's definition):
    one head over the whole width, softmax(q·kᵀ/√d) over all keys with no causal mask, then
    only the lower triangle kept (not renormalised), weighted by |i − j| and averaged over the
    full T × T grid. q, k (..., T, d) → (...)."""
    t, d = q.shape[-2], q.shape[-1]
    attn = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1).tril()  # (..., T, T)
    positions = torch.arange(t, device=q.device, dtype=attn.dtype)
    distance = (positions[:, None] - positions[None, :]).abs()  # (T, T)
    return (attn * distance).mean(dim=(-2, -1))


def parameter_change(pre: dict[str, torch.Tensor], post: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per parameter tensor present in both state dicts: L2 distance, cosine similarity and
    the L2 norm before (floating-point tensors of equal shape only)."""
    out = {}
    for name, a in pre.items():
        b = post.get(name)
        if b is None or not a.is_floating_point() or a.shape != b.shape:
            continue
        a64, b64 = a.double().flatten(), b.double().flatten()
        norms = a64.norm() * b64.norm()
        out[name] = {
            "l2_distance": float((a64 - b64).norm()),
            "cosine_similarity": float(a64 @ b64 / norms) if float(norms) > 0 else float("nan"),
            "norm_before": float(a64.norm()),
        }
    return out


def pairwise_cosines(grads: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows of ``grads`` (n, P) → (n, n), in float64."""
    g = grads.double()
    unit = g / g.norm(dim=1, keepdim=True).clamp(min=torch.finfo(g.dtype).tiny)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def gradient_confusion(grads: torch.Tensor) -> float:
    """Gradient confusion (Sankararaman et al. 2020) of per-sample gradients ``grads`` (n, P):
    the minimum cosine similarity over pairs of different samples, in [−1, 1]; 1 when all
    point the same way, negative when some pair pulls the parameters in opposed directions."""
    if grads.ndim != 2 or grads.shape[0] < 2:
        raise ValueError(f"gradient_confusion needs (n >= 2, P) per-sample gradients; got {tuple(grads.shape)}")
    cos = pairwise_cosines(grads)
    return float(cos[~torch.eye(len(cos), dtype=torch.bool, device=cos.device)].min())
