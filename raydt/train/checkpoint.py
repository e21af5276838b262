"""Checkpoints: written atomically, read without executing pickled code.

A checkpoint holds the model's weights and its :class:`~raydt.model.dt.ModelArgs`, the
optimizer and scheduler, the step, every RNG state, the state normalisation and the
resolved config, so a run can be resumed, evaluated or analysed from the file alone.
Only tensors and plain containers go in, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydt.errors import RaydtError
from raydt.fsutil import atomic_path
from raydt.rundir import CHECKPOINTS, LAST, RunDir

TEMPORARY = re.compile(r"\..+\.pt\.tmp-\d+")
"""The temporary file of a checkpoint write in progress (:func:`raydt.fsutil.atomic_path`)."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename: a write that fails
    (a full disk is one line naming ``path``) or is killed leaves the previous checkpoint."""
    remove_stale_temporaries(Path(path).parent)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def remove_stale_temporaries(folder: Path) -> None:
    """Remove what checkpoint writes killed midway left in ``folder`` (``.NAME.pt.tmp-PID``).
    Called before every checkpoint write, so a run that starts or resumes in a directory
    clears them (and frees their space) before its first checkpoint: a run directory has
    one writer (its lock) writing one checkpoint at a time, so every such file is stale.
    No other file is touched."""
    if Path(folder).is_dir():
        for entry in Path(folder).iterdir():
            if TEMPORARY.fullmatch(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no arbitrary code runs).

    Always onto the CPU: a checkpoint holds CPU-only state (the CPU RNG state, NumPy's),
    so reading it onto a GPU would break it; weights and optimizer state reach the device
    through ``load_state_dict``, which copies into tensors already there.
    """
    path = Path(path)
    if path.is_dir():  # a run directory, or its checkpoints folder: the file it holds, else its name there
        found = [p for p in (RunDir(path).last, path / LAST) if p.is_file()]
        path = found[0] if found else path / LAST if path.name == CHECKPOINTS else RunDir(path).last
    if not path.is_file():
        raise RaydtError(f"checkpoint {path} not found; give a run directory or a .pt file it wrote")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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


def set_rng_state(state: dict[str, Any]) -> list[str]:
    """Restore the global RNG states, each on its own device, as far as this process's
    devices allow; returns a note for each state that did not fit (a checkpoint moved
    between set-ups: saved on 4 GPUs and resumed on 1, or on a GPU and resumed on a CPU)."""
    notes = []
    # .cpu(): a checkpoint read onto a GPU (by other tools) holds the CPU state there too.
    torch.set_rng_state(state["torch"].cpu())
    saved = list(state.get("cuda") or [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(cuda_state.cpu(), index)
    if len(saved) > here:
        notes.append(f"the checkpoint holds {len(saved)} CUDA RNG states and this process sees {here} "
                     f"CUDA device(s): restored {min(here, len(saved))}, the others are not used here")
    elif here > len(saved):
        notes.append(f"the checkpoint holds {len(saved)} CUDA RNG states and this process sees {here} "
                     f"CUDA device(s): devices {len(saved)}..{here - 1} keep their seeded state")
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    return notes


def restore_generator(generator: torch.Generator, state: torch.Tensor, reseed: int, what: str) -> str | None:
    """Set ``generator`` to a saved state if the state is of its kind, else seed it with
    ``reseed`` and say so. A CUDA generator's state (16 bytes) and a CPU one's (5056) are
    not interchangeable: a run resumed on another device type gets a fresh, deterministic
    stream instead of an error."""
    state = state.cpu()
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return None
    generator.manual_seed(reseed)
    return (f"{what}: the saved generator state is from a {_kind(state)} generator and this one is "
            f"{generator.device.type}; continuing with a fresh stream seeded {reseed}")


def _kind(state: torch.Tensor) -> str:
    return "CPU" if state.numel() == torch.Generator().get_state().numel() else "CUDA"
