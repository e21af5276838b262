"""Mutual information by MINE (Belghazi et al. 2018), many estimates trained at once.

For samples (x_i, y_i) of a joint distribution, a statistics network T(x, y) is trained to
maximise the Donsker–Varadhan lower bound

    I(X; Y) ≥ E_joint[T] − log E_marginal[e^T],

where marginal pairs pair x_i with the y of another sample (a shuffle). The minibatch
gradient of the log term is biased (a ratio of expectations); MINE replaces its denominator
with a moving average of E[e^T], which :class:`_LogMeanExpEMA` does in log space so large T
cannot overflow.

A Takagi-style analysis needs hundreds of estimates (blocks × token positions × two kinds),
each a small MLP on the same number of samples. They are trained together as one batched
MLP: estimate e's weights are slice e of (E, ·, ·) tensors and every layer is one ``bmm``.
Inputs of different widths are zero-padded to a common width; a zero input column never
changes the function nor receives a gradient, so padding does not alter an estimate.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _LogMeanExpEMA(torch.autograd.Function):
    """log mean_j exp(t_ej) per estimate, whose backward divides by a moving average of
    mean exp(t) instead of the minibatch's own (MINE's bias correction)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, log_running: torch.Tensor) -> torch.Tensor:
        # t (E, B), log_running (E,) → (E,)
        ctx.save_for_backward(t, log_running)
        return torch.logsumexp(t, dim=1) - math.log(t.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        t, log_running = ctx.saved_tensors
        weights = torch.exp(t - log_running[:, None]) / t.shape[1]  # (E, B): e^t / (B · running)
        return grad[:, None] * weights, None


class _BatchedStatistics(nn.Module):
    """E independent MLPs ([x, y] → hidden → … → 1, ``depth`` hidden layers, ReLU) evaluated
    with bmm.

    The first layer is kept as its x and y halves: a joint and a marginal batch share the
    same x rows, so the x half is computed once for both.
    """

    def __init__(self, estimates: int, dx: int, dy: int, hidden: int, generator: torch.Generator,
                 depth: int = 2) -> None:
        super().__init__()

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation range
            return nn.Parameter((torch.rand(estimates, *shape, generator=generator) * 2 - 1) * bound)

        self.w1x, self.w1y = uniform(dx, hidden, fan_in=dx + dy), uniform(dy, hidden, fan_in=dx + dy)
        self.b1 = uniform(1, hidden, fan_in=dx + dy)
        self.ws = nn.ParameterList(uniform(hidden, hidden, fan_in=hidden) for _ in range(depth - 1))
        self.bs = nn.ParameterList(uniform(1, hidden, fan_in=hidden) for _ in range(depth - 1))
        self.w3, self.b3 = uniform(hidden, 1, fan_in=hidden), uniform(1, 1, fan_in=hidden)

    def x_part(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, B, dx) → first-layer pre-activation share of x plus bias (E, B, hidden)."""
        return torch.baddbmm(self.b1, x, self.w1x)

    def forward(self, x_part: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_part (E, B, hidden) from :meth:`x_part`, y (E, B, dy) → T (E, B)."""
        h = torch.relu(torch.baddbmm(x_part, y, self.w1y))  # (E, B, hidden)
        for w, b in zip(self.ws, self.bs):
            h = torch.relu(torch.baddbmm(b, h, w))  # (E, B, hidden)
        return torch.baddbmm(self.b3, h, self.w3).squeeze(-1)  # (E, B)


def _standardize(v: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per feature over the samples (dim 1); constant features → 0.
    MI is invariant to such invertible maps, and the statistics network trains far better."""
    std = v.std(dim=1, keepdim=True)
    return (v - v.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))


def mine_batched(
    xs: torch.Tensor,
    ys: torch.Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    hidden: int = 64,
    depth: int = 2,
    lr: float = 1e-3,
    ema: float = 0.01,
    held_out: float = 0.2,
    shuffles: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """E MINE estimates in nats: ``xs`` (E, n, dx) and ``ys`` (E, n, dy) → (E,).

    Each estimate e pairs row i of ``xs[e]`` with row i of ``ys[e]`` (zero-pad narrower
    variables). The statistics networks train on a random (1 − ``held_out``) of the n
    samples; the bound reported is evaluated on the rest, with the marginal term averaged
    over ``shuffles`` permutations, so memorising the training pairs cannot inflate it.
    Negative estimates (no dependence the network could find) are reported as they are.
    ``held_out=0`` trains and evaluates on all n samples (Takagi's code; see MINE_PRESETS).
    """
    if xs.ndim != 3 or ys.ndim != 3 or xs.shape[:2] != ys.shape[:2]:
        raise ValueError(f"mine_batched needs (E, n, dx) and (E, n, dy) with the same E and n; "
                         f"got {tuple(xs.shape)}, {tuple(ys.shape)}")
    e, n = xs.shape[:2]
    g = torch.Generator().manual_seed(seed)
    xs, ys = _standardize(xs.float()), _standardize(ys.float())
    order = torch.randperm(n, generator=g)
    if held_out > 0:
        n_test = max(2, int(round(n * held_out)))
        test, train = order[:n_test], order[n_test:]
    else:  # the bound on the training samples themselves, as Takagi's code reports it
        n_test, test, train = n, order, order
    if len(train) < 2:
        raise ValueError(f"MINE needs more samples: {n} given")
    batch_size = min(batch_size, len(train))

    net = _BatchedStatistics(e, xs.shape[2], ys.shape[2], hidden, g, depth=depth)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    log_running = torch.zeros(e)  # log of the moving average of E_marginal[e^T]
    log_ema, log_keep = math.log(ema), math.log1p(-ema)
    for step in range(steps):
        rows = train[torch.randint(len(train), (batch_size,), generator=g)]
        shuffled = train[torch.randint(len(train), (batch_size,), generator=g)]
        x_part = net.x_part(xs.index_select(1, rows))  # (E, B, hidden)
        joint = net(x_part, ys.index_select(1, rows))  # (E, B)
        marginal = net(x_part, ys.index_select(1, shuffled))  # (E, B): x_i with another sample's y
        with torch.no_grad():
            lme = torch.logsumexp(marginal, dim=1) - math.log(batch_size)
            log_running = lme if step == 0 else torch.logaddexp(log_keep + log_running, log_ema + lme)
        bound = joint.mean(dim=1) - _LogMeanExpEMA.apply(marginal, log_running)  # (E,)
        opt.zero_grad(set_to_none=True)
        (-bound.sum()).backward()  # estimates share no weights: the sum trains each on its own
        opt.step()

    with torch.no_grad():
        x_part, yt = net.x_part(xs[:, test]), ys[:, test]
        joint = net(x_part, yt).mean(dim=1)  # (E,)
        marg = torch.stack([net(x_part, yt[:, torch.randperm(n_test, generator=g)])
                            for _ in range(shuffles)], dim=1).flatten(1)  # (E, shuffles·n_test)
        return joint - (torch.logsumexp(marg, dim=1) - math.log(marg.shape[1]))


MINE_PRESETS: dict[str, dict[str, float]] = {
    "raydt": {"hidden": 64, "depth": 2, "lr": 1e-3, "batch_size": 256, "held_out": 0.2},
    # mine-pytorch as Takagi runs it (util_mi_calculation.py at 200abbe): [x, y] → 400 → 400
    # → 400 → 1, Adam 1e-4, batch 50, and the bound reported on the samples it trained on.
    "takagi": {"hidden": 400, "depth": 3, "lr": 1e-4, "batch_size": 50, "held_out": 0.0},
}
"""Estimator settings by name (``raydt analyze mi --mine-preset``)."""


def mutual_information(x: torch.Tensor, y: torch.Tensor, **kwargs) -> float:
    """MINE estimate of I(X; Y) in nats for samples ``x`` (n, dx) and ``y`` (n, dy) drawn
    jointly (row i of each is one draw); keyword arguments as :func:`mine_batched`."""
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    return float(mine_batched(x[None], y[None], **kwargs)[0])
