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
from raydt.precision import optimizer_options, require_free, use_bf16
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
    return Pretraining(cfg, Path(run_dir), resume=resume, log=log).fit()


def build_lm(cfg: PretrainConfig, vocab_size: int, eos_token_id: int) -> nn.Module:
    """The randomly initialised GPT-2 causal LM ``cfg.model`` describes (SDPA attention)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    n_embd, n_head, n_layer = cfg.model.dims
    if n_embd % n_head:
        raise ConfigError(f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}")
    hf_config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.corpus.block_size, n_embd=n_embd, n_head=n_head,
        n_layer=n_layer, activation_function=cfg.model.activation, resid_pdrop=cfg.model.dropout,
        embd_pdrop=cfg.model.dropout, attn_pdrop=cfg.model.dropout, bos_token_id=eos_token_id,
        eos_token_id=eos_token_id, tie_word_embeddings=True,
    )
    return GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa")


class Pretraining:
    """One pre-training run: built by the constructor (tokenizer, corpus samplers, model,
    optimizer, and the checkpoint's state on ``resume``), trained by :meth:`fit`."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, resume: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.run_dir, self.log = cfg, run_dir, log
        self.files = RunDir(run_dir)
        self._check_run_dir(resume)
        torch.set_num_threads(cfg.train.threads)
        self.device = torch.device("cuda" if cfg.train.device == "cuda" or (
            cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu")
        seed_everything(cfg.train.seed)
        self.tokenizer, self.tokenizer_name = self._tokenizer(resume)
        self.sampler, self.held = self._samplers()
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        check_logits_fit(cfg, len(self.tokenizer), self.device)
        self.model = build_lm(cfg, len(self.tokenizer), eos).to(self.device)
        self.optimizer, self.scheduler = self._build_optimizer()
        self.step, self.train_seconds = 0, 0.0
        self.resumed = resume
        if resume:
            self._resume()

    # -- construction ------------------------------------------------------------------

    def _check_run_dir(self, resume: bool) -> None:
        last = self.files.last
        if resume and not last.is_file():
            raise RaydtError(f"--resume: {last} not found; run without --resume to start afresh")
        if not resume and last.exists():
            raise RaydtError(f"{self.run_dir} already holds a pre-training run; continue it with --resume "
                             "or pick another --out")

    def _tokenizer(self, resume: bool) -> tuple[Any, str]:
        """The run's tokenizer, saved before anything uses it so that a resumed run encodes
        identically."""
        from transformers import AutoTokenizer

        tok_dir = self.run_dir / TOKENIZER
        if resume and tok_dir.is_dir():
            return AutoTokenizer.from_pretrained(tok_dir), json.loads((tok_dir / "raydt.json").read_text())["name"]
        tokenizer, name = make_tokenizer(self.cfg.corpus, log=self.log)
        tokenizer.save_pretrained(tok_dir)
        (tok_dir / "raydt.json").write_text(json.dumps({"name": name}))
        return tokenizer, name

    def _samplers(self) -> tuple[Any, torch.Tensor]:
        """(training sampler, fixed held-out blocks (N, L)) over the tokenized corpus."""
        from raydt.data.text import TextSampler, split_tokens, tokenize_cached

        cfg = self.cfg
        ids = tokenize_cached(cfg.corpus.text, self.tokenizer, log=self.log, key="corpus.text")
        train_ids, held_ids = split_tokens(ids)
        self.log(f"corpus {cfg.corpus.text}: {len(ids):,} tokens ({self.tokenizer_name}, vocabulary "
                 f"{len(self.tokenizer):,}); {len(held_ids):,} held out")
        # Samplers draw length+1 ids; HF's causal LM shifts labels itself, so blocks hold `block` ids.
        block = cfg.corpus.block_size
        sampler = TextSampler(train_ids, block - 1, device=self.device, seed=cfg.train.seed)
        held = TextSampler(held_ids, min(block - 1, max(8, len(held_ids) // 2)), device=self.device).fixed_blocks(
            cfg.train.eval_blocks)
        return sampler, held

    def _build_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW (no decay on biases and norms) and the warm-up + cosine schedule."""
        cfg = self.cfg
        params = list(self.model.named_parameters())
        optimizer = torch.optim.AdamW(
            [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
             {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0}],
            lr=cfg.optim.lr, betas=(0.9, 0.95), **optimizer_options(self.device.type),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg.optim, cfg.train.steps))
        return optimizer, scheduler

    def _resume(self) -> None:
        from raydt.train.checkpoint import load_checkpoint, restore_generator, set_rng_state

        payload = load_checkpoint(self.files.last)  # on the CPU; load_state_dict copies to the device
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step, self.train_seconds = int(payload["step"]), float(payload["train_seconds"])
        notes = set_rng_state(payload["rng"])
        notes.append(restore_generator(self.sampler.generator, payload["sampler_rng"],
                                       self.cfg.train.seed + 7919 * self.step, "text sampler"))
        self.log(f"resumed from {self.files.last} at step {self.step}")
        for note in filter(None, notes):
            self.log(f"note: {note}")

    # -- training ----------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train to ``train.steps``, logging, evaluating and checkpointing on the way."""
        from raydt.sinks import JsonlSink, MetricWindow, MultiSink, TensorBoardSink

        cfg, files = self.cfg, self.files
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(files.config, to_yaml(cfg))
        sink = MultiSink(JsonlSink(files.metrics, resume_step=self.step if self.resumed else None),
                         TensorBoardSink(self.run_dir, purge_step=self.step + 1 if self.resumed else None))
        n_embd, n_head, n_layer = cfg.model.dims
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"pre-training a {n_params / 1e6:.2f}M-parameter GPT-2 ({n_embd}/{n_head}/{n_layer}) for "
                 f"{cfg.train.steps} steps of {cfg.train.batch_size}×{cfg.corpus.block_size} tokens on {self.device}")
        last: dict[str, float] = {}
        window = MetricWindow()
        tick = time.perf_counter()
        self.model.train()
        try:
            if self.step == 0:  # the untrained baseline, so curves start where training starts
                base = held_out_loss(self.model, self.held)
                sink.log(0, {"eval/loss": base, "eval/perplexity": math.exp(min(base, 50))})
            while self.step < cfg.train.steps:
                window.add({"loss": self._train_step()})
                self.step += 1
                at_log = self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps
                at_eval = self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps
                if not (at_log or at_eval):
                    continue
                now = time.perf_counter()
                self.train_seconds += now - tick
                last = self._window_metrics(window, now - tick)
                if at_eval:
                    last.update(self._evaluate_and_save(last["train/loss"]))
                sink.log(self.step, last)
                tick = time.perf_counter()
        finally:
            sink.close()
        return {"step": self.step, **last}

    def bf16(self, capability: tuple[int, int] | None = None) -> bool:
        """bf16 autocast where the GPU computes it natively (compute capability 8.0 and up, as
        fine-tuning decides it); T4/V100 emulate bf16, slower than fp32; CPUs stay fp32 here."""
        if self.device.type != "cuda":
            return False
        return use_bf16("auto", "cuda", capability or torch.cuda.get_device_capability(self.device))

    def _train_step(self) -> torch.Tensor:
        """One optimizer step on a sampled batch; the loss stays on the device (no sync)."""
        batch = self.sampler.sample(self.cfg.train.batch_size)  # (B, block)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16()):
            loss = self.model(input_ids=batch, labels=batch).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def _window_metrics(self, window: Any, seconds: float) -> dict[str, float]:
        """The logging window's means (one host sync; a non-finite loss stops the run)."""
        steps = window.steps
        mean = window.means(finite="loss", what="pre-training", step=self.step)["loss"]
        tokens = steps * self.cfg.train.batch_size * self.cfg.corpus.block_size
        return {"train/loss": mean, "train/perplexity": math.exp(min(mean, 50)),
                "train/lr": self.scheduler.get_last_lr()[0], "perf/train_seconds": self.train_seconds,
                "perf/tokens_per_second": tokens / max(seconds, 1e-9)}

    def _evaluate_and_save(self, train_loss: float) -> dict[str, float]:
        """Held-out loss, then the resumable checkpoint and the Hugging Face directory."""
        from raydt.train.checkpoint import rng_state, save_checkpoint

        held_loss = held_out_loss(self.model, self.held)
        save_checkpoint(self.files.last, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "train_seconds": self.train_seconds,
            "rng": rng_state(), "sampler_rng": self.sampler.generator.get_state(), "config": to_dict(self.cfg),
        })
        info = {"tokenizer": self.tokenizer_name, "text": self.cfg.corpus.text, "config": to_dict(self.cfg)}
        _save_hf(self.model, self.tokenizer, self.run_dir / MODEL, info | {"step": self.step, "eval_loss": held_loss})
        perplexity = math.exp(min(held_loss, 50))
        self.log(f"step {self.step}/{self.cfg.train.steps}  loss {train_loss:.3f}  held-out perplexity {perplexity:.1f}")
        return {"eval/loss": held_loss, "eval/perplexity": perplexity}


def check_logits_fit(cfg: PretrainConfig, vocab: int, device: torch.device, available: int | None = None) -> None:
    """Refuse a block size whose next-token logits alone (batch × block × vocabulary fp32
    values, one step's) exceed the memory free on ``device``: one line naming
    corpus.block_size, not the OOM killer after the model is built. A lower bound: a step
    needs more than this."""
    require_free(cfg.train.batch_size * cfg.corpus.block_size * vocab * 4, device,
                 f"corpus.block_size={cfg.corpus.block_size}",
                 f"one step's logits alone ({cfg.train.batch_size} blocks × {cfg.corpus.block_size} tokens × "
                 f"{vocab:,} token ids)", "lower corpus.block_size or train.batch_size", available)
