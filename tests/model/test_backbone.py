"""Every backbone kind on tiny local models; positions, freezing, block replacement, λ1/λ2 wiring."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from raydt.config import ModelConfig
from raydt.errors import ConfigError
from raydt.model.backbone import build_backbone
from raydt.model.build import build_model
from raydt.model.dt import ModelArgs, extend_table, rebuild_model
from tests.helpers import host_reads, random_batch

D = 32


def save_tiny(kind: str, root: Path, vocab: int = 300) -> Path:
    """A tiny randomly initialised model of ``kind`` written with save_pretrained."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=D, n_head=2, n_layer=2, vocab_size=vocab, n_positions=64,
                                                 bos_token_id=0, eos_token_id=0))
    elif kind == "imagegpt":
        model = tf.ImageGPTModel(tf.ImageGPTConfig(n_embd=D, n_head=2, n_layer=2, vocab_size=vocab, n_positions=64))
    elif kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(
            text_config=dict(hidden_size=D, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                             vocab_size=vocab, max_position_embeddings=77, eos_token_id=2, bos_token_id=1),
            vision_config=dict(hidden_size=D, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                               image_size=32, patch_size=16),
            projection_dim=16,
        ))
    elif kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=D, intermediate_size=64, num_attention_heads=2,
                                                   num_key_value_heads=1, num_hidden_layers=2, vocab_size=vocab,
                                                   max_position_embeddings=128, tie_word_embeddings=True,
                                                   bos_token_id=0, eos_token_id=0, pad_token_id=0))
    elif kind == "neox":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=D, intermediate_size=64, num_attention_heads=2,
                                                       num_hidden_layers=2, vocab_size=vocab,
                                                       max_position_embeddings=128, bos_token_id=0, eos_token_id=0))
    else:
        raise AssertionError(kind)
    path = root / kind
    model.save_pretrained(path)
    return path


KINDS = {"gpt2": "gpt2", "imagegpt": "imagegpt", "clip": "clip", "llama": "auto", "neox": "auto"}


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_builds_runs_causally_and_rebuilds(tmp_path, name):
    path = save_tiny(name, tmp_path)
    cfg = ModelConfig(backbone=str(path), dropout=0.0)
    model, report = build_model(cfg, 5, 2, 6, 100, log=lambda _: None)
    assert report.kind == KINDS[name] and model.args.backbone_kind == KINDS[name]
    assert report.loaded and report.new == []
    if name == "clip":  # the text tower only
        assert all(not n.startswith("hf.vision") for n in report.loaded)
    model.eval()
    batch = random_batch(b=3, k=6)
    out = model(**batch)
    assert out.shape == (3, 6, 2) and torch.isfinite(out).all()
    # causal: changing step 4's state leaves the predictions of steps 0..3 alone
    changed = {k: v.clone() for k, v in batch.items()}
    changed["states"][:, 4:] += 3.0
    torch.testing.assert_close(model(**changed)[:, :4], out[:, :4])
    # left padding does not reach real steps
    batch["mask"][:, :2] = False
    padded = model(**batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["states"][:, :2] = 50.0
    torch.testing.assert_close(model(**other)[:, 2:], padded[:, 2:])
    # a checkpoint rebuilds without the source directory
    twin = rebuild_model(ModelArgs(**model.args.to_dict()))
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin.eval()(**batch), padded, rtol=0, atol=0)
    # the LM path runs with the model's own positions and a tied head
    ids = torch.randint(0, 300, (2, 10))
    loss = model.backbone.lm_loss(ids)
    assert torch.isfinite(loss) and 3.0 < loss.item() < 8.0  # ~log(300) for a random model
    # what the analyses read, through the interface: attention maps that are causal
    # distributions over real tokens, and every block's named parts
    from raydt.analysis.run import attention_maps, block_activations

    window = SimpleNamespace(states=batch["states"], actions=batch["actions"], returns_to_go=batch["returns_to_go"],
                             timesteps=batch["timesteps"], mask=torch.ones(3, 6, dtype=torch.bool))
    maps = attention_maps(model, window)
    assert len(maps) == len(model.backbone.blocks) and maps[0].shape[-2:] == (18, 18)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(maps[-1].shape[:-1]))
    assert float(maps[0].triu(1).abs().max()) == 0.0  # no attention to later tokens
    torch.testing.assert_close(model(**{**batch, "mask": window.mask}), out)  # the kernel was put back
    acts = block_activations(model, window)
    assert f"block{len(maps) - 1}.output" in acts and len(acts) > 2 * len(maps)
    if name == "gpt2":
        assert "block0.mlp.dropout" in acts and "block0.attn.c_attn" in acts


def test_gpt2_lm_loss_equals_hugging_face_causal_lm(tmp_path):
    from transformers import GPT2LMHeadModel

    path = save_tiny("gpt2", tmp_path)
    backbone, _ = build_backbone((0, 0, 0), str(path), 0.0, "relu", n_tokens=60)
    reference = GPT2LMHeadModel.from_pretrained(path).eval()
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(backbone.eval().lm_loss(ids), reference(input_ids=ids, labels=ids).loss)
    # the trajectory path ignores positions: the same token at two places gives the same state
    x = torch.randn(1, 1, D).repeat(1, 4, 1)
    mask = torch.ones(1, 4, dtype=torch.bool)
    hidden = backbone.eval()(x, mask)  # (1, 4, D)
    for t in range(1, 4):  # identical inputs attend to identical keys: only positions could differ
        torch.testing.assert_close(hidden[0, t], hidden[0, 0])


def test_positions_pretrained_random_and_errors(tmp_path):
    path = save_tiny("gpt2", tmp_path)
    lm_table = build_backbone((0, 0, 0), str(path), 0.0, "relu", 18)[0].position_table
    model, _ = build_model(ModelConfig(backbone=str(path), positions="pretrained"), 5, 2, 6, 150, log=lambda _: None)
    table = model.embed_timestep.weight.detach()
    assert table.shape == (150, D)
    torch.testing.assert_close(table[:64], lm_table)
    torch.testing.assert_close(table[64:126], lm_table[2:])  # rows 2.. tiled past the LM's 64 positions
    torch.testing.assert_close(extend_table(lm_table, 150), table)
    rand, _ = build_model(ModelConfig(backbone=str(path), positions="random"), 5, 2, 6, 150, log=lambda _: None)
    assert rand.embed_timestep.weight.shape == (150, D)
    assert 0.015 < rand.embed_timestep.weight.std().item() < 0.025  # GPT-2's init scale
    with pytest.raises(ConfigError, match="no pre-trained position table"):
        build_model(ModelConfig(positions="pretrained"), 5, 2, 6, 150)
    llama = save_tiny("llama", tmp_path)
    with pytest.raises(ConfigError, match="no pre-trained position table"):
        build_model(ModelConfig(backbone=str(llama), positions="pretrained"), 5, 2, 6, 150, log=lambda _: None)
    clip = save_tiny("clip", tmp_path)
    model, _ = build_model(ModelConfig(backbone=str(clip), positions="pretrained"), 5, 2, 6, 200, log=lambda _: None)
    torch.testing.assert_close(model.embed_timestep.weight[77:152], model.backbone.position_table[2:])


def test_position_extension_follows_reids_released_loop():
    table = torch.arange(5.0)[:, None].repeat(1, 3)  # row i holds i
    # The released loop, re-derived: copy rows 0-1, then copy rows 2..4 into each next
    # block of 3 until the episode length (here 11 = 2 + 3·3, so every row is written).
    expected, k = [0.0, 1.0], 2
    while k < 11 - 1:
        expected += [2.0, 3.0, 4.0][: 11 - k]
        k += 3
    assert extend_table(table, 11)[:, 0].tolist() == expected == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4]
    torch.testing.assert_close(extend_table(table, 4), table[:4])  # no longer than the table: as it is


@pytest.mark.parametrize("mode", ["none", "backbone", "backbone_except_layernorm"])
def test_freeze_leaves_frozen_parameters_unchanged(tmp_path, mode):
    from raydt.losses import action_loss

    path = save_tiny("gpt2", tmp_path)
    model, report = build_model(ModelConfig(backbone=str(path), freeze=mode, dropout=0.0), 5, 2, 6, 100,
                                log=lambda _: None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = random_batch()
    action_loss(model(**batch), batch["actions"] + 0.3, batch["mask"]).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    always = {"embed_timestep.weight", "embed_return.weight", "embed_state.weight", "embed_action.weight",
              "predict_action.0.weight"}
    assert always <= changed
    backbone_changed = {n for n in changed if n.startswith("backbone.")}
    if mode == "none":
        assert "backbone.hf.h.0.attn.c_attn.weight" in backbone_changed
    elif mode == "backbone":
        assert backbone_changed == set() and len(report.frozen) == len(list(model.backbone.parameters()))
    else:
        assert backbone_changed and all(".ln_" in n for n in backbone_changed)
        assert "backbone.hf.ln_f.weight" in backbone_changed


def test_replace_block_keeps_exactly_one_pretrained_block(tmp_path):
    path = save_tiny("gpt2", tmp_path)
    pretrained, _ = build_backbone((0, 0, 0), str(path), 0.0, "relu", 18)
    torch.manual_seed(5)
    model, report = build_model(ModelConfig(backbone=str(path), replace_block=1), 5, 2, 6, 100, log=lambda _: None)
    for i in range(2):
        same = [torch.equal(a, b) for a, b in zip(model.backbone.blocks[i].parameters(), pretrained.blocks[i].parameters())
                if a.dim() == 2]  # weights: biases and norms start at 0 and 1 either way
        assert all(same) if i == 1 else not any(same)
    assert all(n.startswith("hf.h.1.") for n in report.loaded) and report.loaded
    with pytest.raises(ConfigError, match="blocks 0..1"):
        build_model(ModelConfig(backbone=str(path), replace_block=5), 5, 2, 6, 100, log=lambda _: None)
    with pytest.raises(ConfigError, match="needs a pre-trained model.backbone"):
        build_model(ModelConfig(replace_block=0), 5, 2, 6, 100)


def test_auto_backbone_must_accept_inputs_embeds(tmp_path):
    import transformers as tf

    vision = tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=D, intermediate_size=64, num_attention_heads=2,
                                                    num_hidden_layers=1, image_size=32, patch_size=16))
    vision.save_pretrained(tmp_path / "vision")
    with pytest.raises(ConfigError, match="does not accept inputs_embeds"):
        build_backbone((0, 0, 0), str(tmp_path / "vision"), 0.0, "relu", 18)


@pytest.mark.parametrize("name", list(KINDS))
def test_every_trainable_parameter_gets_a_gradient_from_trajectories(tmp_path, name):
    # DDP (find_unused_parameters=False, as without λ2) fails at its second step if any
    # trainable parameter gets no gradient: CLIP's bypassed position table did.
    model, _ = build_model(ModelConfig(backbone=str(save_tiny(name, tmp_path))), 5, 2, 6, 100, log=lambda _: None)
    model(**random_batch(b=2, k=6)).square().sum().backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert idle == []


def _hugging_faces_own(backbone, x, mask):
    """The backbone's hidden states as its Hugging Face model computes them from a (B, T) mask."""
    if backbone.kind == "clip":  # trajectories enter the encoder; HF's mask builder as before
        from transformers.masking_utils import create_causal_mask

        built = create_causal_mask(config=backbone.config, inputs_embeds=x, attention_mask=mask.long(), cache=None)
        hidden = backbone.hf.encoder(inputs_embeds=x, attention_mask=built, is_causal=True)
        return backbone.hf.final_layer_norm(hidden.last_hidden_state)
    if backbone.kind == "imagegpt":  # raydt gives its blocks an attention of its own: compare with HF's
        import transformers as tf

        fresh = tf.ImageGPTModel(backbone.hf.config).to(x.dtype)
        fresh.load_state_dict(backbone.hf.state_dict())
        return fresh.eval()(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
    return backbone.hf(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state


def _padded_batch():
    x = torch.randn(3, 12, D)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :3] = False  # left padding, as the sampler pads
    mask[2, :7] = False
    return x, mask


@pytest.mark.parametrize(("name", "implementation"), [
    (name, implementation) for name in ["gpt2", "imagegpt", "clip", "llama", "neox"]
    for implementation in ["sdpa", "eager"] if (name, implementation) != ("imagegpt", "sdpa")
])
def test_the_prebuilt_4d_mask_gives_hugging_faces_own_outputs(tmp_path, name, implementation):
    from raydt.model.backbone import attention_mask_4d

    model, _ = build_model(ModelConfig(backbone=str(save_tiny(name, tmp_path)), dropout=0.0), 5, 2, 6, 100,
                           log=lambda _: None)
    backbone = model.backbone.eval()
    if name == "imagegpt":  # its attention has one kernel, which adds the mask to its scores
        assert backbone.hf.config._attn_implementation == "eager"
    backbone.hf.config._attn_implementation = implementation
    x, mask = _padded_batch()
    with torch.no_grad():
        ours = backbone(x, mask)
        theirs = _hugging_faces_own(backbone, x, mask)
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)  # every real token
    assert torch.isfinite(ours).all()  # padded queries see themselves: no empty softmax rows
    assert attention_mask_4d(mask, torch.float32, "flash_attention_2").shape == (3, 12)


@pytest.mark.parametrize("name", ["gpt2", "imagegpt", "clip", "llama", "neox"])
def test_a_backbone_forward_never_reads_the_mask_on_the_host(tmp_path, name):
    # Given a (B, T) mask, transformers checks `mask.all()` on the host every forward to
    # pick a kernel: on a GPU, a sync per training step and per rollout step.
    model, _ = build_model(ModelConfig(backbone=str(save_tiny(name, tmp_path))), 5, 2, 6, 100, log=lambda _: None)
    x, mask = _padded_batch()
    with host_reads() as reads:
        model.backbone(x, mask).sum().backward()
    assert reads.calls == []
    with host_reads() as reads:  # the wiring check: HF's own mask building is caught
        _hugging_faces_own(model.backbone, x, mask)
    assert len(reads) > 0


def test_imagegpt_text_keeps_its_causal_attention(tmp_path):
    # The text path (λ2) passes no mask: causality comes from the model's own buffer.
    import transformers as tf

    model, _ = build_model(ModelConfig(backbone=str(save_tiny("imagegpt", tmp_path)), dropout=0.0), 5, 2, 6, 100,
                           log=lambda _: None)
    backbone = model.backbone.eval()
    fresh = tf.ImageGPTModel(backbone.hf.config)
    fresh.load_state_dict(backbone.hf.state_dict())
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        ours = backbone.hf(input_ids=ids).last_hidden_state
        theirs = fresh.eval()(input_ids=ids).last_hidden_state
        changed = backbone.hf(input_ids=torch.cat([ids[:, :5], ids[:, 5:].flip(1)], 1)).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(changed[:, :5], ours[:, :5])  # later tokens do not reach earlier ones
