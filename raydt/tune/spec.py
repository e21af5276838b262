"""Sweep specs: a run spec plus ``search:`` and ``tune:`` sections.

```yaml
extends: runs/hopper_medium_dt.yaml
search:
  data.context_length: {grid: [5, 20]}
  loss.lambda1: {uniform: [0.0, 0.2]}
  train.seed: {grid: [0, 1]}
tune:
  searcher: grid
  num_samples: 1
```

Search keys are dotted run-config keys and go through the same override path as ``--set``,
so a misspelled key or a value of the wrong type fails here, before any trial starts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raydt.config import (
    ExperimentConfig,
    RawSpec,
    anchor_path,
    apply_overrides,
    build,
    leaf_fields,
    nonnegative,
    positive,
    read_spec,
)
from raydt.errors import ConfigError
from raydt.rundir import DATASET_KEY, SEED_KEY

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
"""Kinds of search dimension a ``search:`` entry may name."""


@dataclass(frozen=True)
class Dimension:
    """One searched key."""

    key: str
    """Dotted run-config key."""
    kind: str
    """One of :data:`DISTRIBUTIONS`."""
    values: tuple[Any, ...]
    """grid/choice: the values; uniform/loguniform/randint: (low, high)."""




@dataclass(frozen=True)
class ReplicatesConfig:
    """Each search point run as seeds × datasets replicates; the searcher sees one value per point."""

    seeds: int = positive(1)
    """Seeds per point and dataset: train.seed = 0 … seeds − 1 (a seed is a replicate, never searched)."""
    datasets: tuple[str, ...] | None = None
    """Datasets every point runs on (one setting for all tasks, as Reid et al.); null: the run's data.dataset."""
    aggregate: Literal["mean", "iqm"] = "mean"
    """How a point's replicate scores become its one value: their mean, or interquartile mean."""
    score: Literal["final", "best", "auc"] = "final"
    """A replicate's score from its tune.metric curve: the last evaluation, the best one (the papers' early stopping; biased up by noise), or the mean over evaluations (area under the curve per evaluation)."""


@dataclass(frozen=True)
class SearchConfig:
    """How a sweep searches and schedules its trials."""

    metric: str = "eval/normalized_score"
    """Reported metric the searcher and scheduler optimise."""
    mode: Literal["max", "min"] = "max"
    """Whether the metric is to be maximised or minimised."""
    searcher: Literal["grid", "optuna"] = "grid"
    """grid: every combination of grid values (choice/ranges sampled); optuna: Optuna TPE."""
    scheduler: Literal["fifo", "asha"] = "fifo"
    """fifo: every trial runs its full budget; asha: stop poor trials early (ASHA on the step count)."""
    num_samples: int = positive(1)
    """grid: repeats of the whole grid; optuna: number of trials."""
    max_concurrent: int = nonnegative(0)
    """Most trials at once; 0 lets the cluster's resources decide."""
    seed: int = nonnegative(0)
    """Seed of the searcher's own sampling."""
    storage_path: str = "runs"
    """Local folder or URI under which the sweep directory is created."""
    name: str | None = None
    """Sweep directory name; null takes the spec file's name."""
    asha_grace_steps: int = positive(1000)
    """ASHA: training steps every trial gets before it can be stopped."""
    asha_reduction_factor: int = positive(3)
    """ASHA: 1/η of the trials go on at each rung."""
    converged_patience: int = nonnegative(0)
    """Stop a trial this many evaluations after its convergence point so far (see raydt.convergence); 0 = off."""
    converged_threshold: float = nonnegative(2.0)
    """Distance to the best (metric units) within which an evaluation counts as converged."""
    replicates: ReplicatesConfig = ReplicatesConfig()
    """Seeds and datasets each search point runs on (tune.replicates.seeds, .datasets, .aggregate, .score)."""
    study_storage: str | None = None
    """optuna: where the study lives; null: a journal file in the sweep directory; or an RDB URL (postgresql://…, sqlite:///…) for studies shared by several drivers."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: the run part (untyped until a trial's values are applied), the search
    dimensions and the tune settings."""

    path: Path
    run: RawSpec
    dimensions: tuple[Dimension, ...]
    tune: SearchConfig
    report: Mapping[str, Any] = field(default_factory=dict)
    """The ``report:`` section: order and labels of `raydt report --table` (raydt.tables.Layout)."""

    @property
    def name(self) -> str:
        return self.tune.name or self.path.stem

    def trial_config(self, values: Mapping[str, Any]) -> ExperimentConfig:
        """The run config of a trial: the spec's run part with the sampled ``values``."""
        raw = apply_overrides(self.run, values, source=f"{self.path}: search")
        return build(ExperimentConfig, raw.values, raw.origins)

    def base_config(self) -> ExperimentConfig:
        return build(ExperimentConfig, self.run.values, self.run.origins)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid dimensions (one empty point when there are none)."""
        grid = [d for d in self.dimensions if d.kind == "grid"]
        return [dict(zip([d.key for d in grid], combo)) for combo in itertools.product(*[d.values for d in grid])]

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point with each of its replicates: the trials of one grid repeat."""
        return [{**p, **r} for p in self.grid_points() for r in self.replicate_values()]

    def discrete_points(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every combination of the values of its grid and choice dimensions and replicates
        (at most ``limit``): what a pre-flight check must cover (continuous ranges cannot
        name files)."""
        dims = [d for d in self.dimensions if d.kind in ("grid", "choice")]
        combos = itertools.islice(itertools.product(*[d.values for d in dims], self.replicate_values()), limit)
        return [{**dict(zip([d.key for d in dims], combo[:-1])), **combo[-1]} for combo in combos] or [{}]

    @property
    def replicated(self) -> bool:
        """Whether the spec runs each point as several replicates (tune.replicates)."""
        rep = self.tune.replicates
        return rep.seeds > 1 or rep.datasets is not None

    def replicate_values(self) -> list[dict[str, Any]]:
        """The replicate keys of one point, in order: every dataset, every seed within it
        (nothing when the spec names no replicates)."""
        rep = self.tune.replicates
        if not self.replicated:
            return [{}]
        datasets = [{DATASET_KEY: d} for d in rep.datasets] if rep.datasets is not None else [{}]
        return [{**d, SEED_KEY: s} for d in datasets for s in range(rep.seeds)]

    @property
    def num_points(self) -> int:
        """Search points: grid combinations × repeats, or Optuna's samples."""
        if self.tune.searcher == "grid":
            return len(self.grid_points()) * self.tune.num_samples
        return self.tune.num_samples

    @property
    def num_trials(self) -> int:
        """Trials = points × replicates (each replicate is a trial of its own)."""
        return self.num_points * len(self.replicate_values())

    @property
    def searched_keys(self) -> list[str]:
        """The keys that vary between trials, replicate keys (seed, dataset) included."""
        keys = [d.key for d in self.dimensions]
        replicate = self.replicate_values()[0]
        return keys + [k for k in (DATASET_KEY, SEED_KEY) if k in replicate and k not in keys]


def _dimension(path: Path, key: str, entry: Any, origins: Mapping[str, str]) -> Dimension:
    where = f"{path}: search.{key}"
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise ConfigError(
            f"{where}: give one distribution as a mapping, for example {{grid: [1, 2]}}; "
            f"valid kinds: {', '.join(DISTRIBUTIONS)}"
        )
    (kind, values), = entry.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; valid kinds: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} needs a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        bounds = [_bound(v, kind) for v in values]
        if len(bounds) != 2 or any(v is None for v in bounds) or bounds[0] >= bounds[1]:
            numbers = "integers" if kind == "randint" else "numbers"
            raise ConfigError(f"{where}: {kind} needs [low, high], two {numbers} with low < high, got {values}")
        values = bounds
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {values[0]}")
    # pretrain:FILE values are relative to the spec file that lists them.
    source = origins.get(f"search.{key}.{kind}", str(path))
    return Dimension(key, kind, tuple(anchor_path(key, v, source) for v in values))


def _bound(value: Any, kind: str) -> float | int | None:
    """A range bound as a number, None if it is not one. YAML reads ``1e-5`` (no dot) as a
    string; ordinary keys convert it, so bounds do too."""
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if kind == "randint":
        return int(value) if float(value).is_integer() else None
    return float(value)


def _probe_values(dim: Dimension) -> list[Any]:
    if dim.kind in ("grid", "choice"):
        return list(dim.values)
    if dim.kind == "randint":
        return [int(dim.values[0]), int(dim.values[1]) - 1]
    return [float(dim.values[0]), float(dim.values[1])]


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | list[str] = ()) -> SweepSpec:
    """Read and check a sweep spec; every searched value is tried against the config schema."""
    path = Path(path)
    raw = read_spec(path)
    values = dict(raw.values)
    search = values.pop("search", None) or {}
    tune_values = values.pop("tune", None) or {}
    report = values.pop("report", None) or {}
    origins = {k: v for k, v in raw.origins.items() if not k.startswith(("search.", "tune.", "report."))}
    run = apply_overrides(RawSpec(values, origins), overrides)
    if not isinstance(search, Mapping):
        raise ConfigError(f"{path}: 'search' must map dotted keys to distributions")
    # `_expand_dotted` nested the dotted search keys; flatten them back to leaves.
    flat = _flatten_search(search)
    dimensions = tuple(_dimension(path, key, entry, raw.origins) for key, entry in flat.items())
    if not isinstance(tune_values, Mapping):
        raise ConfigError(f"{path}: 'tune' must be a mapping of settings")
    tune = build(SearchConfig, tune_values, raw.origins, prefix="tune.")
    from raydt.tables import Layout

    Layout.from_spec(report, f"{path}: report")  # checked now, used by `raydt report --table`
    spec = SweepSpec(path, run, dimensions, tune, dict(report))
    _check_replicates(spec)
    spec.base_config()  # the run part alone must be valid
    for replicate in spec.replicate_values():
        spec.trial_config(replicate)
    for dim in dimensions:  # so must every value the search can produce
        for value in _probe_values(dim):
            spec.trial_config({dim.key: value})
    return spec


SEARCH_DOC = ("dotted run keys → grid or choice: [values], or uniform, loguniform or randint: [low, high]; "
              "each trial's values replace the run part's above")
"""What ``raydt spec show --doc`` writes above a sweep's ``search:`` section."""


def sweep_yaml(spec: SweepSpec, doc: bool = False) -> str:
    """A sweep spec resolved (``raydt spec show``), as YAML a sweep spec could hold: the run
    part's full config (what every trial starts from), then ``search:``, every ``tune:``
    setting (defaults included) and ``report:``; with ``doc``, each run and tune key's
    documentation above it (the field docstrings of the config, :class:`SearchConfig` and
    :class:`ReplicatesConfig`)."""
    import textwrap

    import yaml

    from raydt.config import to_dict, to_yaml

    def flow(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()

    lines = [to_yaml(spec.base_config(), doc=doc).rstrip("\n")]
    if doc:
        lines.append(f"# {SEARCH_DOC}")
    # One line per dimension, as specs write them: `model.backbone: {grid: [random, gpt2]}`.
    lines.append("search:" + ("" if spec.dimensions else " {}"))
    lines += [f"  {flow({d.key: {d.kind: list(d.values)}})[1:-1]}" for d in spec.dimensions]
    if doc:
        lines.append(f"tune:  # {(SearchConfig.__doc__ or '').strip()}")
        lines.append(textwrap.indent(to_yaml(spec.tune, doc=True), "  ").rstrip("\n"))
    else:
        lines.append(yaml.safe_dump({"tune": to_dict(spec.tune)}, sort_keys=False).rstrip("\n"))
    if spec.report:
        lines.append(yaml.safe_dump({"report": dict(spec.report)}, sort_keys=False).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _check_replicates(spec: SweepSpec) -> None:
    """Seeds are replicates, never searched; a dataset is either searched or a replicate."""
    where = f"{spec.path}: search"
    for dim in spec.dimensions:
        if dim.key == SEED_KEY and (spec.tune.searcher != "grid" or dim.kind != "grid"):
            raise ConfigError(
                f"{where}.{SEED_KEY}: a seed is a replicate, not a hyper-parameter (a searcher would model "
                f"seed noise as an effect); remove it from search: and set tune.replicates.seeds "
                "(each point then runs on that many seeds and the searcher sees their aggregate)")
        if dim.key == SEED_KEY and spec.replicated:
            raise ConfigError(f"{where}.{SEED_KEY}: seeds come from tune.replicates.seeds; remove it from search:")
        if dim.key == DATASET_KEY and spec.tune.replicates.datasets is not None:
            raise ConfigError(f"{where}.{DATASET_KEY}: the datasets come from tune.replicates.datasets; "
                              "remove it from search: (or drop tune.replicates.datasets to search over it)")
    if spec.tune.replicates.datasets is not None:
        from raydt.data.sources import check_dataset_uri
        from raydt.errors import DataError

        if not spec.tune.replicates.datasets:
            raise ConfigError(f"{spec.path}: tune.replicates.datasets is empty; list datasets, or null for data.dataset")
        for uri in spec.tune.replicates.datasets:
            try:
                check_dataset_uri(uri)
            except DataError as exc:
                raise ConfigError(f"{spec.path}: tune.replicates.datasets: {exc}") from None
    if spec.tune.study_storage is not None and spec.tune.searcher != "optuna":
        raise ConfigError(f"{spec.path}: tune.study_storage is the Optuna study's storage; it needs tune.searcher: optuna")


def _flatten_search(search: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → distribution entry; a run-config leaf or a one-kind mapping ends a path."""
    leaves = leaf_fields(ExperimentConfig)
    out: dict[str, Any] = {}
    for key, value in search.items():
        dotted = f"{prefix}{key}"
        is_entry = (
            dotted in leaves
            or not isinstance(value, Mapping)
            or (len(value) == 1 and next(iter(value)) in DISTRIBUTIONS)
        )
        if is_entry:
            out[dotted] = value
        else:
            out.update(_flatten_search(value, dotted + "."))
    return out
