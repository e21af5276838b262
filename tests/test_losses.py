"""λ1's loss and clusters, and the λ schedules, against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raydt.losses import cosine_cluster_loss, lambda_factor
from raydt.model.clusters import cached_clusters, kmeans
from tests.helpers import random_batch, tiny_config, tiny_model


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


def naive_cotraining(inputs, centers):
    """The released co-training trainer's expression on raw vectors: the (B, T, C, D) product
    "iaj,bj->iabj", max over C, mean over everything else."""
    return -torch.einsum("iaj,bj->iabj", inputs, centers).amax(dim=2).mean()


def naive_main_trainer(inputs, centers):
    """Reid's main trainer: the same expression on F.normalize'd inputs and centres, every
    token (padding included), written out coordinate by coordinate."""
    x = inputs / inputs.norm(dim=-1, keepdim=True)
    c = centers / centers.norm(dim=-1, keepdim=True)
    b, t, d = x.shape
    total = 0.0
    for i in range(b):
        for a in range(t):
            for j in range(d):
                total = total + (x[i, a, j] * c[:, j]).max()
    return -total / (b * t * d)


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


@pytest.mark.parametrize("variant,naive", [("as_coded", naive_main_trainer), ("as_coded_cotraining", naive_cotraining)])
def test_as_coded_variants_equal_the_released_expressions(data, variant, naive):
    inputs, centers, _ = data
    x1 = inputs.clone().requires_grad_(True)
    x2 = inputs.clone().requires_grad_(True)
    fast = cosine_cluster_loss(x1, centers, variant=variant)
    slow = naive(x2, centers)
    torch.testing.assert_close(fast, slow)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_the_main_trainer_and_the_cotraining_forms_are_far_apart(data):
    # Unit vectors bound the products by 1/D-ish; raw ones are not bounded: 10× apart and more.
    inputs, centers, _ = data
    main = cosine_cluster_loss(3 * inputs, 3 * centers, variant="as_coded").abs()
    raw = cosine_cluster_loss(3 * inputs, 3 * centers, variant="as_coded_cotraining").abs()
    assert raw > 10 * main


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


def test_as_coded_objective_uses_untimed_layer_norm_tokens_and_padding():
    from raydt.data.sampler import Batch
    from raydt.train.loop import Objective

    model = tiny_model().eval()
    centers = torch.randn(9, 32, generator=torch.Generator().manual_seed(1))
    batch = Batch(**random_batch(b=2, k=6))
    batch.mask[0, :3] = False  # padded steps still count, as in the released loss
    out = Objective(model, centers, "as_coded")(batch, None)
    # all_embs of Reid's model, derived here from the embedding layers: LN of the stacked
    # (R̂, s, a) embeddings before any timestep is added.
    with torch.no_grad():
        r = model.embed_return(batch.returns_to_go)
        s = model.embed_state(batch.states)
        a = model.embed_action(batch.actions)
        stacked = torch.stack((r, s, a), dim=1).permute(0, 2, 1, 3).reshape(2, 18, 32)
        all_embs = model.embed_ln(stacked)
    torch.testing.assert_close(out["cos"], naive_main_trainer(all_embs.double(), centers.double()).float(),
                               atol=1e-6, rtol=1e-5)


def test_lambda2_constant_as_the_released_co_training_keeps_it():
    from types import SimpleNamespace

    from raydt.train.loop import Trainer

    common = ("loss.lambda1=0.1", "loss.lambda2=0.2", "loss.lambda_schedule=sigmoid", "loss.lambda_decay_steps=15000")
    at = lambda cfg, step: Trainer.lambdas(SimpleNamespace(config=cfg, step=step))  # noqa: E731
    paper = tiny_config(*common)
    coded = tiny_config(*common, "loss.lambda2_schedule=constant")
    f = lambda_factor("sigmoid", 7500, 15000)
    assert at(paper, 7500) == pytest.approx((0.1 * f, 0.2 * f)) and f == pytest.approx(0.5)
    assert at(coded, 7500) == pytest.approx((0.1 * f, 0.2))  # λ1 anneals, λ2 stays
