from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raydt.config import ModelConfig
from raydt.data.sampler import WindowSampler
from raydt.losses import action_loss
from raydt.model.backbone import build_backbone, strip_prefixes
from raydt.model.build import build_model
from raydt.model.dt import ModelArgs, rebuild_model
from raydt.train.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import TINY_MODEL, random_batch, random_trajectories, tiny_model


def test_token_order_is_return_state_action_per_step():
    model = tiny_model().eval()
    batch = random_batch(b=1, k=3)
    tokens, token_mask = model.embed(**batch)
    assert tokens.shape == (1, 9, 32) and token_mask.shape == (1, 9)
    time = model.embed_timestep(batch["timesteps"])
    expected = torch.stack([
        model.embed_return(batch["returns_to_go"]) + time,
        model.embed_state(batch["states"]) + time,
        model.embed_action(batch["actions"]) + time,
    ], dim=2)  # (1, K, 3, h)
    for t in range(3):
        for j in range(3):  # R̂_t, s_t, a_t sit at 3t, 3t+1, 3t+2
            torch.testing.assert_close(tokens[0, 3 * t + j], model.embed_ln(expected[0, t, j]))


@pytest.mark.parametrize("t", [0, 2, 4])
def test_causal_mask_future_steps_do_not_change_past_predictions(t):
    model = tiny_model().eval()
    batch = random_batch()
    before = model(**batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["states"][:, t + 1:] += 5.0
    changed["actions"][:, t:] = -changed["actions"][:, t:]  # a_t itself is not an input to a_t's prediction
    changed["returns_to_go"][:, t + 1:] -= 3.0
    after = model(**changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])
    assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])


def test_padding_does_not_reach_real_steps():
    model = tiny_model().eval()
    batch = random_batch()
    batch["mask"][:, :2] = False
    out = model(**batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["states"][:, :2] = 123.0
    other["actions"][:, :2] = 7.0
    other["returns_to_go"][:, :2] = -9.0
    torch.testing.assert_close(model(**other)[:, 2:], out[:, 2:])
    assert torch.isfinite(out).all()


def test_return_conditioning_changes_the_action():
    model = tiny_model().eval()
    batch = random_batch()
    low = model(**batch)
    batch["returns_to_go"] = batch["returns_to_go"] + 3.0
    assert (model(**batch) - low).abs().max() > 1e-3


def hf_dt_model(tmp_path, context_length=6, obs_dim=5, act_dim=2):
    """The tiny model fine-tuning a DecisionTransformerModel (``model.backbone: hf-dt:…``)."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(0)
    config = DecisionTransformerConfig(state_dim=obs_dim, act_dim=act_dim, hidden_size=32, n_layer=2, n_head=2,
                                       max_ep_len=100, activation_function="relu")
    DecisionTransformerModel(config).save_pretrained(tmp_path / "dt")
    model, _ = build_model(ModelConfig(backbone=f"hf-dt:{tmp_path / 'dt'}", dropout=0.0), obs_dim, act_dim,
                           context_length, 100, log=lambda _: None)
    return model.train()


@pytest.mark.parametrize("backbone", ["gpt2", "hf-dt"])
def test_one_step_moves_every_trainable_parameter_and_no_frozen_one(backbone, tmp_path):
    # DDP (find_unused_parameters off) fails a run's second step on a trainable parameter
    # that gets no gradient.
    model = tiny_model() if backbone == "gpt2" else hf_dt_model(tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=10.0)
    batch = random_batch()
    loss = action_loss(model(**batch), batch["actions"] + 0.5, batch["mask"])
    loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == p.requires_grad, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.hf.wpe.weight", "backbone.hf.wte.weight"}
    wpe = model.backbone.hf.wpe.weight
    if backbone == "gpt2":
        assert torch.count_nonzero(wpe) == 0  # positions switched off
    else:
        assert torch.equal(wpe, wpe[:1].expand_as(wpe))  # HF's row 0 on every token: a constant bias


def test_overfits_one_batch():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = random_batch(b=8)
    for _ in range(300):
        loss = action_loss(model(**batch), batch["actions"], batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_action_loss_ignores_padded_steps():
    pred = torch.zeros(2, 3, 1)
    target = torch.tensor([[[1.0], [2.0], [3.0]], [[0.0], [0.0], [5.0]]])
    mask = torch.tensor([[False, True, True], [False, False, True]])
    assert action_loss(pred, target, mask).item() == pytest.approx((4 + 9 + 25) / 3)


def test_size_presets_match_reid_table_9():
    sizes = {}
    for size in ("dt", "3m", "18m", "84m"):
        model, _ = build_model(ModelConfig(size=size), 11, 3, 20, 1000)
        blocks = model.backbone.blocks
        sizes[size] = (model.args.n_embd, blocks[0].attn.num_heads, len(blocks),
                       sum(p.numel() for p in model.backbone.blocks.parameters()))
    assert sizes["dt"][:3] == (128, 1, 3) and sizes["3m"][:3] == (256, 4, 4)
    assert sizes["18m"][:3] == (512, 8, 6) and sizes["84m"][:3] == (768, 12, 12)
    # transformer-block parameters: ~0.6M, ~3M, ~18M, ~84M
    assert 0.5e6 < sizes["dt"][3] < 0.7e6 and 2.5e6 < sizes["3m"][3] < 3.5e6
    assert 17e6 < sizes["18m"][3] < 20e6 and 80e6 < sizes["84m"][3] < 90e6


def test_pretrained_backbone_loads_by_path_with_report(tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(1)
    lm = GPT2Model(GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=50, n_positions=64,
                              bos_token_id=0, eos_token_id=0))
    lm.save_pretrained(tmp_path / "tiny-gpt2")
    backbone, report = build_backbone((0, 0, 0), str(tmp_path / "tiny-gpt2"), 0.1, "relu", n_tokens=60)
    assert report.new == [] and report.ignored == [] and report.kind == "gpt2"
    assert "hf.h.0.attn.c_attn.weight" in report.loaded and report.disabled == ["hf.wpe.weight"]
    torch.testing.assert_close(backbone.blocks[1].mlp.c_fc.weight, lm.h[1].mlp.c_fc.weight)
    torch.testing.assert_close(backbone.position_table, lm.wpe.weight)  # kept for text and timesteps
    assert backbone.config.resid_pdrop == 0.1  # the run's dropout, not the checkpoint's
    model, _ = build_model(ModelConfig(backbone=str(tmp_path / "tiny-gpt2")), 5, 2, 20, 100)
    assert model.args.n_embd == 32
    # The switched-off position table no longer limits the context: 3·40 tokens > 64 positions.
    long, _ = build_model(ModelConfig(backbone=str(tmp_path / "tiny-gpt2"), dropout=0.0), 5, 2, 40, 100)
    batch = random_batch(b=2, k=40)
    assert torch.isfinite(long.eval()(**batch)).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="has no config.json"):
        build_backbone((0, 0, 0), str(tmp_path / "empty"), 0.1, "relu", n_tokens=60)


def test_strip_prefixes():
    sd = {"module.a.weight": 1, "_orig_mod.b": 2, "module._orig_mod.c": 3, "d": 4}
    assert strip_prefixes(sd) == {"a.weight": 1, "b": 2, "c": 3, "d": 4}


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "ck.pt", {"model": model.state_dict(), "model_args": model.args.to_dict(),
                                                  "mean": torch.from_numpy(np.arange(3.0))})
    payload = load_checkpoint(path)
    twin = rebuild_model(ModelArgs(**payload["model_args"]))
    twin.load_state_dict(payload["model"])
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    batch = random_batch()
    torch.testing.assert_close(model.eval()(**batch), twin.eval()(**batch), rtol=0, atol=0)
    # a checkpoint cut off mid-write is refused with a clear message
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception, match="cannot be read"):
        load_checkpoint(tmp_path / "cut.pt")


def test_sampled_batches_feed_the_model():
    rng = np.random.default_rng(0)
    traj = random_trajectories(rng, [30, 40], obs_dim=5, act_dim=2)
    sampler = WindowSampler(traj, 6, reward_scale=0.01)
    model = tiny_model()
    out = model(*[sampler.sample(8)[i] for i in (1, 2, 0, 3, 4)])
    assert out.shape == (8, 6, 2) and torch.isfinite(out).all()


class _Payload:
    """Not a tensor nor a plain container: unpickling it would run this module's code."""


def test_a_checkpoint_write_that_dies_leaves_the_previous_one(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"step": torch.tensor(8)})

    def dies_halfway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="killed mid-write"):
        save_checkpoint(path, {"step": torch.tensor(12)})
    monkeypatch.undo()
    assert int(load_checkpoint(path)["step"]) == 8  # the old checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no partial file left


def test_checkpoints_are_read_without_running_pickled_code(tmp_path):
    torch.save({"step": 1, "payload": _Payload()}, tmp_path / "foreign.pt")
    with pytest.raises(Exception, match="cannot be read: it holds more than tensors.*Unsupported global"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_reid_layer_norm_order_adds_the_timestep_after_the_norm():
    from dataclasses import replace

    model = tiny_model(cfg=replace(TINY_MODEL, ln_order="ln_then_time")).eval()
    batch = random_batch(b=2, k=3)
    tokens, _ = model.embed(**batch)
    with torch.no_grad():
        r = model.embed_return(batch["returns_to_go"])
        s = model.embed_state(batch["states"])
        a = model.embed_action(batch["actions"])
        time = model.embed_timestep(batch["timesteps"])
        expected = torch.stack((model.embed_ln(r) + time, model.embed_ln(s) + time, model.embed_ln(a) + time), dim=2)
    torch.testing.assert_close(tokens, expected.reshape(2, 9, 32))
    kzl, _ = tiny_model().eval().embed(**batch)  # the original DT: LN(token + time)
    assert not torch.allclose(kzl, tokens)


def test_tied_action_head_shares_the_action_embedding():
    from dataclasses import replace

    model = tiny_model(cfg=replace(TINY_MODEL, action_head="tied"))
    assert not [n for n in dict(model.named_parameters()) if n.startswith("predict_action")]  # no own weights
    batch = random_batch(b=2, k=3)
    tokens, mask = model.embed(**batch)
    hidden = model.backbone(tokens, mask).reshape(2, 3, 3, 32)[:, :, 1]  # s_t tokens (B, K, h)
    torch.testing.assert_close(model(**batch), torch.tanh(hidden @ model.embed_action.weight))  # no bias
    # The action loss reaches the action embedding through the head as well as the input.
    model.zero_grad()
    model(**batch).sum().backward()
    both = model.embed_action.weight.grad.clone()
    model.zero_grad()
    tokens, mask = model.embed(**batch)
    hidden = model.backbone(tokens, mask).reshape(2, 3, 3, 32)[:, :, 1]
    torch.tanh(hidden @ model.embed_action.weight.detach()).sum().backward()  # the input path only
    assert (both - model.embed_action.weight.grad).abs().sum() > 1e-6


def test_dropout_rates_reach_the_backbone_config():
    from dataclasses import replace

    model = tiny_model(cfg=replace(TINY_MODEL, dropout=0.2, attn_dropout=0.1, embd_dropout=0.05))
    config = model.backbone.hf.config
    assert (config.resid_pdrop, config.attn_pdrop, config.embd_pdrop) == (0.2, 0.1, 0.05)
    plain = tiny_model(cfg=replace(TINY_MODEL, dropout=0.3)).backbone.hf.config
    assert (plain.resid_pdrop, plain.attn_pdrop, plain.embd_pdrop) == (0.3, 0.3, 0.3)


def test_dt_atari_embeddings_one_timestep_per_window_and_positions_from_the_first_real_step():
    from dataclasses import replace

    cfg = replace(TINY_MODEL, time_embedding="global_local", embed_tanh=True, embed_ln=False)
    model = tiny_model(cfg=cfg).eval()
    with torch.no_grad():
        model.local_position.normal_()  # DT starts it at zeros; give it values to check
    batch = random_batch(b=2, k=4)
    batch["timesteps"] = torch.tensor([[7, 8, 9, 10], [0, 0, 40, 41]])
    batch["mask"][1, :2] = False  # window 1: two left-padded steps, real steps from t = 40
    tokens, _ = model.embed(**batch)
    with torch.no_grad():
        r = torch.tanh(model.embed_return(batch["returns_to_go"]))
        s = model.embed_state(batch["states"])
        a = torch.tanh(model.embed_action(batch["actions"]))
        raw = torch.stack((r, s, a), dim=2).reshape(2, 12, 32)
        # DT Atari: global_pos_emb[t of the window's first step] + pos_emb[token index from it]
        full = raw[0] + model.embed_timestep.weight[7] + model.local_position[0, :12]
        padded_real = raw[1, 6:] + model.embed_timestep.weight[40] + model.local_position[0, :6]
    torch.testing.assert_close(tokens[0], full)
    torch.testing.assert_close(tokens[1, 6:], padded_real)  # real tokens count positions from 0
