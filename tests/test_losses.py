"""λ1's loss and clusters, and the λ schedules, against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raydt.losses import cosine_cluster_loss, lambda_factor
from raydt.model.clusters import cached_clusters, kmeans


def naive_paper(inputs, centers, mask):
    """Eq. 7 token by token, centre by centre."""
    total, count = 0.0, 0
    for b in range(inputs.shape[0]):
        for t in range(inputs.shape[1]):
            if not mask[b, t]:
                continue
            sims = [F.cosine_similarity(inputs[b, t], centers[j], dim=0) for j in range(centers.shape[0])]
            total = total + torch.stack(sims).max()
            count += 1
    return -total / count


def naive_as_coded(inputs, centers):
    """The released code's expression: the (B, T, C, D) product, max over C, mean over the rest."""
    return -(inputs[:, :, None, :] * centers[None, None, :, :]).amax(dim=2).mean()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    centers = torch.randn(11, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 7, generator=g) > 0.3
    return inputs, centers, mask


def test_paper_variant_equals_all_pairs_values_and_gradients(data):
    inputs, centers, mask = data
    x1 = inputs.clone().requires_grad_(True)
    x2 = inputs.clone().requires_grad_(True)
    fast = cosine_cluster_loss(x1, centers, mask)
    slow = naive_paper(x2, centers, mask)
    torch.testing.assert_close(fast, slow)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    assert x1.grad[~mask].abs().max() == 0  # padding tokens get no gradient


def test_as_coded_variant_equals_the_released_expression(data):
    inputs, centers, _ = data
    x1 = inputs.clone().requires_grad_(True)
    x2 = inputs.clone().requires_grad_(True)
    fast = cosine_cluster_loss(x1, centers, variant="as_coded")
    slow = naive_as_coded(x2, centers)
    torch.testing.assert_close(fast, slow)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_paper_variant_known_values():
    centers = torch.eye(3)
    on_a_centre = torch.tensor([[[2.0, 0, 0], [0, 0, 5.0]]])  # cos 1 with some centre
    assert cosine_cluster_loss(on_a_centre, centers).item() == pytest.approx(-1.0)
    between = torch.tensor([[[1.0, 1.0, 0]]])
    assert cosine_cluster_loss(between, centers).item() == pytest.approx(-1 / math.sqrt(2))
    # invariant to the scale of inputs and centres
    assert cosine_cluster_loss(3 * between, 7 * centers).item() == pytest.approx(-1 / math.sqrt(2))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="must be \\(B, T, D\\)"):
        cosine_cluster_loss(torch.zeros(2, 3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="unknown variant"):
        cosine_cluster_loss(torch.zeros(2, 3, 4), torch.zeros(5, 4), variant="mean")


def test_kmeans_recovers_planted_clusters():
    g = torch.Generator().manual_seed(1)
    truth = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    labels = torch.arange(800) % 8
    points = (truth[labels] + 0.05 * torch.randn(800, 16, generator=g)) * (1 + torch.rand(800, 1, generator=g))
    result = kmeans(points, 8, seed=0)
    # Every found cluster is exactly one planted cluster (a relabelling).
    pairs = set(zip(result.labels.tolist(), labels.tolist()))
    assert len(pairs) == 8 and len({a for a, _ in pairs}) == 8
    match = (result.centers @ truth.T).amax(dim=1)
    assert match.min() > 0.99
    torch.testing.assert_close(result.centers.norm(dim=1), torch.ones(8))
    # `means` are plain means of the raw members
    first = result.labels[0]
    torch.testing.assert_close(result.means[first], points[result.labels == first].mean(0))
    # seeded: the same call gives the same answer
    assert torch.equal(kmeans(points, 8, seed=0).labels, result.labels)


def test_kmeans_with_more_clusters_than_points():
    points = torch.randn(5, 4)
    result = kmeans(points, 10)
    assert result.centers.shape == (5, 4)


def test_clusters_are_cached_by_matrix_and_count(tmp_path):
    emb = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    lines = []
    c1, m1 = cached_clusters(emb, 10, cache_dir=tmp_path, log=lines.append)
    c2, m2 = cached_clusters(emb, 10, cache_dir=tmp_path, log=lines.append)
    assert torch.equal(c1, c2) and torch.equal(m1, m2) and len(lines) == 1  # computed once
    cached_clusters(emb, 12, cache_dir=tmp_path, log=lines.append)
    cached_clusters(emb + 1, 10, cache_dir=tmp_path, log=lines.append)
    assert len(lines) == 3 and len(list(tmp_path.glob("*.pt"))) == 3


def test_lambda_schedules():
    assert lambda_factor("constant", 10**6, 5000) == 1.0
    assert lambda_factor("linear", 0, 5000) == 1.0
    assert lambda_factor("linear", 2500, 5000) == 0.5
    assert lambda_factor("linear", 5000, 5000) == 0.0 and lambda_factor("linear", 9000, 5000) == 0.0
    # the released code's σ(5 − step/500) for 5000 steps
    for step in (0, 1000, 2500, 4000):
        assert lambda_factor("sigmoid", step, 5000) == pytest.approx(1 / (1 + math.exp(-(5 - step / 500))))
    assert lambda_factor("sigmoid", 2500, 5000) == pytest.approx(0.5)
