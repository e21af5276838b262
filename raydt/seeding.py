"""Seeds: every random stream of a run derived from the run's one seed; and the switch to
deterministic kernels (``train.deterministic``)."""

from __future__ import annotations

import os
import random
import warnings

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


CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS workspace for deterministic runs: 8 buffers of 4096 KiB (NVIDIA's documented
setting; ``:16:8`` is the other, smaller and sometimes slower; one already set is kept)."""


def set_deterministic(enabled: bool) -> tuple[bool, bool, bool, bool]:
    """Deterministic kernels only, process-wide (``train.deterministic``), or PyTorch's
    defaults; returns the previous state for :func:`restore_deterministic`.

    On: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
    implementation raises instead of running), cuDNN's deterministic algorithms without
    benchmark autotuning (which may pick a different algorithm each run), and
    ``CUBLAS_WORKSPACE_CONFIG``: with CUDA >= 10.2 cuBLAS splits work differently when
    streams share its default workspace, so results vary run to run; a fixed workspace per
    stream makes them repeatable, and PyTorch refuses cuBLAS calls in deterministic mode
    without one. PyTorch sizes that workspace once, when the process makes its first cuBLAS
    handle: this must run before any CUDA work (the Trainer calls it first). Off: PyTorch's
    defaults, set either way, since an earlier run in this process may have turned it on.
    Settable and testable without a GPU."""
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    if enabled and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():
            warnings.warn("train.deterministic: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set; "
                          f"cuBLAS may not repeat bit for bit (set CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} "
                          "before starting Python)", stacklevel=2)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(enabled)
    cudnn.deterministic = enabled
    if enabled:
        cudnn.benchmark = False
    return before


def restore_deterministic(before: tuple[bool, bool, bool, bool]) -> None:
    """Put back the state :func:`set_deterministic` returned (the environment variable stays:
    cuBLAS has read it)."""
    algorithms, warn_only, cudnn_deterministic, benchmark = before
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, benchmark


def deterministic_enabled() -> bool:
    """Whether :func:`set_deterministic` is on (all of its process-wide flags)."""
    cudnn = torch.backends.cudnn
    return torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
