"""Run a run again from its directory and compare the two logs row by row (``raydt reproduce``).

The reproduction is the run's own resolved config, trained in this process (as
``raydt train --no-ray``) into a fresh directory. Its ``metrics.jsonl`` must equal the
original's at every logged step up to the cut:

- on a CPU, bit for bit: the same config, code, versions, CPU and thread count give the same
  floating-point operations in the same order, so every metric is compared with ``==``;
- on a GPU, within :data:`GPU_RTOL` (relative) or :data:`GPU_ATOL` (absolute): without
  ``train.deterministic`` some CUDA kernels (atomic adds in the backward of embedding
  lookups, cuBLAS with a shared workspace) sum in a different order on every run, and those
  last-bit differences grow with training. A run with ``train.deterministic: true`` on the
  same GPU model and software is expected to repeat exactly; the verdict says whether it did.

Timing metrics (:data:`EXCLUDED`, ``perf/``) measure the machine, not the run, and are left
out. The cut (``--steps N``) keeps ``train.steps``' learning-rate schedule and its logging
and evaluation steps (:meth:`raydt.train.loop.Trainer.fit`'s ``stop_after``), so the rows
up to N are the ones the original logged.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydt.errors import RaydtError
from raydt.rundir import RunDir

EXCLUDED = ("perf/",)
"""Prefixes of the metrics not compared: wall-clock timings (perf/train_seconds,
perf/eval_seconds, perf/total_seconds, perf/steps_per_second)."""

GPU_RTOL = 1e-4
"""Relative difference a GPU reproduction may show in any metric."""

GPU_ATOL = 1e-6
"""Absolute difference a GPU reproduction may show (metrics near 0, such as a decayed λ)."""

ABSENT = "(absent)"


@dataclass(frozen=True)
class Difference:
    """The first place the two logs disagree."""

    step: int
    metric: str
    """A metric's name, or ``"row"`` when one log has no row at this step."""
    original: Any
    reproduced: Any


@dataclass
class Comparison:
    """The two logs, row by row, up to a step."""

    steps: list[int] = field(default_factory=list)
    """Steps compared (both logs have a row at each, until the first difference)."""
    excluded: list[str] = field(default_factory=list)
    """Metrics left out (timings), by name."""
    exact: bool = True
    """Whether every metric had to be equal bit for bit (CPU), else within the GPU tolerance."""
    difference: Difference | None = None
    largest: tuple[float, int, str] | None = None
    """(relative difference, step, metric) of the largest nonzero difference within the
    tolerance (GPU comparisons); None when every compared value was equal."""

    @property
    def match(self) -> bool:
        return self.difference is None


def excluded(metric: str) -> bool:
    return metric.startswith(EXCLUDED)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_metrics(original: list[dict[str, Any]], reproduced: list[dict[str, Any]], up_to: int,
                    exact: bool = True) -> Comparison:
    """Compare two ``metrics.jsonl`` logs at every step up to ``up_to``; stop at the first
    difference (a row only one log has, a metric only one row has, or a value)."""
    out = Comparison(exact=exact)
    rows_a = {r["step"]: r for r in original if r["step"] <= up_to}
    rows_b = {r["step"]: r for r in reproduced if r["step"] <= up_to}
    out.excluded = sorted({k for r in (*rows_a.values(), *rows_b.values()) for k in r if excluded(k)})
    for step in sorted(rows_a.keys() | rows_b.keys()):
        a, b = rows_a.get(step), rows_b.get(step)
        if a is None or b is None:
            out.difference = Difference(step, "row", "logged" if a is not None else "not logged",
                                        "logged" if b is not None else "not logged")
            return out
        for metric in sorted((a.keys() | b.keys()) - {"step"}):
            if excluded(metric):
                continue
            va, vb = a.get(metric, ABSENT), b.get(metric, ABSENT)
            if va == vb and _number(va) == _number(vb):  # 1 and 1.0 are one value; True is not 1
                continue
            if not exact and _number(va) and _number(vb) and math.isclose(va, vb, rel_tol=GPU_RTOL,
                                                                          abs_tol=GPU_ATOL):
                rel = abs(va - vb) / max(abs(va), abs(vb))
                if out.largest is None or rel > out.largest[0]:
                    out.largest = (rel, step, metric)
                continue
            out.difference = Difference(step, metric, va, vb)
            return out
        out.steps.append(step)
    return out


@dataclass
class Outcome:
    """What ``raydt reproduce`` found."""

    run_dir: Path
    out: Path
    stop: int
    """The last step trained (``--steps``, capped by the original's log)."""
    comparison: Comparison
    versions: list[tuple[str, Any, Any]] | None
    """(name, recorded, installed) of each version that differs; None without a record."""
    machine: list[tuple[str, Any, Any]] = field(default_factory=list)
    """(name, recorded, here) of each machine fact that differs (CPU model, GPUs, threads)."""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The verdict as the command prints it."""
        c = self.comparison
        how = "bit for bit" if c.exact else f"within rel {GPU_RTOL:g} / abs {GPU_ATOL:g} (GPU)"
        lines = [f"reproduced {self.run_dir} up to step {self.stop} in {self.out}", *self.notes]
        span = f"steps {c.steps[0]} to {c.steps[-1]}" if c.steps else "no step"
        lines.append(f"compared {len(c.steps)} row(s), {span}, {how}; not compared (timings): "
                     + (", ".join(c.excluded) or "none"))
        d = c.difference
        if d is None:
            exact = c.exact or c.largest is None
            lines.append("MATCH: every metric equal" + (", bit for bit" if exact else
                         f"; largest difference {c.largest[0]:.2g} (relative) at step {c.largest[1]}, "
                         f"{c.largest[2]}"))
        elif d.metric == "row":
            lines.append(f"MISMATCH at step {d.step}: the original's row is {d.original}, the reproduction's "
                         f"{d.reproduced}")
        else:
            lines.append(f"MISMATCH at step {d.step}, {d.metric}: original {d.original!r}, "
                         f"reproduction {d.reproduced!r}")
        if self.versions is None:
            lines.append("versions: run_info.json holds no record (written before raydt kept one); not checked")
        elif self.versions:
            lines.append("versions that differ from the run's record (recorded -> installed): "
                         + "; ".join(f"{name} {a} -> {b}" for name, a, b in self.versions))
        else:
            lines.append("versions: the installed ones are those recorded")
        if self.machine:
            lines.append("machine facts that differ (recorded -> here): "
                         + "; ".join(f"{name} {a} -> {b}" for name, a, b in self.machine))
        return lines


def reproduce(run_dir: Path, out: Path | None = None, steps: int | None = None,
              log: Callable[[str], None] = print) -> Outcome:
    """Train ``run_dir``'s config again into ``out`` (default: a fresh temporary directory)
    for its first ``steps`` steps (default: ``train.steps``) and compare the logs. Bad input
    (no run there, a cut past the run's end, a run this process cannot repeat) is a
    :class:`RaydtError` before anything trains."""
    from raydt import record
    from raydt.config import config_from_dict
    from raydt.train.driver import run_training

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RaydtError(f"{run_dir}: no such run directory")
    if not run.is_run():
        raise RaydtError(f"{run_dir} holds no {run.config.name}: not a run directory (a sweep's runs are its "
                         "trial folders)")
    import dataclasses

    from raydt.config import LogConfig

    # A reproduction is a check, not a run to publish: no W&B or MLflow run for it.
    config = dataclasses.replace(config_from_dict(run.read_config(), source=str(run.config)), log=LogConfig())
    original = run.read_metrics()
    if not original:
        raise RaydtError(f"{run_dir} holds no {run.metrics.name} rows: the run logged nothing to compare with")
    total = config.train.steps
    if steps is not None and not 1 <= steps <= total:
        raise RaydtError(f"--steps {steps}: give a step from 1 to the run's train.steps={total}")
    if config.resources.num_workers > 1:
        raise RaydtError(f"{run_dir} ran with resources.num_workers={config.resources.num_workers}: raydt reproduce "
                         "re-runs in this process, one worker, which gives other numbers than DDP's")
    if config.resources.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise RaydtError(f"{run_dir} ran on a GPU (resources.use_gpu=true) and no CUDA device is visible here: "
                             "reproduce it on a machine with one")
    wanted = total if steps is None else steps
    notes = []
    last_logged = original[-1]["step"]
    stop = min(wanted, last_logged)  # an early-stopped or interrupted original ends before
    if last_logged < wanted:
        notes.append(f"note: the original's log ends at step {last_logged} (stopped early or interrupted); "
                     "the reproduction stops there too")
    target = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"raydt-reproduce-{run.path.name}-"))
    if target.resolve() == run.path.resolve():
        raise RaydtError(f"--out {out}: that is the run itself; give a fresh directory")
    if RunDir(target).has_results():
        raise RaydtError(f"--out {out} already holds a run; give a fresh directory")
    run_training(config, target, use_ray=False, log=log, stop_after=stop)

    copy = RunDir(target)
    comparison = compare_metrics(original, copy.read_metrics(), stop, exact=not config.resources.use_gpu)
    if comparison.steps and comparison.steps[-1] < stop and comparison.match:
        notes.append(f"note: no row is logged after step {comparison.steps[-1]} up to step {stop} "
                     f"(train.log_every={config.train.log_every}); compared up to step {comparison.steps[-1]}")
    recorded = (run.read_run_info() or {}).get("record")
    here = (copy.read_run_info() or {}).get("record") or record.collect()
    versions = None if recorded is None else record.version_differences(recorded, here)
    source = ((recorded or {}).get("raydt") or {}).get("git") or {}
    if source.get("dirty"):
        notes.append("note: the run's raydt source had uncommitted changes, which its record cannot name")
    machine = [] if recorded is None else record.machine_differences(recorded, here)
    return Outcome(run.path, target, stop, comparison, versions, machine, notes)
