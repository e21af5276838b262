"""transformers' DecisionTransformerModel and raydt's model compute the same actions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raydt.config import ModelConfig
from raydt.hf_dt import SIDECAR, expressible, from_hf, is_hf_dt, to_hf
from raydt.model.build import build_model
from tests.helpers import quiet, tiny_config


def windows(b=4, k=6, obs=5, act=2, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, k, obs, generator=g)
    actions = torch.rand(b, k, act, generator=g) * 2 - 1
    rtg = torch.randn(b, k, 1, generator=g)
    timesteps = torch.randint(0, 90, (b, 1), generator=g) + torch.arange(k)
    mask = torch.ones(b, k, dtype=torch.bool)
    if pad:  # left padding of different lengths, as raydt's sampler and evaluator make
        for i in range(b):
            mask[i, : i % k] = False
    return states, actions, rtg, timesteps, mask


def hf_actions(hf, states, actions, rtg, timesteps, mask):
    out = hf(states=states, actions=actions, returns_to_go=rtg, timesteps=timesteps,
             attention_mask=mask.long(), return_dict=True)
    return out.action_preds


@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_exported_model_predicts_the_same_actions(activation):
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(n_embd=32, n_head=2, n_layer=3, activation=activation), 5, 2, 6, 100,
                           log=lambda _: None)
    with torch.no_grad():  # trained-looking weights: nothing left at an initial value
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    hf = to_hf(model)
    for pad in (False, True):
        batch = windows(pad=pad)
        ours = model(*batch)
        theirs = hf_actions(hf, *batch)
        mask = batch[-1]
        torch.testing.assert_close(theirs[mask], ours[mask], atol=1e-5, rtol=0)


def test_imported_random_model_predicts_the_same_actions(tmp_path):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(1)
    config = DecisionTransformerConfig(state_dim=5, act_dim=2, hidden_size=32, n_layer=2, n_head=2, max_ep_len=100,
                                       action_tanh=True, activation_function="relu")
    hf = DecisionTransformerModel(config).eval()
    with torch.no_grad():
        hf.encoder.wpe.weight.normal_()  # HF adds position row 0 to every token: a bias raydt must carry
    hf.save_pretrained(tmp_path / "dt")
    assert is_hf_dt(str(tmp_path / "dt")) and not is_hf_dt(str(tmp_path))
    model, sidecar = from_hf(str(tmp_path / "dt"), context_length=6)
    assert sidecar is None and model.args.context_length == 6
    for pad in (False, True):
        batch = windows(pad=pad, seed=3)
        mask = batch[-1]
        torch.testing.assert_close(model(*batch)[mask], hf_actions(hf, *batch)[mask], atol=1e-5, rtol=0)


def test_settings_hf_cannot_express_are_refused_by_name():
    model, _ = build_model(ModelConfig(n_embd=16, n_head=2, n_layer=1, action_head="tied"), 5, 2, 4, 50,
                           log=lambda _: None)
    with pytest.raises(Exception, match="model.action_head=tied"):
        expressible(model.args)
    model, _ = build_model(ModelConfig(n_embd=16, n_head=2, n_layer=1, ln_order="ln_then_time"), 5, 2, 4, 50,
                           log=lambda _: None)
    with pytest.raises(Exception, match="model.ln_order=ln_then_time"):
        to_hf(model)


def test_export_a_run_and_evaluate_it_as_a_decision_transformer_model(tmp_path, capsys):
    from transformers import DecisionTransformerModel

    from raydt.cli import main
    from raydt.train.loop import fit

    run = tmp_path / "run"
    fit(tiny_config("model.activation=gelu_new"), run, quiet())
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    hf = DecisionTransformerModel.from_pretrained(out)  # transformers reads it on its own
    assert hf.config.state_dim == 11 and hf.config.act_dim == 3
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["env_id"] == "Hopper-v4" and len(sidecar["state_mean"]) == 11 and sidecar["reward_scale"] == 1e-3
    card = (out / "README.md").read_text()
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"| `eval/normalized_score` | {last['eval/normalized_score']:.2f} |" in card
    assert "raydt export" in card and "Resolved spec" in card
    # the model read back carries the same evaluation facts (the round trip keeps the JSON)
    _, read_back = from_hf(str(out))
    assert read_back == sidecar
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main(["eval", f"hf-dt:{out}", "--episodes", "2", "--json"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    for key in ("eval/normalized_score", "eval/return_mean", "eval/rtg3600/length_mean"):
        assert theirs[key] == pytest.approx(ours[key], abs=1e-6), key


def test_export_refuses_by_name_and_push_fails_before_writing(tmp_path, capsys, monkeypatch):
    from raydt.cli import main
    from raydt.train.loop import fit

    run = tmp_path / "run"
    fit(tiny_config("model.action_head=tied"), run, quiet())
    assert main(["export", str(run), "--out", str(tmp_path / "a")]) == 2
    assert "model.action_head=tied" in capsys.readouterr().err and not (tmp_path / "a").exists()
    monkeypatch.setenv("RAYDT_OFFLINE", "1")
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--push-to-hub", "org/name"]) == 2
    err = capsys.readouterr().err
    assert "--push-to-hub org/name: uploads are off (RAYDT_OFFLINE)" in err and not (tmp_path / "b").exists()


def test_fine_tune_from_a_decision_transformer_model(tmp_path):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    from raydt.train.loop import RunContext, Trainer

    config = DecisionTransformerConfig(state_dim=11, act_dim=3, hidden_size=32, n_layer=2, n_head=2, max_ep_len=1000,
                                       activation_function="relu")
    DecisionTransformerModel(config).save_pretrained(tmp_path / "dt")
    trainer = Trainer(tiny_config(f"model.backbone=hf-dt:{tmp_path / 'dt'}", "model.dropout=0.0"), tmp_path / "run",
                      RunContext(log=lambda _: None))
    loaded = DecisionTransformerModel.from_pretrained(tmp_path / "dt")
    torch.testing.assert_close(trainer.model.embed_state.weight, loaded.embed_state.weight)
    torch.testing.assert_close(trainer.model.backbone.hf.h[1].mlp.c_fc.weight, loaded.encoder.h[1].mlp.c_fc.weight)
    out = trainer.fit()
    assert out["step"] == 12 and np.isfinite(out["train/loss"])
    with pytest.raises(Exception, match="states and actions are 11 and 3 wide"):
        Trainer(tiny_config(f"model.backbone=hf-dt:{tmp_path / 'dt'}", "data.dataset=generated:halfcheetah-medium"
                            "?steps=2000"), tmp_path / "run2", RunContext(log=lambda _: None))
    # No tokenizer, so λ2 never turns the (frozen, one-row) token table back on.
    with pytest.raises(Exception, match="has no usable tokenizer"):
        Trainer(tiny_config(f"model.backbone=hf-dt:{tmp_path / 'dt'}", "loss.lambda2=0.1"), tmp_path / "run3",
                RunContext(log=lambda _: None))


def _ddp_rank(rank: int, init: str, source: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from raydt.data.sampler import Batch
    from raydt.train.loop import Objective, weighted_total

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model, _ = build_model(ModelConfig(backbone=source, dropout=0.0), 5, 2, 6, 100, log=lambda _: None)
        # Wrapped as the trainer wraps it for two or more workers without λ2's text.
        module = nn.parallel.DistributedDataParallel(Objective(model.train(), None, "paper"), broadcast_buffers=False)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for step in range(2):  # a parameter without a gradient fails the second step
            states, actions, rtg, timesteps, mask = windows(seed=2 * step + rank)
            batch = Batch(returns_to_go=rtg, states=states, actions=actions, timesteps=timesteps, mask=mask)
            optimizer.zero_grad()
            weighted_total(module(batch, None), 0.0, 0.0).backward()
            optimizer.step()
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_ddp_workers_fine_tune_a_decision_transformer_model(tmp_path):
    import torch.multiprocessing as mp
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(state_dim=5, act_dim=2, hidden_size=32, n_layer=2, n_head=2, max_ep_len=100,
                                       activation_function="relu")
    DecisionTransformerModel(config).save_pretrained(tmp_path / "dt")
    mp.start_processes(_ddp_rank, args=(f"file://{tmp_path / 'store'}", f"hf-dt:{tmp_path / 'dt'}"), nprocs=2,
                       start_method="spawn", join=True)
