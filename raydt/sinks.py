"""Metric sinks: ``metrics.jsonl`` beside TensorBoard events, same tags in both.

Tags are namespaced and stable (``train/``, ``eval/``, ``perf/``); ``docs/metrics.md`` is
the glossary. The training loop talks to a :class:`Sink`; tests use :class:`NullSink` or
read the JSONL file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from raydt.errors import DataError, Diverged
from raydt.fsutil import atomic_write_text, space_for


class Sink:
    """Where metrics go. The base class drops everything."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` at training step ``step``."""

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record the run's hyper-parameters against its final metrics."""

    def close(self) -> None:
        """Flush and release files."""


NullSink = Sink


class JsonlSink(Sink):
    """One JSON object per logging step: ``{"step": 100, "train/loss": 0.3, ...}``."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            truncate_jsonl(self.path, resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with space_for(self.path):  # a full disk: one line naming the file, not an OSError
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        # Closing flushes what a full disk refused before: the same one line (the file is
        # closed either way).
        with space_for(self.path):
            self._file.close()


def _plain(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") and not isinstance(value, (int, bool)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep the fact visible
    return value


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (a resumed run re-logs them), atomically."""
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut off by a crash: nothing after it is trustworthy
            if row.get("step", 0) > last_step:
                break
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


def read_metrics(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file.

    A last line that does not parse is what a run killed mid-write leaves: it is skipped,
    and ``warn`` (default: stderr) says so, naming the file. A bad line before the last
    is damage nobody should paper over: a :class:`DataError` naming the file and the line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (not UTF-8); a metrics log holds one JSON row per line") from None
    rows = []
    for i, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
            step = row.get("step") if isinstance(row, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                # A hand-edited or foreign row: reports skip it, as they skip a torn line.
                (warn or _stderr)(f"warning: {path}: skipped line {number}, whose step is {step!r}, "
                                  "not a whole number")
                continue
            rows.append(row)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                (warn or _stderr)(f"warning: {path}: skipped its last line ({number}), cut off mid-write "
                                  "(the run stopped while logging)")
                break
            raise DataError(f"{path}, line {number}: not a JSON row ({exc.msg}); repair or delete "
                            "that line (every row is one JSON object)") from None
    return rows


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class TensorBoardSink(Sink):
    """Scalars and an HParams entry in ``log_dir``."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run's new event file tells TensorBoard to drop what earlier files hold at
        # steps ≥ purge_step (logged after the checkpoint by the session that stopped), so the
        # resumed steps appear once.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=step)

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        # run_name="." keeps the HParams entry in this run's directory, not a timestamped one.
        self.writer.add_hparams(clean, {f"hparams/{k}": float(v) for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


class MultiSink(Sink):
    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        for sink in self.sinks:
            sink.hparams(params, metrics)

    def close(self) -> None:
        """Close every sink, even when one fails (the first failure is raised after)."""
        failure: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class MetricWindow:
    """Per-step metrics summed on the device between two logging steps, read back with one
    host sync: a training loop never waits on the device except when it logs."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self.steps = 0
        """Optimizer steps added since the last :meth:`means`."""

    def add(self, values: Mapping[str, Any]) -> None:
        """Add one step's values (0-d device tensors); no sync."""
        for name, value in values.items():
            self._sums[name] = self._sums[name] + value if name in self._sums else value.detach().clone()
            self._counts[name] = self._counts.get(name, 0) + 1
        self.steps += 1

    def means(self, finite: str, what: str, step: int) -> dict[str, float]:
        """The window's mean of every metric, then an empty window. ``finite`` names the
        metric (the loss) that must be finite: a NaN or inf there stops the run with a
        :class:`~raydt.errors.DataError` saying ``what`` diverged at ``step``."""
        import torch

        names = sorted(self._sums)
        totals = torch.stack([self._sums[n].float() for n in names]).tolist() if names else []  # the one sync
        means = {n: t / self._counts[n] for n, t in zip(names, totals)}
        self._sums.clear()
        self._counts.clear()
        self.steps = 0
        if finite in means and not math.isfinite(means[finite]):
            raise Diverged(f"{what} diverged: the loss is {means[finite]} at step {step}; lower optim.lr, "
                           "raise optim.warmup_steps or set optim.grad_clip")
        return means
