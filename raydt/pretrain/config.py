"""What defines a pre-training run: corpus and tokenizer, model shape, optimizer, rhythm.

ChibiT (Reid §4) is the default: the DT shape (128 dim, 1 head, 3 layers) pre-trained on
WikiText-103 with GPT-2's BPE, lr 3e-4, 65,536-token batches, 80k steps, 10k warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from raydt.config import (
    checked,
    load_config,
    nonnegative,
    optional_positive,
    positive,
    preset_dims,
)


@dataclass(frozen=True)
class CorpusConfig:
    """The text and its tokenizer."""

    text: str = "wikitext-103"
    """Text source: wikitext-103, text:/path/to/file-or-dir, gcide:[PATH] or pydoc:."""
    tokenizer: str = "auto"
    """auto (GPT-2's if it can be loaded, else bpe), bpe (byte-level BPE trained on the text), or a hub id / directory."""
    vocab_size: int = positive(50257)
    """Vocabulary of a trained BPE (GPT-2's size by default; small corpora stop earlier)."""
    block_size: int = positive(1024)
    """Tokens per training sequence; also the size of the model's position table (GPT-2's 1024)."""


@dataclass(frozen=True)
class PretrainModelConfig:
    """The GPT-2 being pre-trained."""

    size: Literal["dt", "3m", "18m", "84m"] = "dt"
    """Size preset (ChibiT is dt: 128 dim, 1 head, 3 layers)."""
    n_embd: int | None = optional_positive()
    """Embedding dimension; null takes the size preset's."""
    n_head: int | None = optional_positive()
    """Attention heads; null takes the size preset's."""
    n_layer: int | None = optional_positive()
    """Transformer blocks; null takes the size preset's."""
    activation: Literal["relu", "gelu_new"] = "gelu_new"
    """MLP activation (GPT-2: gelu_new)."""
    dropout: float = checked(0.1, lambda v: 0 <= v < 1, "a number in [0, 1)")
    """Dropout on embeddings, attention and residuals (GPT-2: 0.1)."""

    @property
    def dims(self) -> tuple[int, int, int]:
        return preset_dims(self)


@dataclass(frozen=True)
class PretrainOptimConfig:
    """AdamW with warm-up and cosine decay."""

    lr: float = positive(3e-4)
    """Peak learning rate (ChibiT: 3e-4)."""
    weight_decay: float = nonnegative(0.01)
    """AdamW weight decay."""
    warmup_steps: int = nonnegative(10_000)
    """Steps of linear warm-up (ChibiT: 10k)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """After warm-up: cosine decay to 10% of the peak at the last step, or constant."""
    grad_clip: float = nonnegative(1.0)
    """Maximum global gradient norm; 0 disables clipping."""


@dataclass(frozen=True)
class PretrainTrainConfig:
    """Length and rhythm of pre-training."""

    steps: int = positive(80_000)
    """Optimizer steps (ChibiT: 80k)."""
    batch_size: int = positive(64)
    """Sequences per step (64 × 1024 = 65,536 tokens, ChibiT's batch)."""
    eval_every: int = positive(1000)
    """Steps between held-out evaluations (and saves of model/)."""
    log_every: int = positive(100)
    """Steps between training-metric logs."""
    eval_blocks: int = positive(64)
    """Held-out sequences per evaluation (the same ones every time)."""
    seed: int = nonnegative(0)
    """Seed of initialisation, tokenizer training and sampling."""
    threads: int = positive(2)
    """PyTorch CPU threads."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when visible, else CPU."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines one pre-training run."""

    corpus: CorpusConfig = CorpusConfig()
    model: PretrainModelConfig = PretrainModelConfig()
    optim: PretrainOptimConfig = PretrainOptimConfig()
    train: PretrainTrainConfig = PretrainTrainConfig()


def load_pretrain_config(path: str | Path, overrides: Any = ()) -> PretrainConfig:
    return load_config(path, overrides, cls=PretrainConfig)
