"""One fine-tuning run in plain PyTorch: optimizer, schedule, step, evaluation, checkpoints.

No Ray here. :func:`fit` runs in-process (``raydt train --no-ray``) or inside each Ray Train
worker (``raydt/train/worker.py``), which passes a :class:`RunContext` with its rank and a
``report`` callback. Every rank steps, logs and reaches evaluation points on the same
schedule; rank 0 evaluates, writes the sinks and checkpoints, and its early-stopping
decision is broadcast so all ranks stop at the same step.

Defaults and their sources are in :mod:`raydt.config` (Reid et al. Table 7 and the released
code): AdamW, linear warm-up, global-norm clipping, masked MSE on actions.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from raydt import artifacts, record
from raydt.artifacts import Artifact
from raydt.config import ExperimentConfig, OptimConfig, to_dict, to_yaml
from raydt.data.dqn_replay import AtariTrajectories
from raydt.data.sampler import Batch, FrameWindowSampler, WindowSampler
from raydt.data.text import TextSampler, split_tokens, tokenize_cached
from raydt.errors import ConfigError, EvalTimeout, RaydtError
from raydt.eval.protocol import EvalTask, evaluate
from raydt.fsutil import atomic_write_text
from raydt.losses import action_loss, cosine_cluster_loss, lambda_factor
from raydt.model.backbone import strip_prefixes
from raydt.model.clusters import cached_clusters
from raydt.model.dt import DecisionTransformer
from raydt.precision import (  # noqa: F401 (re-exported)
    compile_mode,
    cpu_has_native_bf16,
    optimizer_options,
    require_free,
    use_bf16,
)
from raydt.prepare import RunData, build_run_model, describe, needs, resolve_run_data, run_tokenizer
from raydt.pretrain.cache import resolve_backbone
from raydt.resources import gpu_share
from raydt.rundir import RunDir
from raydt.seeding import seed_everything, set_deterministic, stream_seed
from raydt.sinks import JsonlSink, MetricWindow, MultiSink, Sink, TensorBoardSink
from raydt.train.checkpoint import (
    load_checkpoint,
    restore_generator,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

Report = Callable[[int, dict[str, float], "Path | None"], None]


@dataclass
class RunContext:
    """Where this process sits in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Report | None = None
    """Called on every rank at every evaluation with (step, metrics, checkpoint path or None)."""
    log: Callable[[str], None] = print
    """Human-readable progress lines (rank 0 only)."""
    node: str | None = None
    """Ray node id of this process, when it runs under Ray (recorded in run_info.json)."""
    artifacts: list[Artifact] = field(default_factory=list)
    """The prepared inputs this run reads (:mod:`raydt.prepare`), recorded in run_info.json."""
    name: str | None = None
    """The run's name for experiment trackers (a sweep's trial name); None: its directory's."""
    group: str | None = None
    """The run's group label for experiment trackers (a trial's searched values, seed left out)."""
    location: str | None = None
    """Where the run is stored (a path or URI), which its tracker id derives from; None: its directory."""


def set_tf32(enabled: bool) -> tuple[str, str] | tuple[bool, bool]:
    """Allow (or forbid) TF32 tensor cores for fp32 matmuls and convolutions on CUDA (10-bit
    mantissa inputs, fp32 accumulation), process-wide; returns the previous setting for
    :func:`restore_tf32`. Through PyTorch's ``fp32_precision`` where it has one (2.9+: mixing
    it with the older ``allow_tf32`` flags is an error), else ``allow_tf32``. Settable and
    testable without a GPU."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        before: tuple = (matmul.fp32_precision, cudnn.fp32_precision)
        matmul.fp32_precision = cudnn.fp32_precision = "tf32" if enabled else "ieee"
    else:  # PyTorch < 2.9
        before = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = enabled
    return before


def restore_tf32(before: tuple[str, str] | tuple[bool, bool]) -> None:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision, cudnn.fp32_precision = before
    else:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def tf32_enabled() -> bool:
    matmul = torch.backends.cuda.matmul
    return matmul.fp32_precision == "tf32" if hasattr(matmul, "fp32_precision") else bool(matmul.allow_tf32)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls in full precision (no TF32) inside the block, as before it afterwards."""
    before = set_tf32(False)
    try:
        yield
    finally:
        restore_tf32(before)


def bound_gpu_memory(share: float, device: torch.device, set_fraction: Callable | None = None) -> bool:
    """Cap this process's CUDA caching allocator at ``share`` of ``device``'s memory, so
    trials sharing a GPU (resources.gpus_per_worker < 1) cannot starve each other; returns
    whether a cap was set. ``set_fraction`` stands in for torch's in CPU tests."""
    if device.type != "cuda" or share >= 1:
        return False
    (set_fraction or torch.cuda.set_per_process_memory_fraction)(share, device)
    return True


def check_mask_fits(cfg: ExperimentConfig, world_size: int, device: torch.device,
                    available: int | None = None) -> None:
    """Refuse a context length whose attention mask alone (one (3K, 3K) mask per window of a
    rank's batch, which the backbone's attention reads) exceeds the memory free on ``device``:
    a one-line error naming data.context_length instead of an allocation traceback or the
    OOM killer. A lower bound: the run needs more than this."""
    tokens, windows = 3 * cfg.data.context_length, cfg.train.batch_size // max(world_size, 1)
    require_free(windows * tokens * tokens, device, f"data.context_length={cfg.data.context_length}",  # bool masks
                 f"its attention masks alone ({windows} windows of {tokens}×{tokens} tokens)",
                 "lower data.context_length or train.batch_size", available)


def out_of_memory(cfg: ExperimentConfig, exc: BaseException) -> RaydtError:
    """A CUDA out-of-memory error as what to change: the same run would run out again."""
    share = gpu_share(cfg)
    where = f"its share of the GPU (resources.gpus_per_worker={share:g})" if share < 1 else "the GPU"
    return RaydtError(f"the model does not fit in {where} at train.batch_size={cfg.train.batch_size}, "
                      f"model.size={cfg.model.size}: raise resources.gpus_per_worker, or lower train.batch_size "
                      f"or data.context_length ({str(exc).splitlines()[0][:160]})")


def warmup_schedule(warmup_steps: int) -> Callable[[int], float]:
    """DT's schedule: the learning rate rises linearly to its peak over ``warmup_steps``."""
    return lambda step: min((step + 1) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0


def lr_schedule(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at each step: ``warmup`` (DT Gym, Reid) rises linearly over
    ``optim.warmup_steps`` and stays; ``warmup_cosine`` (DT Atari, trainer_atari.py) then
    follows half a cosine down to ``optim.min_lr_ratio`` at ``optim.decay_steps`` (null:
    the run's last step) and stays there (DT's own formula would rise again past it; its
    runs stop before)."""
    warm = warmup_schedule(optim.warmup_steps)
    if optim.schedule == "warmup":
        return warm
    end = optim.decay_steps or total_steps

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return warm(step)
        progress = min(1.0, (step - optim.warmup_steps) / max(1, end - optim.warmup_steps))
        return max(optim.min_lr_ratio, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def param_groups(model: nn.Module, decay: str, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters as AdamW groups: ``all`` decays every one (Reid, DT Gym);
    ``matmul_weights`` only the weights of Linear, Conv and GPT-2's Conv1D layers, not
    biases, norms, embedding tables or positions (DT Atari, model_atari.py)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if decay == "all":
        return [{"params": trainable, "weight_decay": weight_decay}]
    from transformers.pytorch_utils import Conv1D

    matmul = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, Conv1D))}
    return [{"params": [p for p in trainable if id(p) in matmul], "weight_decay": weight_decay},
            {"params": [p for p in trainable if id(p) not in matmul], "weight_decay": 0.0}]


class Objective(nn.Module):
    """L = L_action + λ1·L_cos + λ2·L_LM in one forward, so DDP sees every parameter it updates.

    ``centers`` (C, D) are the k-means centres of the backbone's token embeddings (λ1), fixed
    at the start of the run.
    """

    def __init__(self, model: DecisionTransformer, centers: torch.Tensor | None, variant: str) -> None:
        super().__init__()
        self.model = model
        self.variant = variant
        self.register_buffer("centers", centers)
        self.exact_losses = False
        """Compute the losses with TF32 off (set on CUDA devices, where TF32 may be on for the
        forward); a flag rather than a device test, so the CPU tests exercise it."""

    def forward(self, batch: Batch, text: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The unweighted losses: action, cos (with centres), lm (with text). The λ weights
        are applied by the caller, so a compiled forward does not depend on them (λ changes
        every step while it decays)."""
        untimed = None
        if self.centers is not None and self.variant != "paper":
            # Reid's code compares LN(token), before the timestep is added, with the clusters.
            tokens, token_mask, untimed = self.model.embed_untimed(
                batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
        else:
            tokens, token_mask = self.model.embed(batch.states, batch.actions, batch.returns_to_go,
                                                  batch.timesteps, batch.mask)  # (B, 3K, h), (B, 3K)
        pred = self.model.predict(tokens, token_mask)  # (B, K, act)
        # The losses in true fp32 whatever the forward's precision: autocast would run the
        # cosine loss's matmuls in bf16 even on fp32 inputs, and TF32 with 10-bit mantissas.
        with torch.autocast(tokens.device.type, enabled=False), \
                (exact_fp32() if self.exact_losses else contextlib.nullcontext()):
            out = {"action": action_loss(pred.float(), batch.actions, batch.mask)}
            if self.centers is not None:
                if untimed is None:  # the paper: the tokens the backbone sees, real ones only
                    out["cos"] = cosine_cluster_loss(tokens.float(), self.centers.float(), token_mask, "paper")
                else:  # the released code: every token, padding included
                    out["cos"] = cosine_cluster_loss(untimed.float(), self.centers.float(), None, self.variant)
        if text is not None:
            out["lm"] = self.model.backbone.lm_loss(text)
        return out


def weighted_total(losses: dict[str, torch.Tensor], lambda1: float, lambda2: float) -> torch.Tensor:
    """L = L_action + λ1·L_cos + λ2·L_LM of :meth:`Objective.forward`'s losses."""
    total = losses["action"]
    if "cos" in losses:
        total = total + lambda1 * losses["cos"]
    if "lm" in losses:
        total = total + lambda2 * losses["lm"]
    return total


class Trainer:
    """The pieces of one run, built once by the constructor; :meth:`fit` drives them.

    Reading order: the constructor builds data (``sampler``), model and objective
    (``module``, DDP-wrapped when there are several workers), optimizer and schedule;
    :meth:`fit` loops over :meth:`train_step`, and at logging and evaluation steps hands off
    to :meth:`_log_window`, :meth:`_evaluate_and_track` and :meth:`_save`.
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path, ctx: RunContext) -> None:
        self.config, self.run_dir, self.ctx = config, Path(run_dir), ctx
        self.files = RunDir(self.run_dir)
        self.step = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.best_score = -math.inf
        self.evals_since_best = 0
        self.text: TextSampler | None = None
        """Training text blocks for λ2 (None without co-training)."""
        self.held_text: torch.Tensor | None = None
        """Fixed held-out text blocks for eval/text_loss (None when not tracked)."""
        self._started = time.time()
        cfg = config
        # First of all: cuBLAS reads its workspace setting once, before any CUDA work.
        set_deterministic(cfg.train.deterministic)
        torch.set_num_threads(cfg.resources.cpus_per_worker)
        if cfg.resources.use_gpu:
            bound_gpu_memory(gpu_share(cfg), ctx.device)
        if cfg.train.batch_size % ctx.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} does not split evenly over "
                f"resources.num_workers={ctx.world_size}"
            )
        quiet: Callable[[str], None] = ctx.log if ctx.rank == 0 else (lambda _: None)
        data = resolve_run_data(cfg, log=quiet)
        self.env_id, self.targets = data.env_id, tuple(data.targets)
        self.needs = needs(cfg)
        """kind → what this run reads of each prepared input (:func:`raydt.prepare.needs`)."""
        pulled = artifacts.lookup("backbone", self.needs.get("backbone", ""))
        self.backbone_source = str(pulled) if pulled is not None else resolve_backbone(cfg.model.backbone, cfg.model, log=quiet)
        self._build_model(data, quiet)
        check_mask_fits(cfg, ctx.world_size, ctx.device)
        self._build_objectives(quiet)
        self.model.to(ctx.device)
        self.objective.to(ctx.device)
        self._share_constants()  # on the device: NCCL carries only CUDA tensors
        n_params = sum(p.numel() for p in self.model.parameters())
        self.compile_mode, why = compile_mode(cfg.train.compile, ctx.device.type, n_params, world_size=ctx.world_size)
        """torch.compile's mode for the training forward, or None (eager)."""
        quiet(f"train.compile={str(cfg.train.compile).lower()}: {why}")
        self.module = self._wrap(text_in_use=cfg.loss.lambda2 > 0)
        """The objective as stepped: ``objective`` itself, or its DDP wrapper."""
        # Ranks other than 0 wait for rank 0's evaluation in a collective. On the default
        # group (NCCL on GPUs) that wait would hit its timeout (30 min) in a long Atari
        # evaluation; a CPU group whose timeout is the evaluation budget carries it instead.
        self.wait_group = None
        if ctx.world_size > 1 and dist.is_initialized():
            # The grace lets rank 0 name an overrun first (it checks its evaluation's time).
            self.wait_group = dist.new_group(backend="gloo",
                                             timeout=timedelta(seconds=cfg.eval.timeout_s + EVAL_TIMEOUT_GRACE_S))
        self.sampler = self._build_sampler(data.trajectories)
        self._build_optimizer()
        # Weights are built from the same seed on every rank; from here each rank draws its
        # own dropout masks (the global torch/CUDA, NumPy and Python streams), or DDP would
        # apply one mask to every rank's different windows.
        seed_everything(stream_seed(cfg.train.seed, ctx.rank, "dropout"))
        self.setup_seconds = time.time() - self._started
        """Wall seconds of this session's set-up (dataset, model, objectives), for timing.json."""

    def eval_task(self) -> EvalTask:
        """What evaluating this run's policy needs besides the model."""
        return EvalTask(self.env_id, self.targets, self.sampler.state_mean, self.sampler.state_std,
                        self.config.data.reward_scale, self.config.eval.max_steps)

    def _build_model(self, data: RunData, log: Callable[[str], None]) -> None:
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        self.model, report = build_run_model(self.config, data, self.backbone_source, log=log)
        log(report.summary())

    def _build_sampler(self, traj) -> WindowSampler | FrameWindowSampler:
        cfg, ctx = self.config, self.ctx
        # Different windows on every rank; the seed stays a function of (seed, rank).
        seed = stream_seed(cfg.train.seed, ctx.rank, "windows")
        if isinstance(traj, AtariTrajectories):
            return FrameWindowSampler(traj, cfg.data.context_length, cfg.data.reward_scale, device=ctx.device,
                                      seed=seed)
        return WindowSampler(traj, cfg.data.context_length, cfg.data.reward_scale, cfg.data.normalize_states,
                             device=ctx.device, seed=seed)

    def _build_optimizer(self) -> None:
        cfg, device = self.config, self.ctx.device
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.optim.decay, cfg.optim.weight_decay),
                                           lr=cfg.optim.lr, eps=cfg.optim.eps, betas=cfg.optim.betas,
                                           **optimizer_options(device.type))
        # TF32 tensor cores for the fp32 matmuls autocast leaves (Ampere and later), only when
        # the run asked for reduced precision: train.precision=fp32 means IEEE fp32 throughout,
        # evaluation included. Set either way: an earlier run in this process may have set it.
        set_tf32(cfg.train.precision != "fp32")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(cfg.optim, cfg.train.steps))

    def _wrap(self, text_in_use: bool) -> nn.Module:
        """The objective as stepped: itself, or under DDP across the run's workers, compiled
        when ``train.compile`` asks (the model object itself, which checkpoints and evaluation
        use, stays eager)."""
        module = self._distribute(text_in_use)
        if self.compile_mode is None:
            return module
        return torch.compile(module, mode=self.compile_mode)

    def _distribute(self, text_in_use: bool) -> nn.Module:
        if self.ctx.world_size == 1:
            return self.objective
        device = self.ctx.device
        return nn.parallel.DistributedDataParallel(
            self.objective, device_ids=[device.index] if device.type == "cuda" else None,
            # While λ2 > 0 the LM forward may be skipped on a step (λ2 decays to 0).
            find_unused_parameters=text_in_use,
            # The only buffers are constants (λ1's centres, the text positions): no re-broadcast.
            broadcast_buffers=False,
        )

    def _text_done(self) -> None:
        """λ2 has decayed to 0 for good: the token table leaves training, and DDP is rebuilt
        without it and without the per-step search for unused parameters."""
        self.model.backbone.token_embeddings.weight.requires_grad_(False)
        self.module = self._wrap(text_in_use=False)
        self.text = None

    def _build_objectives(self, log: Callable[[str], None]) -> None:
        """λ1's cluster centres and λ2's text, when the run uses them."""
        cfg, loss = self.config, self.config.loss
        backbone = self.model.backbone
        centers = None
        if loss.lambda1 > 0:
            unit, means = cached_clusters(backbone.token_embeddings.weight, loss.kmeans_clusters,
                                          seed=0, log=log)
            centers = unit if loss.cosine_variant == "paper" else means
        self.objective = Objective(self.model, centers, loss.cosine_variant)
        self.objective.exact_losses = self.ctx.device.type == "cuda"
        if not (loss.lambda2 > 0 or loss.track_text_loss):
            return
        tokenizer = run_tokenizer(cfg, self.backbone_source, backbone.token_embeddings.num_embeddings)
        pulled = artifacts.lookup("text", self.needs["text"])
        ids = np.load(pulled) if pulled is not None else tokenize_cached(loss.text, tokenizer, log=log)
        train_ids, held_ids = split_tokens(ids)
        block = loss.lm_block_size
        limit = backbone.max_text_length()
        if limit is not None and block > limit:
            log(f"loss.lm_block_size={block} exceeds the backbone's {limit} positions; using {limit}")
            block = limit
        # Draw block+1 ids: the LM loss predicts ids[1:] from ids[:-1].
        if loss.lambda2 > 0:
            self.text = TextSampler(train_ids, block, device=self.ctx.device,
                                    seed=stream_seed(cfg.train.seed, self.ctx.rank, "text"))
            if cfg.model.freeze == "none":
                backbone.token_embeddings.weight.requires_grad_(True)  # the tied head learns too
        held = TextSampler(held_ids, min(block, len(held_ids) - 2), device=self.ctx.device)
        self.held_text = held.fixed_blocks(32)

    def _share_constants(self) -> None:
        """Rank 0's λ1 centres and text positions on every rank, once. They are buffers, which
        DDP does not re-broadcast here (``broadcast_buffers=False``): built on different
        nodes they could differ in the last bits, and then ranks would optimise different
        objectives."""
        if self.ctx.world_size == 1 or not dist.is_initialized():
            return
        for tensor in (self.objective.centers, getattr(self.model.backbone, "text_positions", None)):
            if tensor is not None:
                dist.broadcast(tensor, src=0)

    def lambdas(self) -> tuple[float, float]:
        """(λ1, λ2) in force at the current step."""
        loss = self.config.loss
        factor = lambda_factor(loss.lambda_schedule, self.step, loss.lambda_decay_steps)
        return loss.lambda1 * factor, loss.lambda2 * (factor if loss.lambda2_schedule == "with_lambda1" else 1.0)

    # ----------------------------------------------------------------------------------

    def train_step(self, batch: Batch, lambda1: float = 0.0, lambda2: float = 0.0) -> dict[str, torch.Tensor]:
        """One optimizer step with the given λ weights (see :meth:`lambdas`); returns the
        losses and the pre-clip gradient norm (device tensors)."""
        text = self.text.sample(self.config.loss.lm_batch_size) if self.text is not None and lambda2 > 0 else None
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed
        with self.autocast():
            losses = dict(self.module(batch, text))
        losses["total"] = weighted_total(losses, lambda1, lambda2)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        clip = self.config.optim.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        out = {name: value.detach() for name, value in losses.items()}
        out["grad_norm"] = norm.detach()
        return out

    def autocast(self) -> torch.autocast:
        """bf16 autocast of the training forward per ``train.precision`` (losses stay fp32)."""
        device = self.ctx.device
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        enabled = use_bf16(self.config.train.precision, device.type, capability)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def text_loss(self) -> float:
        """Held-out LM loss of the backbone on the fixed text blocks."""
        assert self.held_text is not None
        self.model.eval()
        total = sum(float(self.model.backbone.lm_loss(chunk)) * len(chunk)
                    for chunk in self.held_text.split(8))
        self.model.train()
        return total / len(self.held_text)

    def evaluate(self) -> dict[str, float]:
        cfg = self.config
        # The same episode seeds at every evaluation: checkpoints are compared on equal
        # terms, which takes the seed-to-seed noise out of learning curves.
        metrics, _ = evaluate(self.model, self.eval_task(), cfg.eval.episodes, cfg.train.seed, self.ctx.device)
        if self.held_text is not None:
            metrics["eval/text_loss"] = self.text_loss()
        return metrics

    # ----------------------------------------------------------------------------------

    def run_info(self) -> dict[str, Any]:
        """Where and with what this run (or its latest resumption) ran."""
        import platform

        from raydt import __version__

        return {
            "hostname": platform.node(),
            "ray_node": self.ctx.node,
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "torch": torch.__version__,
            "raydt": __version__,
            "python": platform.python_version(),
            "resumed_at_step": self.step,
            # What the run read, by content: every trial of a sweep names the same bytes.
            "artifacts": describe(self.ctx.artifacts),
            # Versions, source commit, CPU, threads and GPUs, which `raydt reproduce` checks.
            "record": record.collect(),
        }

    def rank_state(self) -> dict[str, Any]:
        """This rank's random streams: the global RNGs (dropout) and its samplers'."""
        return {"rng": rng_state(), "sampler_rng": self.sampler.rng_state(),
                "text_rng": self.text.generator.get_state() if self.text is not None else None}

    def gather_rank_states(self) -> list[dict[str, Any]] | None:
        """Every rank's :meth:`rank_state`, on rank 0 (None elsewhere): a collective, called
        by all ranks at the same step, on the CPU group."""
        own = self.rank_state()
        if self.ctx.world_size == 1 or not dist.is_initialized():
            return [own]
        states: list[Any] | None = [None] * self.ctx.world_size if self.ctx.rank == 0 else None
        dist.gather_object(own, states, dst=0, group=self.wait_group)
        return states

    def checkpoint_payload(self, rank_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """What a checkpoint holds; ``rank_states`` (from :meth:`gather_rank_states`) lets
        every rank of a resumed run continue its own random streams."""
        return {
            "model": strip_prefixes(self.model.state_dict()),
            "model_args": self.model.args.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": rng_state(),
            "sampler_rng": self.sampler.rng_state(),
            "state_mean": torch.from_numpy(self.sampler.state_mean),
            "state_std": torch.from_numpy(self.sampler.state_std),
            "reward_scale": self.config.data.reward_scale,
            "env_id": self.env_id,
            "target_returns": list(self.targets),
            "config": to_dict(self.config),
            "perf": {"train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds},
            "best_score": self.best_score,
            "evals_since_best": self.evals_since_best,
            # λ2 moves the token table; a resumed run keeps the centres it started with.
            "cluster_centers": self.objective.centers,
            "text_rng": self.text.generator.get_state() if self.text is not None else None,
            "rank_states": rank_states if rank_states is not None else [self.rank_state()],
        }

    def restore(self, payload: dict[str, Any]) -> list[str]:
        """Continue from a checkpoint ``payload`` (read to the CPU by :func:`load_checkpoint`):
        weights and optimizer state are copied onto this run's device, each RNG state is
        restored on its own device. Returns notes on state that did not fit this set-up (a
        checkpoint moved between devices), which the caller logs."""
        self.model.load_state_dict(strip_prefixes(payload["model"]))
        self.optimizer.load_state_dict(payload["optimizer"])  # moves its state to each parameter's device
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = int(payload["step"])
        notes = self._restore_streams(payload)
        self.train_seconds = float(payload["perf"]["train_seconds"])
        self.eval_seconds = float(payload["perf"]["eval_seconds"])
        self.best_score = float(payload["best_score"])
        self.evals_since_best = int(payload["evals_since_best"])
        if payload.get("cluster_centers") is not None:
            self.objective.centers = payload["cluster_centers"].to(self.ctx.device)
        return [n for n in notes if n]

    def _restore_streams(self, payload: dict[str, Any]) -> list[str | None]:
        """Each rank continues its own random streams when the checkpoint holds one state per
        rank of this run's size; otherwise (an older checkpoint, another worker count) rank 0
        continues rank 0's and every other rank starts fresh streams seeded by (seed, rank,
        step), different on every rank, and says so."""
        seed, rank, step = self.config.train.seed, self.ctx.rank, self.step
        states = payload.get("rank_states") or []
        notes: list[str | None] = []
        if len(states) == self.ctx.world_size:
            own = states[rank]
        elif rank == 0:
            own = {"rng": payload["rng"], "sampler_rng": payload["sampler_rng"], "text_rng": payload.get("text_rng")}
            if len(states) > 1 or self.ctx.world_size > 1:
                notes.append(f"the checkpoint holds the random streams of {max(len(states), 1)} rank(s) and this run "
                             f"has {self.ctx.world_size}: ranks other than 0 continue with fresh streams")
        else:
            own = None
        if own is None:
            seed_everything(stream_seed(seed, rank, "resumed_dropout", step))
            self.sampler.generator.manual_seed(stream_seed(seed, rank, "resumed_windows", step))
        else:
            notes += set_rng_state(own["rng"])
            notes.append(restore_generator(self.sampler.generator, own["sampler_rng"],
                                           stream_seed(seed, rank, "resumed_windows", step), "window sampler"))
        if self.text is not None:
            text_fresh = stream_seed(seed, rank, "resumed_text", step)
            if own is not None and own.get("text_rng") is not None:
                notes.append(restore_generator(self.text.generator, own["text_rng"], text_fresh, "text sampler"))
            else:
                self.text.generator.manual_seed(text_fresh)
        return notes

    # ----------------------------------------------------------------------------------

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict[str, float]:
        """Train to ``train.steps`` (or early stop) and return the last metrics. ``stop_after``
        ends the loop after that step, as if the run were cut there: the learning-rate
        schedule and the logging and evaluation steps stay those of ``train.steps``
        (``raydt reproduce --steps``)."""
        cfg, ctx = self.config, self.ctx
        lead = ctx.rank == 0
        if resume:
            self._resume()
            if self.step >= cfg.train.steps:
                self._report_finished()
        sink = self._open_sink(resume) if lead else Sink()
        last: dict[str, float] = {}
        window = MetricWindow()
        tick = time.perf_counter()
        log_tick, log_step = tick, self.step
        session = (tick, self.train_seconds, self.eval_seconds)
        per_rank = cfg.train.batch_size // ctx.world_size
        stop = False
        end = cfg.train.steps if stop_after is None else min(stop_after, cfg.train.steps)
        try:
            self._keep_checkpoint()  # step 0: the weights before fine-tuning
            while self.step < end and not stop:
                lambda1, lambda2 = self.lambdas()
                if self.text is not None and lambda2 == 0 and cfg.loss.lambda_schedule == "linear":
                    self._text_done()  # a linear schedule stays at 0
                try:
                    window.add(self.train_step(self.sampler.sample(per_rank), lambda1, lambda2))
                except torch.cuda.OutOfMemoryError as exc:
                    raise out_of_memory(cfg, exc) from None
                self.step += 1
                self._keep_checkpoint()
                at_log = self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps
                at_eval = self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps
                if not (at_log or at_eval):
                    continue
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                now = time.perf_counter()
                self.train_seconds += now - tick
                metrics = self._log_window(window, (lambda1, lambda2), (self.step - log_step) / max(now - log_tick, 1e-9))
                checkpoint = None
                rank_states = None
                if at_eval:
                    stop = self._evaluate_and_track(metrics)
                    rank_states = self.gather_rank_states()
                metrics["perf/total_seconds"] = self.train_seconds + self.eval_seconds
                if lead:
                    sink.log(self.step, metrics)
                    eta = eta_seconds(self.step, cfg.train.steps, cfg.train.eval_every, self.train_seconds,
                                      self.eval_seconds)
                    ctx.log(_progress_line(self.step, cfg.train.steps, metrics, eta))
                    # The checkpoint after the row: a run killed between the two resumes from
                    # the previous checkpoint and logs this evaluation again, never skips it.
                    if at_eval:
                        checkpoint = save_checkpoint(self.files.last, self.checkpoint_payload(rank_states))
                if at_eval and ctx.report is not None:
                    ctx.report(self.step, metrics, checkpoint)
                last = metrics
                tick = log_tick = time.perf_counter()
                log_step = self.step
            if lead:
                final = {k: v for k, v in last.items() if k.startswith("eval/")}
                sink.hparams(_flat_params(cfg), final | {"step": self.step})
                self._write_timing(*session)
        finally:
            sink.close()
        return {"step": self.step, **last}

    def _resume(self) -> None:
        """Continue from the run directory's last checkpoint (every rank reads it)."""
        path, ctx = self.files.last, self.ctx
        if not path.is_file() and ctx.rank > 0:
            raise RaydtError(
                f"rank {ctx.rank} cannot read the checkpoint rank 0 resumes from ({path} is not on "
                "this node): a run whose workers span nodes needs a run directory every node shares "
                "(NFS) or URI storage (--out s3://…)"
            )
        if not path.is_file():
            raise RaydtError(f"--resume: {path} not found; run without --resume to start afresh")
        notes = self.restore(load_checkpoint(path))
        if ctx.rank == 0:
            ctx.log(f"resumed from {path} at step {self.step}")
            for note in notes:
                ctx.log(f"note: {note}")

    def _report_finished(self) -> None:
        """A run resumed at its last step has nothing left to train; its last evaluation goes
        to the reporter once more. (A sweep whose driver was lost after the run ended but
        before Tune recorded it restarts the trial, and Tune needs a result from it.)"""
        if self.ctx.report is None:
            return
        metrics: dict[str, float] = {}
        if self.ctx.rank == 0:
            evaluated = [r for r in self.files.read_metrics() if any(k.startswith("eval/") for k in r)]
            metrics = {k: v for k, v in (evaluated[-1] if evaluated else {}).items() if k != "step"}
        self.ctx.report(self.step, metrics, None)

    def _open_sink(self, resume: bool) -> Sink:
        """Rank 0 writes the config, the run's facts and the metric files (truncated to the
        checkpoint's step on resume, so no row is logged twice)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.files.config, to_yaml(self.config))
        atomic_write_text(self.files.run_info, json.dumps(self.run_info(), indent=1))
        sinks: list[Sink] = [JsonlSink(self.files.metrics, resume_step=self.step if resume else None),
                             TensorBoardSink(self.run_dir, purge_step=self.step + 1 if resume else None)]
        from raydt.trackers import enabled, identity, open_trackers

        if enabled(self.config.log):
            ctx = self.ctx
            who = identity(ctx.location or str(self.run_dir.resolve()), ctx.name or self.run_dir.name, ctx.group)
            sinks += open_trackers(self.config, self.run_dir, who, resume)
        return MultiSink(*sinks)

    def _keep_checkpoint(self) -> None:
        """A checkpoint of this step for analyses, when ``train.keep_checkpoints`` lists it."""
        if self.ctx.rank == 0 and self.step in self.config.train.keep_checkpoints:
            save_checkpoint(self.files.checkpoint(self.step), self.checkpoint_payload())

    def _log_window(self, window: MetricWindow, lambdas: tuple[float, float], steps_per_second: float) -> dict[str, float]:
        """The training metrics of the window since the last logging step (one host sync)."""
        cfg = self.config
        means = window.means(finite="total", what="training", step=self.step)
        metrics = {
            "train/loss": means["total"],
            ("train/action_ce" if self.model.args.discrete_actions else "train/action_mse"): means["action"],
            "train/grad_norm": means["grad_norm"],
            "train/lr": self.scheduler.get_last_lr()[0],
            "perf/train_seconds": self.train_seconds,
            "perf/steps_per_second": steps_per_second,
        }
        if cfg.loss.lambda1 > 0:
            metrics["train/loss_cos"] = means["cos"]
            metrics["train/lambda1"] = lambdas[0]
        if cfg.loss.lambda2 > 0:
            if "lm" in means:  # text is drawn only while λ2 is above 0
                metrics["train/loss_lm"] = means["lm"]
            metrics["train/lambda2"] = lambdas[1]
        return metrics

    def _evaluate_and_track(self, metrics: dict[str, float]) -> bool:
        """Rank 0 evaluates into ``metrics`` and tracks the best score; returns whether to
        stop early, the same decision on every rank."""
        stop = False
        if self.ctx.rank == 0:
            started = time.perf_counter()
            metrics.update(self.evaluate())
            took = time.perf_counter() - started
            self.eval_seconds += took
            limit = self.config.eval.timeout_s
            if self.ctx.world_size > 1 and took > limit:
                raise EvalTimeout(f"the evaluation at step {self.step} took {took:.0f} s, more than "
                                  f"eval.timeout_s={limit} that the other ranks wait; raise eval.timeout_s, or "
                                  "evaluate fewer episodes (eval.episodes) or shorter ones (eval.max_steps)")
            score = metrics.get("eval/normalized_score", metrics["eval/return_mean"])
            if score > self.best_score:
                self.best_score, self.evals_since_best = score, 0
            else:
                self.evals_since_best += 1
            metrics["eval/best_normalized_score" if "eval/normalized_score" in metrics
                    else "eval/best_return"] = self.best_score
            patience = self.config.train.early_stop_patience
            stop = bool(patience) and self.evals_since_best >= patience
        metrics["perf/eval_seconds"] = self.eval_seconds
        return self._agree(stop)

    def _write_timing(self, loop_started: float, session_train: float, session_eval: float) -> None:
        """Where this session's wall time went (bench/sweep_efficiency.py reads it)."""
        atomic_write_text(self.files.timing, json.dumps({
            "started": self._started, "finished": time.time(),
            "setup_seconds": self.setup_seconds,
            "loop_seconds": time.perf_counter() - loop_started,
            "train_seconds": self.train_seconds - session_train,
            "eval_seconds": self.eval_seconds - session_eval,
            # What a GPU share must hold (the caching allocator's peak; bench/gpu_sweep.py reads it).
            "peak_device_memory_bytes": peak_device_memory(self.ctx.device),
        }, indent=1))

    def _agree(self, stop: bool) -> bool:
        """Rank 0's early-stopping decision, on every rank (the others wait here while rank 0
        evaluates, on the CPU group sized to the evaluation budget)."""
        if self.ctx.world_size == 1:
            return stop
        return agree_with_rank0(stop, self.wait_group, waiting_for=f"rank 0's evaluation at step {self.step}",
                                timeout_s=self.config.eval.timeout_s + EVAL_TIMEOUT_GRACE_S)


def peak_device_memory(device: torch.device) -> int | None:
    """Peak bytes this process's CUDA caching allocator reserved on ``device`` (None off CUDA)."""
    return int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None


EVAL_TIMEOUT_GRACE_S = 60
"""Seconds the other ranks wait past ``eval.timeout_s`` before they give up on rank 0."""


def agree_with_rank0(flag: bool, group: Any = None, waiting_for: str = "", timeout_s: float | None = None) -> bool:
    """Rank 0's ``flag`` on every rank of ``group`` (a CPU/gloo group; None: a fresh one), so
    that all ranks take the same branch (stop early, resume or start afresh). A wait that
    runs into the group's timeout (``timeout_s``) is :class:`EvalTimeout`, naming
    ``waiting_for`` (a permanent error: the same evaluation would overrun again)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    own = group is None
    group = group if group is not None else dist.new_group(backend="gloo")
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)  # a CPU tensor: gloo
    started = time.monotonic()
    try:
        dist.broadcast(value, src=0, group=group)
    except RuntimeError as exc:  # gloo's timeout (DistBackendError), or a peer that went away
        waited = time.monotonic() - started
        if timeout_s is not None and waited >= 0.95 * timeout_s:
            raise EvalTimeout(f"rank {dist.get_rank()} waited {waited:.0f} s for {waiting_for}, past "
                              f"eval.timeout_s (+{EVAL_TIMEOUT_GRACE_S} s); raise eval.timeout_s, or evaluate "
                              "fewer episodes (eval.episodes) or shorter ones (eval.max_steps)") from exc
        raise
    if own:
        dist.destroy_process_group(group)
    return bool(value.item())


def _flat_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (``log.wandb.project``); lists as strings."""
    from raydt.rundir import flatten

    return {k: str(list(v)) if isinstance(v, tuple) else v for k, v in flatten(to_dict(cfg)).items()}


def evaluations_by(step: int, total: int, every: int) -> int:
    """Evaluations a run has made by ``step``: one every ``every`` steps and one at the end."""
    return step // every + (1 if step == total and total % every else 0)


def eta_seconds(step: int, total: int, every: int, train_seconds: float, eval_seconds: float) -> float | None:
    """Seconds left to ``total`` steps at this run's pace so far: training at its seconds
    per step, plus each evaluation still due at its mean evaluation time (None before the
    first step)."""
    if step <= 0:
        return None
    done = evaluations_by(step, total, every)
    left = evaluations_by(total, total, every) - done
    per_eval = eval_seconds / done if done else 0.0
    return (total - step) * train_seconds / step + left * per_eval


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _progress_line(step: int, total: int, m: dict[str, float], eta: float | None = None) -> str:
    line = f"step {step}/{total}  loss {m['train/loss']:.4f}  {m['perf/steps_per_second']:.1f} steps/s"
    if "eval/normalized_score" in m:
        line += f"  score {m['eval/normalized_score']:.1f} (best {m['eval/best_normalized_score']:.1f})"
    elif "eval/return_mean" in m:
        line += f"  return {m['eval/return_mean']:.1f}"
    if eta is not None and step < total:
        line += f"  eta {_duration(eta)}"
    return line


def fit(config: ExperimentConfig, run_dir: Path, ctx: RunContext | None = None, resume: bool = False,
        stop_after: int | None = None) -> dict[str, float]:
    """Build a :class:`Trainer` for ``config`` and run it (to ``stop_after``, see
    :meth:`Trainer.fit`); the run directory's contract is ``config.resolved.yaml``,
    ``metrics.jsonl``, TensorBoard events and ``checkpoints/``."""
    return Trainer(config, Path(run_dir), ctx or RunContext()).fit(resume=resume, stop_after=stop_after)
