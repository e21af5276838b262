"""Known answers for the analysis measures, and the analyze commands on a real tiny run."""

import math

import pytest
import torch

from raydt.analysis import attention_distance, linear_cka, parameter_change


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


def test_analyze_commands_on_a_run_with_kept_checkpoints(tmp_path, capsys):
    import json

    from raydt.cli import main
    from raydt.train.loop import fit
    from tests.test_train import quiet, tiny_config

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
    assert "block0.attn" in out and "block1.output" in out
    cka = json.loads((tmp_path / "analysis" / "cka.json").read_text())
    assert cka["windows"] == 64 and len(cka["layers"]) == 2 * 5
    assert all(0 <= v <= 1 + 1e-9 for layer in cka["layers"].values() for v in layer.values())
    assert main(["analyze", "cka", str(tmp_path), "--pre", "last", "--windows", "32", "--json"]) == 0
    self_cka = json.loads(capsys.readouterr().out)["layers"]
    assert all(v == pytest.approx(1.0) for layer in self_cka.values() for v in layer.values())

    assert main(["analyze", "attention", str(tmp_path), "--windows", "16", "--json"]) == 0
    att = json.loads(capsys.readouterr().out)
    assert list(att["distance"]) == ["0", "12"] and len(att["distance"]["0"]) == 2
    assert att["gap_to_first"]["0"] == [0.0, 0.0]
    assert all(0 < d < 3 * 5 for d in att["distance"]["12"])
    assert (tmp_path / "analysis" / "attention.png").stat().st_size > 5_000

    assert main(["analyze", "cka", str(tmp_path), "--pre", "4"]) == 2
    assert "kept steps [0, 8] and 'last'" in capsys.readouterr().err
