"""Text sources, ChibiT pre-training, the pretrain: backbone, and λ1/λ2 in a training run."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from raydt.config import ModelConfig
from raydt.data.text import HELD_OUT, TextSampler, parse_text_uri, split_tokens, tokenize_cached
from raydt.errors import ConfigError, DataError, RaydtError
from raydt.losses import lambda_factor
from raydt.model.build import build_model
from raydt.pretrain import load_pretrain_config, pretrain, pretrained_dir
from raydt.sinks import read_metrics
from raydt.train.loop import fit
from tests.helpers import REPO, TINY_PRETRAIN, quiet, tiny_config


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny ChibiT pre-trained on the Python docs, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("lm")
    spec = root / "tiny.yaml"
    spec.write_text(TINY_PRETRAIN)
    metrics = pretrain(load_pretrain_config(spec), root / "run", log=lambda _: None)
    return spec, root / "run", metrics


def bpe(vocab=300):
    from raydt.pretrain.loop import _train_bpe

    return _train_bpe(parse_text_uri("pydoc:").read(), vocab)


def test_text_sources(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("alpha beta\n")
    (tmp_path / "docs" / "sub").mkdir()
    (tmp_path / "docs" / "sub" / "b.md").write_text("gamma\n")
    assert parse_text_uri(f"text:{tmp_path / 'docs'}").read() == "alpha beta\n\n\ngamma\n"
    assert parse_text_uri(f"text:{tmp_path / 'docs' / 'a.txt'}").read() == "alpha beta\n"
    dz = tmp_path / "gcide.dict.dz"
    with gzip.open(dz, "wt") as fh:
        fh.write("00-database-info\nLarve \\Larve\\ (l[aum]rv), n.; pl. {Larves}. [F.]\n A larva of the\n"
                 " fleshy fruit; larv[ae].\n [1913 Webster]\n<p>Apple</p>\n")
    text = parse_text_uri(f"gcide:{dz}").read()
    assert text.split() == ["Larve", "(larv),", "n.;", "pl.", "Larves.", "[F.]", "A", "larva", "of", "the",
                            "fleshy", "fruit;", "larvae.", "Apple"]
    assert "def" in parse_text_uri("pydoc:").read()  # CPython's documentation topics
    with pytest.raises(ConfigError, match="does not exist"):
        parse_text_uri(f"text:{tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="dict-gcide"):
        parse_text_uri(f"gcide:{tmp_path / 'none.dz'}")
    with pytest.raises(ConfigError, match="not recognised"):
        parse_text_uri("wiki")
    with pytest.raises(DataError, match="downloads are off"):
        parse_text_uri("wikitext-103").read()  # conftest sets RAYDT_OFFLINE


def test_tokenising_is_cached_and_split(tmp_path):
    tok = bpe()
    logs = []
    ids = tokenize_cached("pydoc:", tok, log=logs.append)
    again = tokenize_cached("pydoc:", tok, log=logs.append)
    assert np.array_equal(ids, again) and len(logs) == 1
    assert tok.decode(ids[:50].tolist()) == parse_text_uri("pydoc:").read()[: len(tok.decode(ids[:50].tolist()))]
    train, held = split_tokens(ids)
    assert len(held) == len(ids) - int(len(ids) * (1 - HELD_OUT)) and np.array_equal(np.concatenate([train, held]), ids)
    # a changed file is a different cache entry
    f = tmp_path / "t.txt"
    f.write_text("one two three " * 50)
    tokenize_cached(f"text:{f}", tok, log=logs.append)
    f.write_text("four five six " * 50)
    tokenize_cached(f"text:{f}", tok, log=logs.append)
    assert len(logs) == 3


def test_text_sampler_draws_contiguous_blocks():
    ids = np.arange(1000, dtype=np.int32)
    sampler = TextSampler(ids, 16, seed=0)
    blocks = sampler.sample(32)
    assert blocks.shape == (32, 17)
    assert torch.equal(blocks[:, 1:] - blocks[:, :-1], torch.ones(32, 16, dtype=torch.long))
    assert torch.equal(sampler.fixed_blocks(5), sampler.fixed_blocks(5))
    with pytest.raises(DataError, match="fewer than one block"):
        TextSampler(ids[:10], 16)


def test_pretrain_lowers_perplexity_saves_and_resumes(tiny_lm, tmp_path):
    spec, run, metrics = tiny_lm
    rows = read_metrics(run / "metrics.jsonl")
    evals = [r for r in rows if "eval/perplexity" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[-1]["eval/perplexity"] < 0.5 * evals[0]["eval/perplexity"]  # it learned
    assert metrics["step"] == 40
    model_dir = run / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "raydt_pretrain.json"):
        assert (model_dir / name).is_file()
    assert json.loads((model_dir / "raydt_pretrain.json").read_text())["tokenizer"] == "bpe-300"
    # resume: continue to 60 steps, no step logged twice
    cfg = load_pretrain_config(spec, ["train.steps=60"])
    with pytest.raises(RaydtError, match="already holds"):
        pretrain(cfg, run, log=lambda _: None)
    import shutil

    shutil.copytree(run, tmp_path / "copy")
    pretrain(cfg, tmp_path / "copy", resume=True, log=lambda _: None)
    steps = [r["step"] for r in read_metrics(tmp_path / "copy" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 60


def test_pretrained_directory_is_a_backbone_with_positions(tiny_lm):
    _, run, _ = tiny_lm
    model, report = build_model(ModelConfig(backbone=str(run / "model"), positions="pretrained"), 5, 2, 6, 100,
                                log=lambda _: None)
    assert report.kind == "gpt2" and report.new == [] and model.args.n_embd == 32
    torch.testing.assert_close(model.embed_timestep.weight[:32], model.backbone.position_table)


def test_pretrain_uri_is_made_once(tiny_lm, tmp_path, monkeypatch):
    spec, _, _ = tiny_lm
    logs = []
    first = pretrained_dir(spec, log=logs.append)
    second = pretrained_dir(spec, log=logs.append)
    assert first == second and (first / "config.json").is_file()
    assert sum("pre-training the backbone" in line for line in logs) == 1
    # relative pretrain: paths in specs are anchored to the spec file
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "lm.yaml").write_text(spec.read_text())
    (tmp_path / "specs" / "run.yaml").write_text("model: {backbone: 'pretrain:lm.yaml'}\n")
    from raydt.config import load_config

    monkeypatch.chdir(REPO)
    cfg = load_config(tmp_path / "specs" / "run.yaml")
    assert cfg.model.backbone == f"pretrain:{tmp_path / 'specs' / 'lm.yaml'}"


def test_objectives_are_logged_and_co_training_lowers_text_loss(tiny_lm, tmp_path):
    _, run, _ = tiny_lm
    common = [f"model.backbone={run / 'model'}", "loss.text=pydoc:", "loss.lm_block_size=32",
              "loss.lm_batch_size=8", "loss.kmeans_clusters=16", "train.steps=24", "train.eval_every=24",
              "train.log_every=4", "optim.lr=3e-3", "loss.lambda_decay_steps=20", "model.dropout=0.0"]
    without = fit(tiny_config(*common, "loss.track_text_loss=true"), tmp_path / "a", quiet())
    with_lm = fit(tiny_config(*common, "loss.lambda1=0.1", "loss.lambda2=1.0", "loss.lambda_schedule=constant"),
                  tmp_path / "b", quiet())
    # the same backbone and data: co-training keeps the language model's text loss lower
    assert with_lm["eval/text_loss"] < without["eval/text_loss"]
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    for key in ("train/loss_cos", "train/loss_lm", "train/lambda1", "train/lambda2"):
        assert key in rows[0]
    assert -1.0 <= rows[0]["train/loss_cos"] <= 1.0
    assert rows[0]["train/loss"] > rows[0]["train/action_mse"]  # λ2·L_LM is positive and added
    assert "train/loss_lm" not in read_metrics(tmp_path / "a" / "metrics.jsonl")[0]
    # a linear schedule reaches 0 at lambda_decay_steps and the LM term stops being drawn
    fit(tiny_config(*common, "loss.lambda1=0.2", "loss.lambda2=0.5"), tmp_path / "c", quiet())
    rows = read_metrics(tmp_path / "c" / "metrics.jsonl")
    for r in rows:
        # logged λ is the value in force at the last step of each logging window
        assert r["train/lambda1"] == pytest.approx(0.2 * lambda_factor("linear", r["step"] - 1, 20))
    assert rows[-1]["train/lambda2"] == 0.0 and "train/loss_lm" not in rows[-1]


def test_text_ids_stay_int32_on_the_device_and_blocks_come_out_int64():
    import numpy as np
    import torch

    from raydt.data.text import TextSampler

    ids = np.arange(1000, dtype=np.int64) % 50257
    sampler = TextSampler(ids, block_size=8, seed=3)
    assert sampler.ids.dtype == torch.int32  # half of int64's memory on the device
    block = sampler.sample(4)
    assert block.dtype == torch.int64 and block.shape == (4, 9)
    assert all(torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 9)) for row in block)  # contiguous ids
    assert sampler.fixed_blocks(2).dtype == torch.int64


def test_pretraining_uses_bf16_only_where_the_gpu_computes_it_natively():
    import types

    import torch

    from raydt.pretrain.loop import Pretraining

    fake = types.SimpleNamespace(device=torch.device("cuda", 0))
    assert Pretraining.bf16(fake, capability=(8, 0)) and Pretraining.bf16(fake, capability=(9, 0))
    assert not Pretraining.bf16(fake, capability=(7, 0))  # V100: emulated, slower than fp32
    assert not Pretraining.bf16(types.SimpleNamespace(device=torch.device("cpu")))


def test_a_block_size_whose_logits_exceed_free_memory_is_refused_before_the_model_is_built():
    from raydt.errors import ConfigError
    from raydt.pretrain.config import PretrainConfig
    from raydt.pretrain.loop import check_logits_fit

    cfg = PretrainConfig()  # batch × 1024 tokens × 50,257 ids
    need = cfg.train.batch_size * 1024 * 50257 * 4
    check_logits_fit(cfg, 50257, torch.device("cpu"), available=need + 1)
    with pytest.raises(ConfigError, match=r"corpus.block_size=1024 needs more than .* GiB for one step's logits alone"):
        check_logits_fit(cfg, 50257, torch.device("cpu"), available=need - 1)
