"""Seeds: every random stream of a run derived from the run's one seed."""

from __future__ import annotations

import random

import numpy as np
import torch

STREAMS = {"windows": 0, "text": 1, "resumed_windows": 2, "resumed_text": 3, "dropout": 4, "resumed_dropout": 5}
"""The random streams of one rank of a run, each with its own seed (:func:`stream_seed`)."""


def stream_seed(seed: int, rank: int, stream: str, step: int = 0) -> int:
    """The seed of one random stream of one rank, from ``SeedSequence([seed, rank, stream,
    step])``: streams never share a seed (a sum such as seed·1009 + rank + 1 made rank r's
    text stream rank r+1's window stream)."""
    state = np.random.SeedSequence([seed, rank, STREAMS[stream], step]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # < 2^63: any torch generator takes it


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
