"""raydt: sweeps of Decision Transformers initialised from pre-trained language models.

From Python (docs/python_api.md)::

    import raydt

    run = raydt.train("tune_specs/runs/hopper_medium_dt.yaml", optim__lr=3e-4)
    run.evals[["step", "eval/normalized_score"]]
    raydt.load_sweep("runs/quickstart").report()

The names below are imported on first use (PEP 562 module ``__getattr__``), so ``import
raydt`` loads neither torch nor Ray: a call that trains or sweeps imports them, reading
results back needs neither.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # Running and reading back (raydt.api). `train` is the raydt.train package itself,
    # made callable there: a name cannot be both a subpackage and a function of raydt.
    "train": "raydt.train",
    "sweep": "raydt.api",
    "load_run": "raydt.api",
    "load_sweep": "raydt.api",
    "RunResults": "raydt.api",
    "SweepResults": "raydt.api",
    # Configs.
    "load_config": "raydt.config",
    "ExperimentConfig": "raydt.config",
    # Reports, tables and interval estimates over a sweep directory.
    "summarize": "raydt.report",
    "paper_table": "raydt.tables",
    "score_matrices": "raydt.stats",
    "interval_estimates": "raydt.stats",
    "probability_of_improvement": "raydt.stats",
    "performance_profiles": "raydt.stats",
}
"""Public name → the module that defines it."""

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import the module behind an exported name on first use, and keep the name."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raydt' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "train" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The exported names too, before their first use (tab completion in a notebook)."""
    return sorted({*globals(), *_EXPORTS})
