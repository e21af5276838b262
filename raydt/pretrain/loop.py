"""The pre-training loop: tokenizer, GPT-2, AdamW, held-out perplexity, resumable.

Offline, GPT-2's tokenizer cannot be fetched and a byte-level BPE is trained on the corpus
instead (``tokenizer: auto`` picks whichever is possible, and the run records which).

Run directory: ``config.resolved.yaml``, ``metrics.jsonl`` and TensorBoard events
(``train/loss``, ``train/perplexity``, ``eval/loss``, ``eval/perplexity``),
``checkpoints/last.pt`` (resumable) and ``model/`` (the Hugging Face directory).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raydt.config import to_dict, to_yaml
from raydt.errors import ConfigError, RaydtError
from raydt.fsutil import atomic_write_text
from raydt.pretrain.config import CorpusConfig, PretrainConfig, PretrainOptimConfig
from raydt.rundir import RunDir
from raydt.seeding import seed_everything

MODEL = "model"
"""The Hugging Face directory a pre-training run saves (what ``model.backbone`` takes)."""
TOKENIZER = "tokenizer"
"""The tokenizer, saved before first use so that a resumed run encodes identically."""

# --------------------------------------------------------------------------------------
# Tokenizer


def _train_bpe(text: str, vocab_size: int) -> Any:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    lines = (text[i:i + 100_000] for i in range(0, len(text), 100_000))
    bpe.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=1_000_000,
    )


def make_tokenizer(cfg: CorpusConfig, log: Callable[[str], None] = print) -> tuple[Any, str]:
    """(tokenizer, what it is): GPT-2's, a trained BPE, or one from a hub id / directory."""
    from transformers import AutoTokenizer

    from raydt.data.text import parse_text_uri

    choice = cfg.tokenizer
    if choice != "bpe":
        name = "gpt2" if choice == "auto" else choice
        try:
            tok = AutoTokenizer.from_pretrained(name)
            tok.model_max_length = 1_000_000  # blocks are cut by raydt, not the tokenizer
            return tok, name
        except (OSError, ValueError) as exc:
            if choice != "auto":
                raise ConfigError(f"corpus.tokenizer={choice!r} could not be loaded ({exc.__class__.__name__}); "
                                  "give a directory holding a tokenizer, or use bpe") from None
            log("GPT-2's tokenizer is not available offline: training a byte-level BPE on the corpus")
    text = parse_text_uri(cfg.text, "corpus.text").read()
    return _train_bpe(text, cfg.vocab_size), f"bpe-{cfg.vocab_size}"


# --------------------------------------------------------------------------------------
# Training


def _lr_factor(step: int, cfg: PretrainOptimConfig, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def held_out_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss of ``model`` (a causal LM with labels) over ``blocks`` (N, L)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size]
        total += float(model(input_ids=chunk, labels=chunk).loss) * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / max(count, 1)


def _save_hf(model: nn.Module, tokenizer: Any, out: Path, info: dict[str, Any]) -> None:
    """Write the Hugging Face directory next to ``out`` and swap it in whole."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "raydt_pretrain.json").write_text(json.dumps(info, indent=1))
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def pretrain(cfg: PretrainConfig, run_dir: Path, resume: bool = False,
             log: Callable[[str], None] = print) -> dict[str, float]:
    """Pre-train ``cfg`` into ``run_dir``; returns the last metrics."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from raydt.data.text import TextSampler, split_tokens, tokenize_cached
    from raydt.sinks import JsonlSink, MetricWindow, MultiSink, TensorBoardSink
    from raydt.train.checkpoint import (
        load_checkpoint,
        restore_generator,
        rng_state,
        save_checkpoint,
        set_rng_state,
    )

    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    ckpt_path = files.last
    if resume and not ckpt_path.is_file():
        raise RaydtError(f"--resume: {ckpt_path} not found; run without --resume to start afresh")
    if not resume and ckpt_path.exists():
        raise RaydtError(f"{run_dir} already holds a pre-training run; continue it with --resume or pick another --out")
    torch.set_num_threads(cfg.train.threads)
    device = torch.device("cuda" if cfg.train.device == "cuda" or (
        cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu")
    seed_everything(cfg.train.seed)

    # The tokenizer is saved before anything uses it, so a resumed run encodes identically.
    tok_dir = run_dir / TOKENIZER
    if resume and tok_dir.is_dir():
        tokenizer, tok_name = AutoTokenizer.from_pretrained(tok_dir), json.loads((tok_dir / "raydt.json").read_text())["name"]
    else:
        tokenizer, tok_name = make_tokenizer(cfg.corpus, log=log)
        tokenizer.save_pretrained(tok_dir)
        (tok_dir / "raydt.json").write_text(json.dumps({"name": tok_name}))
    ids = tokenize_cached(cfg.corpus.text, tokenizer, log=log, key="corpus.text")
    train_ids, held_ids = split_tokens(ids)
    block = cfg.corpus.block_size
    log(f"corpus {cfg.corpus.text}: {len(ids):,} tokens ({tok_name}, vocabulary {len(tokenizer):,}); "
        f"{len(held_ids):,} held out")
    # Samplers draw length+1 ids; HF's causal LM shifts labels itself, so blocks hold `block` ids.
    sampler = TextSampler(train_ids, block - 1, device=device, seed=cfg.train.seed)
    held = TextSampler(held_ids, min(block - 1, max(8, len(held_ids) // 2)), device=device).fixed_blocks(
        cfg.train.eval_blocks)

    n_embd, n_head, n_layer = cfg.model.dims
    if n_embd % n_head:
        raise ConfigError(f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    hf_config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=block, n_embd=n_embd, n_head=n_head, n_layer=n_layer,
        activation_function=cfg.model.activation, resid_pdrop=cfg.model.dropout,
        embd_pdrop=cfg.model.dropout, attn_pdrop=cfg.model.dropout, bos_token_id=eos, eos_token_id=eos,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa").to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg.optim, cfg.train.steps))
    step, train_seconds = 0, 0.0
    if resume:
        payload = load_checkpoint(ckpt_path)  # on the CPU; load_state_dict copies to the device
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        step, train_seconds = int(payload["step"]), float(payload["train_seconds"])
        notes = set_rng_state(payload["rng"])
        notes.append(restore_generator(sampler.generator, payload["sampler_rng"], cfg.train.seed + 7919 * step, "text sampler"))
        log(f"resumed from {ckpt_path} at step {step}")
        for note in filter(None, notes):
            log(f"note: {note}")

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files.config, to_yaml(cfg))
    sink = MultiSink(JsonlSink(files.metrics, resume_step=step if resume else None), TensorBoardSink(run_dir))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"pre-training a {n_params / 1e6:.2f}M-parameter GPT-2 ({n_embd}/{n_head}/{n_layer}) for "
        f"{cfg.train.steps} steps of {cfg.train.batch_size}×{block} tokens on {device}")
    info = {"tokenizer": tok_name, "text": cfg.corpus.text, "config": to_dict(cfg)}
    use_bf16 = device.type == "cuda"
    last: dict[str, float] = {}
    window = MetricWindow()
    tick = time.perf_counter()
    model.train()
    try:
        if step == 0:  # the untrained baseline, so curves start where training starts
            base = held_out_loss(model, held)
            sink.log(0, {"eval/loss": base, "eval/perplexity": math.exp(min(base, 50))})
        while step < cfg.train.steps:
            batch = sampler.sample(cfg.train.batch_size)  # (B, block)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            window.add({"loss": loss})
            step += 1
            at_log = step % cfg.train.log_every == 0 or step == cfg.train.steps
            at_eval = step % cfg.train.eval_every == 0 or step == cfg.train.steps
            if not (at_log or at_eval):
                continue
            now = time.perf_counter()
            train_seconds += now - tick
            since = window.steps
            mean = window.means(finite="loss", what="pre-training", step=step)["loss"]
            metrics = {"train/loss": mean, "train/perplexity": math.exp(min(mean, 50)),
                       "train/lr": scheduler.get_last_lr()[0], "perf/train_seconds": train_seconds,
                       "perf/tokens_per_second": since * cfg.train.batch_size * block / max(now - tick, 1e-9)}
            if at_eval:
                held_loss = held_out_loss(model, held)
                metrics.update({"eval/loss": held_loss, "eval/perplexity": math.exp(min(held_loss, 50))})
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step, "train_seconds": train_seconds,
                    "rng": rng_state(), "sampler_rng": sampler.generator.get_state(), "config": to_dict(cfg),
                })
                _save_hf(model, tokenizer, run_dir / MODEL, info | {"step": step, "eval_loss": held_loss})
                log(f"step {step}/{cfg.train.steps}  loss {mean:.3f}  held-out perplexity {metrics['eval/perplexity']:.1f}")
            sink.log(step, metrics)
            last = metrics
            tick = time.perf_counter()
    finally:
        sink.close()
    return {"step": step, **last}
