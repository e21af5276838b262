"""Cosine k-means over a language model's token embeddings, cached on disk.

Reid et al. reduce the vocabulary V to C cluster centres (the released code: 1000, cosine
k-means) so that L_cos compares each input token with C vectors instead of |V|. This is
spherical k-means in torch: points and centres on the unit sphere, assignment by largest
cosine, centre = normalised sum of members. Similarities are computed in chunks, so memory
is O(chunk·C) beyond the data itself: a GPT-2 vocabulary (50257 × 768) at C = 1000 needs a
few hundred MB and about a second per iteration on two CPU cores.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from raydt.artifacts import refuse_build
from raydt.fsutil import atomic_path, data_dir, locked

_CHUNK = 8192


@dataclass(frozen=True)
class Clusters:
    """The result of :func:`kmeans`."""

    centers: torch.Tensor
    """(C, D) unit-norm centres (the paper's variant compares against these)."""
    means: torch.Tensor
    """(C, D) plain means of each cluster's raw vectors (what the released code's k-means
    returns; the ``as_coded`` loss variant uses these)."""
    labels: torch.Tensor
    """(N,) cluster of every point."""
    iterations: int
    """Iterations run before assignments stopped changing (or the limit)."""


def _assign(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best centre and its cosine for every row of unit-norm ``x`` (N, D), in chunks."""
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    best = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], _CHUNK):
        sims = x[start:start + _CHUNK] @ centers.T  # (chunk, C)
        best[start:start + _CHUNK], labels[start:start + _CHUNK] = sims.max(dim=1)
    return labels, best


def kmeans(points: torch.Tensor, num_clusters: int, seed: int = 0, max_iters: int = 100) -> Clusters:
    """Spherical k-means of ``points`` (N, D) into ``min(num_clusters, N)`` clusters.

    Initialised with k-means++ on cosine distance (seeded), so results are reproducible.
    A cluster that empties is re-seeded with the point farthest from its centre.
    """
    raw = points.detach().float()
    x = F.normalize(raw, dim=1)  # (N, D)
    n = x.shape[0]
    c = min(num_clusters, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    # Greedy k-means++ (as scikit-learn): candidates drawn with probability ∝ (1 − best
    # cosine so far); the one that most lowers the total distance becomes the next centre.
    trials = 2 + int(math.log(c))
    centers = torch.empty(c, x.shape[1], dtype=x.dtype, device=x.device)
    first = int(torch.randint(n, (1,), generator=gen))
    centers[0] = x[first]
    closest = (x @ x[first]).clamp(max=1.0)  # (N,)
    for k in range(1, c):
        weight = (1.0 - closest).clamp(min=0).cpu()
        if float(weight.sum()) <= 0:  # fewer distinct points than clusters
            idx = torch.randint(n, (trials,), generator=gen)
        else:
            idx = torch.multinomial(weight, trials, replacement=True, generator=gen)
        candidate = torch.maximum(closest.unsqueeze(0), x[idx.to(x.device)] @ x.T)  # (trials, N)
        best = int((1.0 - candidate).sum(dim=1).argmin())
        centers[k] = x[idx[best]]
        closest = candidate[best]

    labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
    iterations = 0
    while iterations < max_iters:
        iterations += 1
        new_labels, best = _assign(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)  # (C, D)
        counts = torch.bincount(new_labels, minlength=c)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = best.argsort()[: len(empty)]  # the worst-served points
            sums[empty] = x[far]
            new_labels[far] = empty
        centers = F.normalize(sums, dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    counts = torch.bincount(labels, minlength=c).clamp(min=1).unsqueeze(1)
    means = torch.zeros_like(centers).index_add_(0, labels, raw) / counts  # (C, D)
    return Clusters(centers=centers, means=means, labels=labels, iterations=iterations)


def _cache_key(embeddings: torch.Tensor, num_clusters: int, seed: int) -> str:
    digest = hashlib.sha256(embeddings.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    return f"{digest[:20]}-c{num_clusters}-s{seed}"


def clusters_path(embeddings: torch.Tensor, num_clusters: int, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Where :func:`cached_clusters` keeps the clusters of ``embeddings``: named by their content."""
    return (cache_dir or data_dir() / "kmeans") / f"{_cache_key(embeddings, num_clusters, seed)}.pt"


def cached_clusters(
    embeddings: torch.Tensor,
    num_clusters: int,
    seed: int = 0,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit centres, raw means) of ``embeddings`` (V, D), computed once per matrix and C.

    The cache key is a hash of the matrix itself, so two directories holding the same model
    share one entry and a re-trained model never reads a stale one.
    """
    path = clusters_path(embeddings, num_clusters, seed, cache_dir)
    with locked(path):
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return saved["centers"], saved["means"]
        refuse_build(f"the k-means centres of λ1 ({num_clusters} clusters, {path.name})")
        log(f"k-means: {embeddings.shape[0]} token embeddings → {num_clusters} clusters (cached at {path})")
        result = kmeans(embeddings.cpu(), num_clusters, seed=seed)
        with atomic_path(path) as tmp:
            torch.save({"centers": result.centers, "means": result.means}, tmp)
        return result.centers, result.means
