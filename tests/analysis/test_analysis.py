"""Known answers for the analysis measures, and the analyze commands on a real tiny run."""

import math

import numpy as np
import pytest
import torch

from raydt.analysis import (
    attention_distance,
    gradient_confusion,
    linear_cka,
    mine_batched,
    mutual_information,
    parameter_change,
)
from raydt.analysis.mine import _LogMeanExpEMA
from tests.helpers import quiet, random_batch, tiny_config, tiny_model


def test_linear_cka_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))  # orthogonal
    assert linear_cka(x, 3.5 * x @ q) == pytest.approx(1.0)  # invariant to rotation and isotropic scaling
    assert linear_cka(x, x + 7.0) == pytest.approx(1.0)  # column-centred
    independent = linear_cka(x, torch.randn(500, 30, generator=g))
    assert independent < 0.1
    # Against the formula written out with numpy-style algebra on a small case.
    a, b = torch.randn(50, 3, generator=g), torch.randn(50, 4, generator=g)
    ac, bc = a - a.mean(0), b - b.mean(0)
    expected = (bc.T @ ac).square().sum() / ((ac.T @ ac).square().sum().sqrt() * (bc.T @ bc).square().sum().sqrt())
    assert linear_cka(a, b) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="same n"):
        linear_cka(a, b[:10])


def unbiased_centred_gram(gram):
    """Kornblith et al.'s unbiased centring of a Gram matrix (n, n), written independently of
    raydt's HSIC sum: the diagonal zeroed, row/column means corrected for n − 2 and n − 1."""
    n = gram.shape[0]
    g = gram.clone()
    g.fill_diagonal_(0)
    means = g.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    g = g - means[:, None] - means[None, :]
    g.fill_diagonal_(0)
    return g


def test_debiased_cka_has_no_width_floor():
    g = torch.Generator().manual_seed(0)
    n = 512
    x, y = torch.randn(n, 768, generator=g, dtype=torch.float64), torch.randn(n, 768, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) > 0.5  # the biased estimator's floor at this width
    assert abs(linear_cka(x, y, debiased=True)) < 0.02
    assert abs(linear_cka(x[:, :128], y[:, :128], debiased=True)) < 0.02
    q, _ = torch.linalg.qr(torch.randn(768, 768, generator=g, dtype=torch.float64))
    assert linear_cka(x, 2.0 * x @ q, debiased=True) == pytest.approx(1.0)  # rotated, scaled copy
    # Against Kornblith's unbiased-centring route on a small case.
    a, b = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 9, generator=g, dtype=torch.float64)
    b = b + 0.5 * a @ torch.randn(6, 9, generator=g, dtype=torch.float64)
    ka, kb = unbiased_centred_gram(a @ a.T), unbiased_centred_gram(b @ b.T)
    expected = (ka * kb).sum() / ((ka * ka).sum() * (kb * kb).sum()).sqrt()
    assert linear_cka(a, b, debiased=True) == pytest.approx(float(expected), rel=1e-9)


def test_attention_distance_known_values():
    t = 7
    assert attention_distance(torch.eye(t)).item() == 0.0
    causal_uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]  # query i averages keys 0..i
    assert attention_distance(causal_uniform).item() == pytest.approx((t - 1) / 4)
    previous = torch.zeros(t, t)
    previous[0, 0] = 1
    previous[torch.arange(1, t), torch.arange(t - 1)] = 1  # every other query looks one back
    assert attention_distance(previous).item() == pytest.approx((t - 1) / t)
    batch = torch.stack([torch.eye(t), causal_uniform])[:, None].expand(2, 3, t, t)  # (B, H, T, T)
    assert attention_distance(batch).shape == (2, 3)


def test_parameter_change():
    pre = {"w": torch.tensor([3.0, 4.0]), "steps": torch.tensor(3)}
    post = {"w": torch.tensor([3.0, 4.0]) * 2, "steps": torch.tensor(5)}
    out = parameter_change(pre, post)
    assert list(out) == ["w"]  # integer buffers are not parameters
    assert out["w"]["l2_distance"] == pytest.approx(5.0) and out["w"]["cosine_similarity"] == pytest.approx(1.0)
    assert math.isnan(parameter_change({"z": torch.zeros(2)}, {"z": torch.ones(2)})["z"]["cosine_similarity"])


def test_mine_recovers_the_mutual_information_of_correlated_gaussians():
    g = torch.Generator().manual_seed(1)
    n, rho = 4000, 0.8
    x = torch.randn(n, 2, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, 2, generator=g)  # two independent ρ pairs
    exact = -math.log(1 - rho**2)  # 2 × (−½ log(1 − ρ²)) = 1.022 nats
    independent = torch.randn(n, 2, generator=g)
    padded = torch.nn.functional.pad(x, (0, 3))  # the same x with three zero columns
    # Three estimates trained together: each must land on its own answer.
    xs = torch.stack([torch.nn.functional.pad(x, (0, 3)), torch.nn.functional.pad(x, (0, 3)), padded])
    ys = torch.stack([y, independent, y])
    est = mine_batched(xs, ys, steps=600)
    assert est[0].item() == pytest.approx(exact, abs=0.15)
    assert abs(est[1].item()) < 0.05
    assert est[2].item() == pytest.approx(exact, abs=0.15)
    one_d = mutual_information(x[:, 0], y[:, 0], steps=600)  # vectors of shape (n,)
    assert one_d == pytest.approx(exact / 2, abs=0.1)
    with pytest.raises(ValueError, match="same E and n"):
        mine_batched(xs, ys[:, :10])


def test_mine_moving_average_gradient_is_the_exact_gradient_when_the_average_is_the_batch_mean():
    t = torch.randn(3, 50, dtype=torch.float64, requires_grad=True)
    own = (torch.logsumexp(t, dim=1) - math.log(50)).detach()
    _LogMeanExpEMA.apply(t, own).sum().backward()
    exact = torch.softmax(t.detach(), dim=1)  # ∂/∂t_j log mean e^t = e^t_j / Σ e^t
    assert torch.allclose(t.grad, exact)
    t.grad = None
    _LogMeanExpEMA.apply(t, own + math.log(2.0)).sum().backward()  # a running mean twice as large
    assert torch.allclose(t.grad, exact / 2)


def test_gradient_confusion_known_values():
    v = torch.tensor([1.0, -2.0, 0.5])
    assert gradient_confusion(v.expand(5, 3)) == pytest.approx(1.0)  # identical samples
    assert gradient_confusion(torch.stack([v, 3 * v])) == pytest.approx(1.0)  # scale does not matter
    assert gradient_confusion(torch.stack([v, -v, v])) == pytest.approx(-1.0)
    assert gradient_confusion(torch.eye(4)) == pytest.approx(0.0)
    three = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert gradient_confusion(three) == pytest.approx(0.0)  # min over pairs: (0, 2)
    with pytest.raises(ValueError, match="n >= 2"):
        gradient_confusion(v[None])


def test_per_sample_gradients_match_one_backward_per_window(tmp_path):
    from raydt.analysis.run import (
        fixed_windows,
        load_model_at,
        per_sample_gradients,
        trained_parameters,
    )
    from raydt.losses import action_loss
    from raydt.train.loop import fit

    fit(tiny_config("train.keep_checkpoints=[0]"), tmp_path, quiet())
    model, payload = load_model_at(tmp_path, 0)
    batch = fixed_windows(payload, 6)
    params = trained_parameters(model, payload["config"])
    assert "backbone.hf.wte.weight" not in params  # the token table is not trained without λ2
    per_sample = per_sample_gradients(model, batch, params, chunk=4)
    assert set(per_sample) == set(params) and all(g.shape[0] == 6 for g in per_sample.values())
    for i in (0, 5):
        model.zero_grad()
        one = [x[i:i + 1] for x in (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)]
        action_loss(model(*one), one[1], one[4]).backward()
        for name, p in params.items():
            assert torch.allclose(per_sample[name][i], p.grad, atol=1e-6), name

    # The same window six times: six equal gradients, confusion exactly 1.
    same = type(batch)(*(x[:1].expand(6, *x.shape[1:]) for x in batch))
    grads = per_sample_gradients(model, same, params)
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
    assert gradient_confusion(flat) == pytest.approx(1.0)
    assert gradient_confusion(torch.cat([flat[:3], torch.cat([g.flatten(1) for g in per_sample.values()], 1)])) < 1.0


def test_analyze_commands_on_a_run_with_kept_checkpoints(tmp_path, capsys):
    import json

    from raydt.cli import main
    from raydt.train.loop import fit

    fit(tiny_config("train.keep_checkpoints=[0, 8]"), tmp_path, quiet())
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert kept == ["last.pt", "step_0.pt", "step_8.pt"]

    assert main(["analyze", "params", str(tmp_path), "--json"]) == 0
    params = json.loads(capsys.readouterr().out)
    assert (params["pre_step"], params["post_step"]) == (0, 12)
    assert all(v["l2_distance"] > 0 for k, v in params["parameters"].items() if k.startswith("embed_state"))
    assert main(["analyze", "params", str(tmp_path), "--pre", "8", "--post", "8", "--json"]) == 0
    same = json.loads(capsys.readouterr().out)["parameters"]
    assert all(v["l2_distance"] == 0 for v in same.values())
    assert all(v["cosine_similarity"] == pytest.approx(1.0) for v in same.values() if v["norm_before"] > 0)

    assert main(["analyze", "cka", str(tmp_path), "--windows", "64"]) == 0
    out = capsys.readouterr().out
    assert "block0.attn.c_attn" in out and "block1.mlp.dropout" in out and "block1.output" in out
    cka = json.loads((tmp_path / "analysis" / "cka.json").read_text())
    # Takagi's nine sub-layers per GPT-2 block, and the block's output
    assert cka["windows"] == 64 and len(cka["layers"]) == 2 * 10 and cka["estimator"] == "debiased"
    assert all((tmp_path / "analysis" / f"{name}.png").stat().st_size > 5_000 for name in ("params", "cka"))
    assert all(0 <= v <= 1 + 1e-9 for layer in cka["layers_biased"].values() for v in layer.values())
    assert all(-0.5 <= v <= 1 + 1e-9 for layer in cka["layers"].values() for v in layer.values())
    # the estimator's null on the run's own features: debiased near 0, the biased floor above it
    null = {k: sum(abs(v) for v in cka["null_state_token"][k].values()) / 20 for k in ("debiased", "biased")}
    assert null["debiased"] < 0.1 < null["biased"] and "estimator null" in out
    assert main(["analyze", "cka", str(tmp_path), "--pre", "last", "--windows", "32", "--json"]) == 0
    self_cka = json.loads(capsys.readouterr().out)["layers"]
    assert all(v == pytest.approx(1.0) for layer in self_cka.values() for v in layer.values())

    assert main(["analyze", "attention", str(tmp_path), "--windows", "16", "--json"]) == 0
    att = json.loads(capsys.readouterr().out)
    assert list(att["distance"]) == ["0", "12"] and len(att["distance"]["0"]) == 2
    assert att["gap_to_first"]["0"] == [0.0, 0.0]
    assert all(0 < d < 3 * 5 for d in att["distance"]["12"])
    assert (tmp_path / "analysis" / "attention.png").stat().st_size > 5_000
    assert main(["analyze", "attention", str(tmp_path), "--windows", "8", "--definition", "takagi_code", "--json"]) == 0
    code = json.loads(capsys.readouterr().out)
    assert code["definition"] == "takagi_code" and len(code["distance"]["12"]) == 2

    assert main(["analyze", "cka", str(tmp_path), "--pre", "4"]) == 2
    assert "kept steps [0, 8] and 'last'" in capsys.readouterr().err

    assert main(["analyze", "grads", str(tmp_path), "--windows", "8", "--json"]) == 0
    grads = json.loads(capsys.readouterr().out)
    assert grads["step"] == 0 and grads["windows"] == 8 and len(grads["per_sample_norms"]) == 8
    assert -1 <= grads["confusion"] <= grads["mean_cosine"] <= 1
    assert sum(grads["share"].values()) == pytest.approx(1.0)
    assert grads["batch_norm_clipped"] == pytest.approx(min(grads["batch_norm"], grads["grad_clip"]))
    assert (tmp_path / "analysis" / "grads.png").stat().st_size > 5_000

    assert main(["analyze", "mi", str(tmp_path), "--windows", "64", "--mine-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "shallow" in out and "I(Y;T)" in out
    mi = json.loads((tmp_path / "analysis" / "mi.json").read_text())
    k = 5  # tiny_config's context length
    assert mi["step"] == 12 and mi["tokens"][:4] == ["R0", "s0", "a0", "R1"] and mi["tokens"][-1] == f"s{k - 1}"
    assert set(mi["blocks"]) == {"shallow", "middle", "deep"} and mi["representation"] == "mlp"  # Takagi's T_l
    assert mi["mine_preset"] == "raydt"
    assert [v["block"] for v in mi["blocks"].values()] == [0, 1, 1]
    assert all(len(v["I_XT"]) == len(v["I_YT"]) == 3 * k - 1 for v in mi["blocks"].values())
    assert (tmp_path / "analysis" / "mi.png").stat().st_size > 5_000


def test_analyze_a_folder_of_runs_checks_every_run_first(tmp_path, capsys):
    import json

    from raydt.cli import main
    from raydt.train.loop import fit

    fit(tiny_config("train.keep_checkpoints=[0]", "train.steps=4"), tmp_path / "sweep" / "a", quiet())
    fit(tiny_config("train.keep_checkpoints=[]", "train.steps=4"), tmp_path / "sweep" / "b", quiet())  # no step 0
    assert main(["analyze", "params", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert "sweep/b/checkpoints/step_0.pt not found" in err and "sweep/a" not in err
    assert not (tmp_path / "sweep" / "a" / "analysis").exists()  # nothing measured

    assert main(["analyze", "params", str(tmp_path / "sweep"), "--pre", "last", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run"].split("/")[-1] for r in rows] == ["a", "b"]
    assert all((tmp_path / "sweep" / n / "analysis" / "params.json").exists() for n in "ab")


def test_mi_representation_is_the_mlp_branch_before_the_residual_add():
    from raydt.analysis.run import _capture
    from raydt.data.sampler import Batch

    model = tiny_model().eval()
    block = model.backbone.blocks[1]
    got = _capture(model, Batch(**random_batch(b=3, k=6)), {"mlp": block.mlp, "ln_2": block.ln_2, "out": block},
                   slice(None))
    with torch.no_grad():
        torch.testing.assert_close(got["mlp"], block.mlp(got["ln_2"]))  # MLP(LN_2(x)): the branch alone
    assert not torch.allclose(got["mlp"], got["out"])  # the block output adds the skip path


def test_cka_matrix_equals_pairwise_linear_cka():
    from raydt.analysis import cka_matrix

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(30, d, generator=g) for d in (4, 7)]
    ys = [torch.randn(30, d, generator=g) for d in (5, 2, 6)]
    for debiased in (False, True):
        grid = cka_matrix(xs, ys, debiased=debiased)
        assert grid.shape == (2, 3)
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                assert float(grid[i, j]) == pytest.approx(linear_cka(x, y, debiased=debiased), rel=1e-9, abs=1e-12)


def test_takagi_code_attention_distance_known_values():
    from raydt.analysis import attention_distance_single_head

    # q = k = 0: every query spreads 1/T over all T keys; the lower triangle keeps j ≤ i.
    t = 4
    zeros = torch.zeros(t, 8)
    expected = sum((i - j) / t for i in range(t) for j in range(i + 1)) / (t * t)  # 2.5 / 16
    assert attention_distance_single_head(zeros, zeros).item() == pytest.approx(expected) == pytest.approx(0.15625)
    # Sharp attention on the key itself: distance 0; on key 0 from every query: Σ_i i / T².
    eye = 50.0 * torch.eye(t)
    assert attention_distance_single_head(eye, torch.eye(t)).item() == pytest.approx(0.0, abs=1e-6)
    first = torch.zeros(t, t)
    first[0] = 1.0  # key 0 is the only one any query matches
    assert attention_distance_single_head(50.0 * torch.ones(t, t), first).item() == pytest.approx(6 / 16, abs=1e-6)


def test_takagi_gradient_protocol_is_the_clipped_per_window_gradient_of_the_blocks(tmp_path):
    from raydt.analysis.run import (
        fixed_windows,
        grads,
        load_model_at,
        per_sample_gradients,
        trained_parameters,
    )
    from raydt.train.loop import fit

    fit(tiny_config("train.keep_checkpoints=[0]", "train.steps=4", "model.dropout=0.0"), tmp_path, quiet())
    ours = grads(tmp_path, 0, windows=6, protocol="takagi")
    # Re-derived: each window's full gradient (vmap path; no dropout, so train = eval mode),
    # scaled by min(1, clip / its norm), then only the transformer blocks' entries.
    model, payload = load_model_at(tmp_path, 0)
    params = trained_parameters(model, payload["config"])
    full = per_sample_gradients(model, fixed_windows(payload, 6), params)
    norms = torch.cat([g.flatten(1) for g in full.values()], dim=1).double().norm(dim=1)  # (6,)
    scale = (0.25 / norms).clamp(max=1.0)
    blocks = torch.cat([g.flatten(1) for name, g in full.items() if name.startswith("backbone.hf.h.")], dim=1).double()
    expected = blocks * scale[:, None]
    assert ours["parameters"] == blocks.shape[1] and ours["protocol"] == "takagi"
    np.testing.assert_allclose(ours["per_sample_norms"], expected.norm(dim=1).numpy(), rtol=1e-4)
    assert max(ours["per_sample_norms"]) <= 0.25 + 1e-6


def test_takagi_mine_preset_recovers_the_known_information():
    from raydt.analysis.mine import MINE_PRESETS

    g = torch.Generator().manual_seed(2)
    n, rho = 3000, 0.8
    x = torch.randn(n, 1, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, 1, generator=g)
    exact = -0.5 * math.log(1 - rho**2)  # 0.511 nats
    # 3 × 400 units, lr 1e-4, batch 50, the bound on the training samples (Takagi's settings).
    est = mine_batched(x[None], y[None], steps=1000, **MINE_PRESETS["takagi"])
    assert est.item() == pytest.approx(exact, abs=0.15)


def test_attention_figure_names_its_axes_and_tokens_and_is_not_scaled_by_the_first_key():
    import numpy as np

    from raydt.analysis.run import attention_figure

    t = 12  # 4 steps × (R, s, a)
    sink = np.tril(np.full((t, t), 0.02))
    sink[:, 0] = 0.9  # the first key takes most of the weight, as in many heads
    result = {"windows": 8, "_maps": {"0": [sink] * 3, "100": [sink * 0.5] * 3}}
    fig = attention_figure(result)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * 3 and len(fig.axes) == len(panels) + 1  # one colour bar
    ax = panels[0]
    assert ax.get_xlabel() == "key token" and ax.get_ylabel() == "query token"
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels[:4] == ["R1", "s1", "a1", "R2"]
    vmax = ax.get_images()[0].norm.vmax
    assert vmax < 0.9  # the first key's weight does not set the scale...
    assert vmax >= 0.02  # ...the other weights still reach it
