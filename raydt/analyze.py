"""The analyses of `raydt analyze`, each described once: what it measures, on which kept
steps, its default number of windows and its figure. Importing this module is cheap (the
CLI builds its help from it); the measuring code loads on first use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydt.errors import ConfigError


def _run():
    from raydt.analysis import run

    return run


@dataclass(frozen=True)
class Options:
    """What `raydt analyze` was asked for (steps are kept steps or "last")."""

    pre: int | str = 0
    post: int | str = "last"
    step: int | str | None = None
    """The one step mi and grads measure at; None: post for mi, pre for grads."""
    windows: int | None = None
    """Fixed windows of the run's data; None: the analysis's default."""
    mine_steps: int = 1000
    protocol: str = "raydt"
    definition: str = "paper"
    mine_preset: str = "raydt"
    representation: str = "mlp"
    log: Callable[[str], None] = lambda _msg: None


@dataclass(frozen=True)
class Analysis:
    """One measurement of `raydt analyze`."""

    name: str
    help: str
    windows: int
    """Default number of fixed windows (0: needs no data)."""
    measure: Callable[[Path, Options, int], dict[str, Any]]
    """(run directory, options, windows) → the result saved as analysis/NAME.json."""
    one_step: str | None
    """None for a pre-vs-post comparison; "post" or "pre": the default of its single step."""
    plot: str
    """The function of :mod:`raydt.analysis.run` that draws its figure."""
    least: tuple[int, str] = (1, "")
    """Fewest windows it can measure on, and why."""

    def steps(self, options: Options) -> list[int | str]:
        """The kept steps this analysis reads (checked on every run before any is measured)."""
        return [self.step(options)] if self.one_step else [options.pre, options.post]

    def step(self, options: Options) -> int | str:
        if options.step is not None:
            return options.step
        return options.post if self.one_step == "post" else options.pre


def _register(*analyses: Analysis) -> dict[str, Analysis]:
    return {a.name: a for a in analyses}


ANALYSES = _register(
    Analysis("params", "per-tensor L2 distance and cosine similarity, pre vs post", 0,
             lambda run, o, _w: _run().params(run, o.pre, o.post), None, "plot_params"),
    Analysis("cka", "linear CKA of every block's sub-layers, pre vs post", 512,
             lambda run, o, w: _run().cka(run, o.pre, o.post, windows=w), None, "plot_cka",
             (4, "debiased CKA needs 4 samples")),
    Analysis("attention", "attention distance and maps, pre and post", 64,
             lambda run, o, w: _run().attention(run, [o.pre, o.post], windows=w, definition=o.definition), None,
             "plot_attention"),
    Analysis("mi", "MINE estimates I(X;T), I(Y;T) at one step (default post)", 4096,
             lambda run, o, w: _run().mi(run, ANALYSES["mi"].step(o), windows=w, steps=o.mine_steps, log=o.log,
                                  representation=o.representation, preset=o.mine_preset), "post", "plot_mi",
             (4, "MINE trains on some windows and scores on others")),
    Analysis("grads", "per-sample gradients, norms, confusion and shares at one step (default pre)", 64,
             lambda run, o, w: _run().grads(run, ANALYSES["grads"].step(o), windows=w, protocol=o.protocol), "pre",
             "plot_grads", (2, "gradient confusion compares pairs")),
)
"""Every analysis `raydt analyze` runs, by name."""


def check(name: str, options: Options) -> None:
    """Refuse numbers analysis ``name`` cannot work with, before any checkpoint is read."""
    analysis = ANALYSES[name]
    least, why = analysis.least
    if analysis.windows and options.windows is not None and options.windows < least:
        raise ConfigError(f"--windows {options.windows}: give {least} or more for {name} "
                          f"({why + '; ' if why else ''}default {analysis.windows})")
    if name == "mi" and options.mine_steps < 1:
        raise ConfigError(f"--mine-steps {options.mine_steps}: give a positive number (default 1000)")


def analyze(run_dir: Path, name: str, options: Options) -> tuple[dict[str, Any], Path]:
    """Run analysis ``name`` on one run: measure, save the JSON and draw the figure."""
    check(name, options)
    analysis = ANALYSES[name]
    result = analysis.measure(run_dir, options, analysis.windows if options.windows is None else options.windows)
    path = _run().save(run_dir, name, result)
    getattr(_run(), analysis.plot)(run_dir, result)
    return result, path
