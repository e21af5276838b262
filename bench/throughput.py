"""Training throughput: raydt's training step vs Hugging Face's ``DecisionTransformerModel``
trained with the straightforward loop, same sizes, same data, same invocation.

The baseline is what the published code does: per-sample window slicing in Python (the
original DT ``get_batch``), host-to-device copies of the batch, the HF model's forward
(which also predicts states and returns), masked MSE, backward, clipping, AdamW. raydt's
side is its real ``Trainer.train_step`` fed by its real sampler. Reported per size: steps/s,
tokens/s (batch × 3K tokens per step), the ratio, where raydt's step time goes (sampling,
forward + backward, clipping + optimizer, timed separately) and, on a GPU, model FLOPs
utilisation.

    python -m bench.throughput [--sizes dt 3m 18m 84m] [--batch-size 64] [--context-length 20]
    python -m bench.throughput --device cuda --compile     # on a GPU, torch.compile on top
    python -m bench.throughput --smoke-test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import record
from bench.sampling import naive_batch
from raydt.data.sources import load_dataset
from raydt.train.loop import weighted_total

REPO = Path(__file__).resolve().parents[1]
DATASET = "generated:hopper-medium?steps=100000"
STEPS = {"dt": 30, "3m": 12, "18m": 5, "84m": 3}
"""Timed steps per size on a CPU (after warm-up); a GPU gets 10× as many."""
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0}
"""Dense bf16 tensor-core peaks, for model FLOPs utilisation."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops_per_step(n_params: int, n_layer: int, n_embd: int, tokens: int, seq: int) -> float:
    """Training FLOPs of one step (forward + backward = 3× forward): 6·N per token for the
    matrix multiplies of N weights plus 12·L·T·d per token for attention scores and values
    (PaLM's count). N counts matmul weights only (:func:`matmul_parameters`)."""
    return 6.0 * n_params * tokens + 12.0 * n_layer * seq * n_embd * tokens


def matmul_parameters(model: nn.Module) -> int:
    """Weights that multiply every token: linear layers (Hugging Face's Conv1D included).
    Embedding tables (timesteps, GPT-2's unused token and position tables) are lookups and
    cost no FLOPs; counting them would inflate MFU by up to 50M "parameters" for GPT-2."""
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))


def raydt_trainer(size: str, batch: int, k: int, device: torch.device, threads: int, compile_: bool,
                  dataset: str = DATASET, precision: str = "auto", extra: tuple[str, ...] | list[str] = ()):
    from raydt.config import load_config
    from raydt.train.loop import RunContext, Trainer

    cfg = load_config(REPO / "tune_specs/runs/hopper_medium_dt.yaml", [
        f"data.dataset={dataset}", f"data.context_length={k}", f"model.size={size}",
        f"train.batch_size={batch}", f"resources.cpus_per_worker={threads}", f"train.precision={precision}",
        # --compile: CUDA graphs on a GPU (what train.compile=auto picks where it wins).
        f"train.compile={'reduce-overhead' if compile_ else 'false'}", *extra,
    ])
    return Trainer(cfg, Path("/nonexistent-bench-run"), RunContext(device=device, log=lambda _: None))


def time_raydt(trainer, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    """Seconds per step end to end, then the three parts timed separately."""
    for _ in range(2 if trainer.compile_mode is None else 5):  # warm-up: allocator, kernels, compilation, graph capture
        trainer.train_step(trainer.sampler.sample(batch))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(trainer.sampler.sample(batch))
    _sync(device)
    step_s = (time.perf_counter() - start) / steps

    start = time.perf_counter()
    batches = [trainer.sampler.sample(batch) for _ in range(steps)]
    _sync(device)
    sample_s = (time.perf_counter() - start) / steps
    fwd_bwd = opt = 0.0
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for b in batches:
        t0 = time.perf_counter()
        if trainer.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with trainer.autocast():
            losses = trainer.module(b, None)
        trainer.optimizer.zero_grad(set_to_none=True)
        weighted_total(losses, 0.0, 0.0).backward()
        _sync(device)
        t1 = time.perf_counter()
        nn.utils.clip_grad_norm_(params, trainer.config.optim.grad_clip)
        trainer.optimizer.step()
        _sync(device)
        fwd_bwd += t1 - t0
        opt += time.perf_counter() - t1
    return {"step": step_s, "sampling": sample_s, "forward_backward": fwd_bwd / steps, "optimizer": opt / steps}


def hf_model(trainer, device: torch.device) -> nn.Module:
    """HF's Decision Transformer with raydt's dimensions for the same data."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    args = trainer.model.args
    hf = trainer.model.backbone.hf.config
    config = DecisionTransformerConfig(
        state_dim=args.obs_dim, act_dim=args.act_dim, hidden_size=hf.n_embd, n_layer=hf.n_layer,
        n_head=hf.n_head, n_inner=4 * hf.n_embd, max_ep_len=args.max_timestep,
        activation_function=hf.activation_function, action_tanh=True,
        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
    )
    torch.manual_seed(0)
    return DecisionTransformerModel(config).to(device).train()


def time_baseline(model: nn.Module, trainer, traj, batch: int, k: int, steps: int, device: torch.device) -> float:
    """Seconds per step of the straightforward loop."""
    sampler = trainer.sampler
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    scale = trainer.config.data.reward_scale

    def step() -> None:
        s, a, r, t, m = naive_batch(traj, rng, batch, k, scale, sampler.state_mean, sampler.state_std)
        s, a, r, m = (x.to(device) for x in (s, a, r, m))
        t = t.long().to(device)
        out = model(states=s, actions=a, returns_to_go=r, timesteps=t, attention_mask=m, return_dict=True)
        real = m.reshape(-1) > 0
        loss = ((out.action_preds.reshape(-1, a.shape[-1])[real] - a.reshape(-1, a.shape[-1])[real]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()

    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["dt", "3m", "18m", "84m"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--context-length", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for both sides")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per size (default: by size)")
    parser.add_argument("--compile", action="store_true", help="torch.compile raydt's objective (mode reduce-overhead: CUDA graphs on a GPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="raydt's train.precision (auto: bf16 on GPUs, fp32 on CPUs); the baseline stays fp32")
    parser.add_argument("--name", default=None, help="results file (default throughput_<device>)")
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes, batch = (["dt"], 8) if args.smoke_test else (args.sizes, args.batch_size)
    k = args.context_length
    rows = []
    for size in sizes:
        dataset = "generated:hopper-medium?steps=3000" if args.smoke_test else DATASET
        trainer = raydt_trainer(size, batch, k, device, args.threads, args.compile, dataset, args.precision)
        steps = 1 if args.smoke_test else args.steps or STEPS[size] * (10 if device.type == "cuda" else 1)
        ours = time_raydt(trainer, batch, steps, device)
        base = time_baseline(hf_model(trainer, device), trainer, load_dataset(dataset), batch, k, steps, device)
        hf = trainer.model.backbone.hf.config
        n_params = sum(p.numel() for p in trainer.model.parameters())
        tokens = batch * 3 * k
        row = {
            "size": size, "parameters": n_params, "timed_steps": steps, "tokens_per_step": tokens,
            "raydt_steps_per_second": 1 / ours["step"], "raydt_tokens_per_second": tokens / ours["step"],
            "baseline_steps_per_second": 1 / base, "baseline_tokens_per_second": tokens / base,
            "speedup": base / ours["step"],
            "raydt_seconds_per_step": {k_: v for k_, v in ours.items()},
        }
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
            flops = model_flops_per_step(matmul_parameters(trainer.model), hf.n_layer, hf.n_embd, tokens, 3 * k)
            row["model_tflops_per_second"] = flops / ours["step"] / 1e12
            if peak:
                row["mfu"] = row["model_tflops_per_second"] / peak
        rows.append(row)
        parts = ours
        print(f"{size:>4} ({n_params / 1e6:5.1f}M): raydt {row['raydt_steps_per_second']:7.2f} steps/s "
              f"{row['raydt_tokens_per_second']:10,.0f} tokens/s | HF DT loop {row['baseline_steps_per_second']:7.2f} steps/s "
              f"| speedup {row['speedup']:.2f}x", flush=True)
        print(f"      raydt step {parts['step'] * 1e3:.1f} ms = sampling {parts['sampling'] * 1e3:.2f} ms, "
              f"forward+backward {parts['forward_backward'] * 1e3:.1f} ms, clip+optimizer {parts['optimizer'] * 1e3:.1f} ms"
              + (f"; MFU {row['mfu']:.1%}" if "mfu" in row else ""), flush=True)
        del trainer
    if not args.smoke_test:
        name = args.name or f"throughput_{device.type}" + ("_compile" if args.compile else "") + (
            f"_{args.precision}" if args.precision != "auto" else "")
        print(record(name, {"device": str(device), "batch_size": batch, "context_length": k,
                            "threads": args.threads, "compile": args.compile, "precision": args.precision,
                            "sizes": rows}))


if __name__ == "__main__":
    main()
