"""Checkpoints: written atomically, read without executing pickled code.

A checkpoint holds the model's weights and its :class:`~raydt.model.dt.ModelArgs`, the
optimizer and scheduler, the step, every RNG state, the state normalisation and the
resolved config, so a run can be resumed, evaluated or analysed from the file alone.
Only tensors and plain containers go in, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydt.errors import RaydtError
from raydt.fsutil import atomic_path

LAST = "last.pt"


def kept_name(step: int) -> str:
    """File name of the checkpoint kept at ``step`` (``train.keep_checkpoints``)."""
    return f"step_{step}.pt"
"""File name of the newest checkpoint in a run's ``checkpoints/`` folder."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no arbitrary code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / LAST if (path / "checkpoints").is_dir() else path / LAST
    if not path.is_file():
        raise RaydtError(f"checkpoint {path} not found; give a run directory or a .pt file it wrote")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = str(exc).split("WeightsUnpickler error:")[-1].strip().split(". ")[0]
        raise RaydtError(f"checkpoint {path} cannot be read: it holds more than tensors and plain containers "
                         f"({refused}); raydt loads checkpoints without running pickled code") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise RaydtError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc})") from None


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
