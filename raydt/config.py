"""Run configuration: one frozen dataclass tree and a strict YAML loader.

A spec is a YAML file of sections (``data:``, ``model:``, …) whose leaves are fields below.
``extends:`` names parent specs (paths relative to the file) that are merged first; keys may
be nested or dotted (``optim.lr: 3e-4``); overrides (``--set optim.lr=3e-4``, and later the
values a sweep samples) go through the same path. Values are coerced to the declared type
(YAML reads ``1e-4`` as a string; here it becomes a float) and anything unknown or
ill-typed fails with the file, the key path, what was expected and the valid choices.

Defaults live here and only here: they are Reid et al.'s Gym settings (Table 7 and the
released code). Specs in ``tune_specs/`` are deltas over them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raydt.errors import ConfigError

# --------------------------------------------------------------------------------------
# Field helpers: a validity check travels in the field's metadata so that the loader can
# name the file and key of a bad value.


def checked(default: Any, predicate: Callable[[Any], bool], expected: str) -> Any:
    return field(default=default, metadata={"check": (predicate, expected)})


def positive(default: Any) -> Any:
    return checked(default, lambda v: v > 0, "a number > 0")


def nonnegative(default: Any) -> Any:
    return checked(default, lambda v: v >= 0, "a number >= 0")


def optional_positive(default: Any = None) -> Any:
    return checked(default, lambda v: v is None or v > 0, "null or a number > 0")


# --------------------------------------------------------------------------------------
# The tree. Every leaf has a docstring right below it; `raydt spec show --doc` prints them.

SIZE_PRESETS: dict[str, tuple[int, int, int]] = {
    # name: (embedding dim, heads, layers); Reid et al. Table 9 and Table 7.
    "dt": (128, 1, 3),
    "3m": (256, 4, 4),
    "18m": (512, 8, 6),
    "84m": (768, 12, 12),
}


def preset_dims(model: Any) -> tuple[int, int, int]:
    """(n_embd, n_head, n_layer) of a model section: explicit values over its size preset."""
    preset = SIZE_PRESETS[model.size]
    return (model.n_embd or preset[0], model.n_head or preset[1], model.n_layer or preset[2])


@dataclass(frozen=True)
class DataConfig:
    """Where trajectories come from and how training windows are cut."""

    dataset: str = "generated:hopper-medium"
    """Dataset URI: d4rl:NAME or d4rl:/path.hdf5, minari:ID, generated:TASK-QUALITY[?steps=N&seed=S&env=v4|v5]."""
    context_length: int = positive(20)
    """K: timesteps per training window; the model sees 3K tokens (Reid Table 7: 20)."""
    reward_scale: float = positive(0.001)
    """Factor applied to returns-to-go before they enter the model (DT: 1/1000)."""
    normalize_states: bool = True
    """Standardise states with the dataset's mean and standard deviation."""


@dataclass(frozen=True)
class ModelConfig:
    """The Decision Transformer and its backbone."""

    size: Literal["dt", "3m", "18m", "84m"] = "dt"
    """Size preset: dt 128/1/3 (~600K), 3m 256/4/4, 18m 512/8/6, 84m 768/12/12 (dim/heads/layers)."""
    n_embd: int | None = optional_positive()
    """Embedding dimension; null takes the size preset's."""
    n_head: int | None = optional_positive()
    """Attention heads; null takes the size preset's."""
    n_layer: int | None = optional_positive()
    """Transformer blocks; null takes the size preset's."""
    backbone: str = "random"
    """'random' (fresh GPT-2 of this size); a hub id or directory (GPT-2, CLIP, ImageGPT, any HF causal LM); or pretrain:SPEC.yaml (raydt pre-trains a GPT-2 of this size once, cached)."""
    dropout: float = checked(0.2, lambda v: 0 <= v < 1, "a number in [0, 1)")
    """Residual dropout, and attention and embedding dropout unless set below (Reid Table 7: 0.2)."""
    attn_dropout: float | None = checked(None, lambda v: v is None or 0 <= v < 1, "null or a number in [0, 1)")
    """Attention-weight dropout; null takes model.dropout (Reid's code: 0.1, hard-coded)."""
    embd_dropout: float | None = checked(None, lambda v: v is None or 0 <= v < 1, "null or a number in [0, 1)")
    """Dropout on the backbone's input embeddings; null takes model.dropout (Reid's code: GPT-2's 0.1)."""
    ln_order: Literal["ln_then_time", "time_then_ln"] = "time_then_ln"
    """time_then_ln: LN(token + timestep) as the original DT; ln_then_time: LN(token) + timestep as Reid's code."""
    action_head: Literal["linear", "tied"] = "linear"
    """linear: tanh(Linear(h)) as the original DT; tied: tanh(h·W_action) with the action embedding's weight, no bias (Reid's run.sh)."""
    time_embedding: Literal["per_step", "global_local"] = "per_step"
    """per_step: each step's timestep embedding on its tokens (DT Gym); global_local: the window's first timestep plus a learned per-token position (DT Atari)."""
    embed_tanh: bool = False
    """tanh on the return and action embeddings (DT Atari's model)."""
    embed_ln: bool = True
    """LayerNorm on the input tokens (DT Gym; DT Atari has none)."""
    activation: Literal["relu", "gelu_new", "gelu"] = "relu"
    """MLP activation of a randomly initialised backbone (Reid Table 7: ReLU)."""
    positions: Literal["timestep", "pretrained", "random"] = "timestep"
    """Timestep table: timestep = a fresh nn.Embedding, N(0, 1) (DT; Reid's code without --extend_positions); pretrained = the LM's position table (Reid's extension past its end); random = the LM table's shape at N(0, 0.02)."""
    freeze: Literal["none", "backbone", "backbone_except_layernorm"] = "none"
    """Backbone parameters left out of training (Reid Table 5); embeddings, timesteps and heads always train."""
    replace_block: int | None = checked(None, lambda v: v is None or v >= 0, "null or a block index >= 0")
    """Block i of model.backbone in an otherwise freshly initialised copy of it (Takagi §5.6.1); null keeps all."""

    @property
    def dims(self) -> tuple[int, int, int]:
        """(n_embd, n_head, n_layer) after applying explicit values over the preset."""
        return preset_dims(self)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, as in the released code."""

    lr: float = positive(1e-4)
    """Peak learning rate (Reid Table 7: 1e-4)."""
    weight_decay: float = nonnegative(1e-4)
    """AdamW weight decay (released code: 1e-4)."""
    warmup_steps: int = nonnegative(5000)
    """Steps of linear learning-rate warm-up from 0 (Reid Table 7: 5000; released code: 10000)."""
    eps: float = positive(1e-8)
    """AdamW epsilon (PyTorch's 1e-8; Reid's released code: 1e-6)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (β1, β2) (PyTorch's; DT Atari: 0.9, 0.95)."""
    decay: Literal["all", "matmul_weights"] = "all"
    """Which parameters weight decay applies to: all (Reid, DT Gym) or Linear/Conv weights only (DT Atari)."""
    schedule: Literal["warmup", "warmup_cosine"] = "warmup"
    """warmup: linear warm-up, then constant (DT Gym, Reid); warmup_cosine: then cosine decay to min_lr_ratio (DT Atari)."""
    decay_steps: int | None = optional_positive()
    """warmup_cosine: step at which the cosine reaches min_lr_ratio; null: train.steps."""
    min_lr_ratio: float = checked(0.1, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    """warmup_cosine: floor of the learning rate as a fraction of optim.lr (DT Atari: 0.1)."""
    grad_clip: float = nonnegative(0.25)
    """Maximum global gradient norm; 0 disables clipping (released code: 0.25)."""


@dataclass(frozen=True)
class TrainConfig:
    """The length and rhythm of one fine-tuning run."""

    steps: int = positive(100_000)
    """Gradient steps in total (Reid: 100k)."""
    batch_size: int = positive(64)
    """Windows per step, summed over all workers (Reid Table 7: 64)."""
    eval_every: int = positive(5000)
    """Steps between evaluations (Reid: 5000)."""
    seed: int = nonnegative(0)
    """Seed of everything random in the run: sampling, initialisation, environments."""
    log_every: int = positive(100)
    """Steps between training-metric logs (the only host syncs of the inner loop)."""
    early_stop_patience: int = nonnegative(0)
    """Stop after this many evaluations without a new best score; 0 never stops early."""
    keep_checkpoints: tuple[int, ...] = ()
    """Steps whose checkpoints are kept as checkpoints/step_<N>.pt (0: before any training), for raydt analyze."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training matmuls: bf16 autocast (auto: where the hardware has native bf16, GPUs of compute capability ≥ 8.0 and CPUs with AVX512-BF16/AMX) or fp32; returns-to-go and losses stay fp32."""
    compile: bool | Literal["auto", "default", "reduce-overhead"] = "auto"
    """torch.compile the training forward (evaluation stays eager): auto = CUDA graphs on GPUs for the sizes where they were measured to win, eager on CPUs; true/default, reduce-overhead (CUDA graphs), or false."""
    deterministic: bool = False
    """Deterministic kernels only (torch.use_deterministic_algorithms, cuDNN without autotuning, a fixed cuBLAS workspace), so a GPU run repeats bit for bit; CPU runs repeat without it."""


@dataclass(frozen=True)
class EvalConfig:
    """Return-conditioned rollouts on the simulator."""

    episodes: int = positive(10)
    """Episodes per target return (Reid: 10)."""
    target_returns: tuple[float, ...] | None = None
    """Returns to condition on; null takes the task's (hopper 3600/1800, halfcheetah 6000/12000, walker2d 5000/2500)."""
    env_id: str | None = None
    """gymnasium environment id; null takes the one the dataset records."""
    max_steps: int | None = optional_positive()
    """Cap on agent steps per evaluation episode (Atari on a CPU); null: the environment's own limit."""
    timeout_s: int = positive(6 * 3600)
    """Longest one evaluation may take: DDP ranks other than 0 wait this long for rank 0 to finish it."""


@dataclass(frozen=True)
class LossConfig:
    """Weights of the auxiliary objectives of Reid et al. (L = L_action + λ1·L_cos + λ2·L_LM)."""

    lambda1: float = nonnegative(0.0)
    """λ1: weight of the cosine similarity of input embeddings to language-embedding clusters."""
    lambda2: float = nonnegative(0.0)
    """λ2: weight of the language-modelling co-training loss."""
    cosine_variant: Literal["paper", "as_coded", "as_coded_cotraining"] = "paper"
    """L_cos: paper = max cosine of whole vectors over real tokens; as_coded = Reid's main trainer (per-coordinate max on unit vectors, padding included, LN(token) without time); as_coded_cotraining = its LM co-training trainer (the same on raw vectors)."""
    kmeans_clusters: int = positive(1000)
    """C: k-means clusters of the backbone's token embeddings that L_cos compares against (released code: 1000)."""
    lambda_schedule: Literal["linear", "sigmoid", "constant"] = "linear"
    """How λ1 and λ2 decay: linear to 0 at lambda_decay_steps (paper), sigmoid as coded, or constant."""
    lambda_decay_steps: int = positive(5000)
    """Steps over which the schedule takes λ1 and λ2 to 0 (paper: 5000)."""
    lambda2_schedule: Literal["with_lambda1", "constant"] = "with_lambda1"
    """λ2 follows λ1's schedule (paper) or stays constant (Reid's released LM co-training trainer)."""
    text: str = "wikitext-103"
    """Text for L_LM: wikitext-103 (needs the network once), text:/path/to/file-or-dir, gcide:[PATH], pydoc:."""
    lm_batch_size: int = positive(16)
    """Text blocks per step for L_LM (on each worker)."""
    lm_block_size: int = positive(128)
    """Tokens per text block (capped by the backbone's position table)."""
    track_text_loss: bool = False
    """Also log eval/text_loss (held-out LM loss of the backbone) at each evaluation when λ2 is 0."""


@dataclass(frozen=True)
class ResourcesConfig:
    """Processes and devices of one run."""

    num_workers: int = positive(1)
    """Ray Train workers (DDP processes) for this run."""
    use_gpu: bool = False
    """Give each worker a GPU, or its share of one (resources.gpus_per_worker; NCCL); otherwise CPU workers (gloo)."""
    gpus_per_worker: float | Literal["auto"] = checked(
        1.0, lambda v: v == "auto" or 0 < v <= 1, "a share of one GPU, 0 < share <= 1, or auto")
    """With use_gpu: the share of a GPU each worker gets (0.25: four one-worker trials per GPU, each bounded to a quarter of its memory; auto: the share measured for the model's size, else 1); multi-worker (DDP) runs keep whole GPUs."""
    cpus_per_worker: int = positive(1)
    """CPU cores reserved for each worker; also its number of PyTorch threads."""
    max_failures: int = nonnegative(3)
    """Restarts after a worker or node failure, each from the run's last checkpoint, before the run fails."""
    placement: Literal["auto", "pack", "strict_pack", "spread"] = "auto"
    """Ray placement of a run's workers: auto = strict_pack (one node) for multi-GPU runs, else pack."""


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases: every metric of metrics.jsonl, at the same steps, from rank 0."""

    project: str | None = None
    """W&B project; null: no W&B logging (needs `pip install -e ".[wandb]"`)."""
    entity: str | None = None
    """W&B team or user; null: your default entity."""
    mode: Literal["online", "offline"] = "online"
    """online: stream to W&B; offline: write under the run directory (wandb/), upload later with `wandb sync`."""


@dataclass(frozen=True)
class MlflowConfig:
    """MLflow: every metric of metrics.jsonl, at the same steps, from rank 0."""

    experiment: str | None = None
    """MLflow experiment name; null: no MLflow logging (needs `pip install -e ".[mlflow]"`)."""
    tracking_uri: str | None = None
    """Tracking server or store (http://…, sqlite:///…); null: a SQLite store, mlflow.db beside the run directory."""


@dataclass(frozen=True)
class LogConfig:
    """Experiment trackers, beside metrics.jsonl and TensorBoard (which are always written)."""

    wandb: WandbConfig = WandbConfig()
    """Weights & Biases (log.wandb.project, .entity, .mode)."""
    mlflow: MlflowConfig = MlflowConfig()
    """MLflow (log.mlflow.experiment, .tracking_uri)."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one fine-tuning run."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    loss: LossConfig = LossConfig()
    resources: ResourcesConfig = ResourcesConfig()
    log: LogConfig = LogConfig()


# --------------------------------------------------------------------------------------
# Introspection


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaf_fields(cls: type, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """Every leaf of the tree as ``dotted key → (type, docstring)``."""
    out: dict[str, tuple[Any, str]] = {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            out.update(leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (tp, docs.get(f.name, ""))
    return out


def type_name(tp: Any) -> str:
    """A readable name of a declared type for error messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {type_name(args[0])}" if Ellipsis in args else f"a list of {len(args)} × {type_name(args[0])}"
    return {bool: "true|false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# --------------------------------------------------------------------------------------
# Coercion by declared type


class _Invalid(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Invalid:
                pass
        raise _Invalid
    if origin is Literal:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # `size: 3m` is a string, but `--set x=18` arrives as an int
        if value in args:
            return value
        raise _Invalid
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if Ellipsis not in args and len(items) != len(args):  # a fixed-length tuple
            raise _Invalid
        return tuple(_coerce(v, args[0]) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _Invalid
    if tp is int:
        if isinstance(value, bool):
            raise _Invalid
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                raise _Invalid from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Invalid
    if tp is float:
        if isinstance(value, bool):
            raise _Invalid
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                raise _Invalid from None
        raise _Invalid
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in the tree, not user input


# --------------------------------------------------------------------------------------
# Raw specs: nested dicts plus where each leaf came from


@dataclass
class RawSpec:
    """A merged, not yet typed spec: nested values and the source of every leaf."""

    values: dict[str, Any] = field(default_factory=dict)
    """Nested mapping of sections to leaves."""
    origins: dict[str, str] = field(default_factory=dict)
    """Dotted key → the file (or ``--set``) that set it last."""


def _expand_dotted(mapping: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Turn ``{"optim.lr": 1}`` and ``{"optim": {"lr": 1}}`` into the same nested dict."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: key {prefix}{key!r} is not a string")
        head, *rest = key.split(".")
        if rest:
            value = {".".join(rest): value}
        if isinstance(value, Mapping):
            value = _expand_dotted(value, source, f"{prefix}{head}.")
            if isinstance(out.get(head), dict):
                value = _merge(out[head], value)
        out[head] = value
    return out


def _merge(base: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaves(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


PRETRAIN_SCHEME = "pretrain:"
"""``model.backbone: pretrain:SPEC.yaml``: a backbone pre-trained from SPEC on demand (raydt.pretrain.cache)."""

PATH_URIS = {"model.backbone": PRETRAIN_SCHEME}
"""Keys whose values may name a spec file (``pretrain:FILE``): relative paths are anchored
to the spec that sets them (or the working directory for ``--set``) when read, so a trial
running in another directory still finds the file."""


def anchor_path(key: str, value: Any, source: str) -> Any:
    """``value`` with a relative ``pretrain:`` path made absolute from ``source``'s folder."""
    scheme = PATH_URIS.get(key)
    if scheme is None or not isinstance(value, str) or not value.startswith(scheme):
        return value
    path = Path(value[len(scheme):]).expanduser()
    if not path.is_absolute():
        base = Path(source).parent if Path(source).is_file() else Path.cwd()
        path = (base / path).resolve()
    return f"{scheme}{path}"


def _add(raw: RawSpec, delta: Mapping[str, Any], source: str) -> None:
    nested = _expand_dotted(delta, source)
    for key, value in _leaves(nested).items():
        anchored = anchor_path(key, value, source)
        if anchored is not value:
            section, name = key.split(".", 1)
            nested[section][name] = anchored
    raw.values = _merge(raw.values, nested)
    for key in _leaves(nested):
        raw.origins[key] = source


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain
    YAML keeps the last, so `optim:` written twice silently drops the first section)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(str(key), line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_SPEC_BYTES = 1 << 20
"""Largest spec file read: YAML's parser takes gigabytes and minutes on tens of megabytes,
and no spec comes near this."""


def read_spec(path: str | Path, _chain: tuple[Path, ...] = ()) -> RawSpec:
    """Read a spec file and its ``extends:`` parents into one :class:`RawSpec`.

    Sections are not checked here: :func:`build` checks the run part, and a sweep takes its
    ``search:`` and ``tune:`` sections out first (``raydt.tune.spec``).
    """
    path = Path(path)
    where = " (extended from " + " → ".join(str(p) for p in _chain) + ")" if _chain else ""
    if path.is_dir():
        examples = sorted(str(p) for p in path.glob("*.yaml"))[:3]
        raise ConfigError(f"{path} is a directory; give a spec file" + (f" such as {', '.join(examples)}" if examples else ""))
    if not path.is_file():
        raise ConfigError(f"spec file {path} not found{where}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " → ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: extends itself through {cycle}; remove one link of the cycle")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ConfigError(f"{path}: {size / 2**20:.1f} MiB is not a spec (specs are a few KiB; the limit is "
                          f"{MAX_SPEC_BYTES // 2**20} MiB); give the run's YAML spec, not a data file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); give a YAML spec") from None
    if not text.strip() or all(line.lstrip().startswith("#") for line in text.splitlines() if line.strip()):
        raise ConfigError(f"{path} is empty; a spec needs at least one section (or `extends: PARENT.yaml`)")
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}, line {exc.line}: key {exc.key!r} appears twice in one mapping (the second "
                          f"would silently replace the first, line {exc.first}); keep one") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a spec must be a mapping of sections, got {type(data).__name__}")
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: 'extends' must be a path or a list of paths relative to the file")
    raw = RawSpec()
    for parent in parents:
        sub = read_spec(path.parent / parent, (*_chain, resolved))
        raw.values = _merge(raw.values, sub.values)
        raw.origins.update(sub.origins)
    _add(raw, data, str(path))
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` → ``("optim.lr", "3e-4")`` with the value read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example --set optim.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, (dict, list)) and not text.strip().startswith(("{", "[")):
        value = text.strip()  # `pydoc:` or `a:b` is a URI, not a one-key mapping
    return key.strip(), value


def apply_overrides(raw: RawSpec, overrides: Mapping[str, Any] | Sequence[str], source: str = "--set") -> RawSpec:
    """A copy of ``raw`` with dotted overrides applied (CLI ``--set`` or sampled trial values)."""
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_override(item) for item in overrides)
    out = RawSpec(dict(raw.values), dict(raw.origins))
    for key, value in overrides.items():
        _add(out, {key: value}, source)
    return out


# --------------------------------------------------------------------------------------
# Typed build


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(cls: type, values: Mapping[str, Any], origins: Mapping[str, str], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from nested ``values``, coercing and checking each leaf."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            dotted = f"{prefix}{key}"
            source = next(
                (src for k, src in origins.items() if k == dotted or k.startswith(dotted + ".")),
                "spec",
            )
            kind = "section" if not prefix else f"key in section '{prefix[:-1]}'"
            raise ConfigError(
                f"{source}: unknown {kind} '{dotted}'{_suggest(key, names)}; "
                f"valid: {', '.join(names)}"
            )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp = _hints(cls)[f.name]
        dotted = f"{prefix}{f.name}"
        value = values[f.name]
        source = origins.get(dotted, "spec")
        if _is_section(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: '{dotted}' is a section; give it as a mapping "
                    f"(valid keys: {', '.join(x.name for x in dataclasses.fields(tp))})"
                )
            kwargs[f.name] = build(tp, value, origins, f"{dotted}.")
            continue
        try:
            coerced = _coerce(value, tp)
        except _Invalid:
            raise ConfigError(
                f"{source}: '{dotted}' = {value!r} is not valid; expected {type_name(tp)}"
            ) from None
        check = f.metadata.get("check")
        if check is not None and not check[0](coerced):
            raise ConfigError(f"{source}: '{dotted}' = {value!r} is not valid; expected {check[1]}")
        kwargs[f.name] = coerced
    return cls(**kwargs)


def load_config(
    path: str | Path,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    cls: type = ExperimentConfig,
) -> Any:
    """Read a spec file, apply overrides, and build a frozen ``cls`` (a :class:`ExperimentConfig`)."""
    raw = apply_overrides(read_spec(path), overrides)
    sweep_sections = {key.split(".", 1)[0] for key in raw.values} & {"search", "tune"}
    if cls is ExperimentConfig and sweep_sections:
        raise ConfigError(f"{path} is a sweep spec (it has a {'/'.join(sorted(sweep_sections))} section): "
                          f"run it with `raydt sweep {path}`; `raydt train` takes a single run's spec")
    return build(cls, raw.values, raw.origins)


def config_from_dict(values: Mapping[str, Any], cls: type = ExperimentConfig, source: str = "config") -> Any:
    """Build a config from a nested (or dotted) mapping, e.g. one read back from a run directory."""
    raw = RawSpec()
    _add(raw, values, source)
    return build(cls, raw.values, raw.origins)


# --------------------------------------------------------------------------------------
# Output


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain-Python form of a config (tuples become lists), ready for YAML or JSON."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def to_yaml(config: Any, doc: bool = False) -> str:
    """The resolved config as YAML; with ``doc``, each leaf preceded by its docstring."""
    if not doc:
        return yaml.safe_dump(to_dict(config), sort_keys=False)
    lines: list[str] = []

    def emit(obj: Any, indent: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                section_doc = (type(value).__doc__ or "").strip()
                lines.append(f"{indent}{f.name}:" + (f"  # {section_doc}" if section_doc else ""))
                emit(value, indent + "  ")
                continue
            lines.append(f"{indent}# {docs.get(f.name, '')}")
            rendered = yaml.safe_dump(
                {f.name: list(value) if isinstance(value, tuple) else value},
                default_flow_style=True, width=10_000,
            ).strip()
            lines.append(f"{indent}{rendered[1:-1]}")

    emit(config, "")
    return "\n".join(lines) + "\n"
