"""The analyses on a run directory: kept checkpoints in, JSON and PNG under RUN_DIR/analysis/.

"Pre" is a checkpoint kept before fine-tuning (``train.keep_checkpoints: [0, ...]``), "post"
the last one unless another kept step is named. Activations and attention are measured on a
fixed sample of full K-step windows of the run's own dataset (seeded), so pre and post see
the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydt.analysis import (
    attention_distance,
    attention_distance_single_head,
    cka_matrix,
    linear_cka,
    parameter_change,
)
from raydt.errors import ConfigError, RaydtError
from raydt.figures import pyplot, save_figure
from raydt.fsutil import atomic_write_text
from raydt.model.backbone import strip_prefixes
from raydt.rundir import RunDir, run_paths
from raydt.train.checkpoint import load_checkpoint

TOKENS = ("return", "state", "action")
"""The last time step's three tokens, in window order."""

MI_LABELS = {"I_XT": "I(X;T)", "I_YT": "I(Y;T)"}


def checkpoint_path(run_dir: Path, step: int | str) -> Path:
    """The kept checkpoint of ``step`` ("last" for the final one), or a clear error."""
    run = RunDir(run_dir)
    path = run.checkpoint(step)
    if not path.is_file():
        kept = run.kept_steps()
        raise RaydtError(
            f"{path} not found; this run kept steps {kept or 'none'} and 'last'. Keep more with "
            "train.keep_checkpoints: [0, ...] (0 = before fine-tuning) and train again"
        )
    return path


def run_dirs(root: Path, steps: list[int | str]) -> list[Path]:
    """The run directories an analysis covers: ``root`` itself when it is a run, else every
    run below it (a sweep's trials). Each must hold the checkpoints of ``steps``; the error
    names every one that does not, before anything is measured."""
    runs = run_paths(root)
    problems = []
    for run in runs:
        for step in dict.fromkeys(steps):
            try:
                checkpoint_path(run, step)
            except RaydtError as exc:
                problems.append(str(exc))
    if problems:
        raise RaydtError("\n".join(problems))
    return runs


def load_model_at(run_dir: Path, step: int | str):
    from raydt.model.dt import ModelArgs, rebuild_model

    payload = load_checkpoint(checkpoint_path(run_dir, step))
    model = rebuild_model(ModelArgs(**payload["model_args"]))
    model.load_state_dict(strip_prefixes(payload["model"]))
    return model.eval(), payload


def fixed_windows(payload: dict[str, Any], n: int, seed: int = 0):
    """``n`` full windows (no padding) of the run's dataset, the same for every checkpoint."""
    from raydt.data.sampler import WindowSampler
    from raydt.data.sources import load_dataset

    cfg = payload["config"]
    traj = load_dataset(cfg["data"]["dataset"], log=lambda _: None)
    if hasattr(traj, "frames"):
        raise RaydtError("raydt analyze measures vector-state runs; Atari runs are not supported yet")
    sampler = WindowSampler(traj, cfg["data"]["context_length"], cfg["data"]["reward_scale"],
                            cfg["data"]["normalize_states"], seed=seed)
    batch = sampler.sample(4 * n)
    full = batch.mask.all(dim=1).nonzero()[:n, 0]  # windows that lie inside one episode
    return type(batch)(*(x[full] for x in batch))


def params(run_dir: Path, pre: int | str = 0, post: int | str = "last") -> dict[str, Any]:
    a = load_checkpoint(checkpoint_path(run_dir, pre))
    b = load_checkpoint(checkpoint_path(run_dir, post))
    change = parameter_change(strip_prefixes(a["model"]), strip_prefixes(b["model"]))
    return {"pre_step": a["step"], "post_step": b["step"], "parameters": change}


@torch.no_grad()
def _capture(model, batch, modules: dict[Any, torch.nn.Module], tokens: slice) -> dict[Any, torch.Tensor]:
    """Run ``model`` on ``batch`` once and return each module's output at ``tokens``:
    key → (B, len(tokens), h), float32."""
    captured: dict[Any, torch.Tensor] = {}

    def keep(key):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            # A copy of the slice: a view (or .float() of a float32 tensor) would keep the
            # layer's whole (B, 3K, ·) output alive: tens of GB for an 84M model's 120 layers.
            captured[key] = out[:, tokens].detach().float().clone()
        return hook

    hooks = [module.register_forward_hook(keep(key)) for key, module in modules.items()]
    try:
        model(batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    finally:
        for h in hooks:
            h.remove()
    return captured


def block_activations(model, batch) -> dict[str, torch.Tensor]:
    """Outputs of every block's sub-layers (the backbone's :meth:`~raydt.model.backbone.Backbone.sublayers`:
    Takagi's nine for GPT-2) and of the block, at the last time step's R, s and a tokens:
    name → (B, 3, h) (c_attn: 3h, c_fc and act: 4h wide)."""
    backbone = model.backbone
    modules = {}
    for i, block in enumerate(backbone.blocks):
        for name, module in backbone.sublayers(i).items():
            modules[f"block{i}.{name}"] = module
        modules[f"block{i}.output"] = block
    return _capture(model, batch, modules, slice(-3, None))  # R_K, s_K, a_K


def token_inputs(batch) -> torch.Tensor:
    """The raw value behind every token, zero-padded to one width: (B, 3K, max(obs, act, 1)),
    return-to-go (as scaled for the model), state (as normalised), action."""
    parts = (batch.returns_to_go, batch.states, batch.actions.float())  # (B, K, ·) each
    width = max(p.shape[-1] for p in parts)
    padded = [torch.nn.functional.pad(p.float(), (0, width - p.shape[-1])) for p in parts]
    b, k = batch.mask.shape
    return torch.stack(padded, dim=2).reshape(b, 3 * k, width)


def token_names(k: int) -> list[str]:
    """Names of the 3K tokens of a window: R0, s0, a0, R1, ..."""
    return [f"{kind}{i}" for i in range(k) for kind in "Rsa"]


def depth_blocks(n_blocks: int) -> dict[str, int]:
    """The shallow, middle and deep blocks (Takagi's three depths)."""
    return {"shallow": 0, "middle": n_blocks // 2, "deep": n_blocks - 1}


def mi(run_dir: Path, step: int | str = "last", windows: int = 4096, steps: int = 1000,
       chunk: int = 128, seed: int = 0, log=lambda _msg: None, representation: str = "mlp",
       preset: str = "raydt") -> dict[str, Any]:
    """Takagi's MINE estimates at one checkpoint, for the shallow, middle and deep blocks:
    I(X;T) = I(x_t; T_l(s_K)), how much of the input at token t reaches the last state
    token, and I(Y;T) = I(a_K; T_l(x_t)), how much of the action to predict token t's
    representation holds, for every token t before a_K.

    T_l is, as in Takagi's code, the MLP branch's output of block l (``h.l.mlp.dropout``,
    before the residual add) with ``representation="mlp"``; ``"residual"`` measures the
    block's output (the residual stream, which also carries the skip path: higher values).
    """
    from raydt.analysis.mine import MINE_PRESETS, mine_batched

    if preset not in MINE_PRESETS:
        raise ConfigError(f"--mine-preset {preset!r}: use one of {', '.join(MINE_PRESETS)}")
    if representation not in ("mlp", "residual"):
        raise ConfigError(f"--representation {representation!r}: use mlp (Takagi's) or residual")
    model, payload = load_model_at(run_dir, step)
    batch = fixed_windows(payload, windows, seed=seed)
    n, k = batch.mask.shape
    depths = depth_blocks(len(model.backbone.blocks))
    blocks, backbone = model.backbone.blocks, model.backbone
    if representation == "mlp" and any(backbone.mlp_branch(i) is None for i in depths.values()):
        raise ConfigError("--representation mlp: this backbone's blocks have no MLP branch; use residual")
    modules = {i: (backbone.mlp_branch(i) if representation == "mlp" else blocks[i])
               for i in sorted(set(depths.values()))}
    hidden = _capture(model, batch, modules, slice(None))
    raw = token_inputs(batch)  # (n, 3K, w)
    last_state, positions = 3 * k - 2, 3 * k - 1  # s_K's index; tokens 0..s_K
    target = raw[:, 3 * k - 1]  # (n, w): a_K

    pairs = []  # (x (n, w), y (n, h)) per estimate, in (depth, kind, position) order
    for block in depths.values():
        pairs += [(raw[:, t], hidden[block][:, last_state]) for t in range(positions)]  # I(X;T)
        pairs += [(target, hidden[block][:, t]) for t in range(positions)]  # I(Y;T)
    estimates = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        log(f"MINE: estimates {start + 1}-{start + len(part)} of {len(pairs)}")
        xs = torch.stack([x for x, _ in part])  # (E, n, w)
        ys = torch.stack([y for _, y in part])  # (E, n, h)
        estimates += mine_batched(xs, ys, steps=steps, seed=seed + start, **MINE_PRESETS[preset]).tolist()
    out: dict[str, Any] = {"step": payload["step"], "windows": n, "mine_steps": steps, "representation": representation, "mine_preset": preset,
                           "tokens": token_names(k)[:positions], "blocks": {}}
    for i, (depth, block) in enumerate(depths.items()):
        values = estimates[2 * i * positions:2 * (i + 1) * positions]
        out["blocks"][depth] = {"block": block, "I_XT": values[:positions], "I_YT": values[positions:]}
    return out


def trained_parameters(model, cfg: dict[str, Any]) -> dict[str, torch.nn.Parameter]:
    """The parameters the run's optimiser updated: ``model.freeze`` applied, and the token
    table only when λ2 co-training trained it (as the trainer decides)."""
    from raydt.model.backbone import freeze

    freeze(model.backbone, cfg["model"]["freeze"])
    co_trained = cfg["loss"]["lambda2"] > 0 and cfg["model"]["freeze"] == "none"
    model.backbone.token_embeddings.weight.requires_grad_(co_trained)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def per_sample_gradients(model, batch, params: dict[str, torch.Tensor], chunk: int = 16) -> dict[str, torch.Tensor]:
    """Gradient of the action loss of each window on its own (torch.func: vmap of grad):
    name → (n, *param.shape). Windows must be full (no padding): one mask serves all."""
    from torch.func import functional_call, grad, vmap

    from raydt.losses import action_loss

    model.backbone.use_eager_attention()  # SDPA has no batching rule under vmap
    frozen = {name: p.detach() for name, p in model.named_parameters() if name not in params}
    mask = batch.mask[:1]  # (1, K): all true; shared, so no data-dependent masking runs under vmap

    def loss_one(p, states, actions, rtg, timesteps):
        inputs = (states[None], actions[None], rtg[None], timesteps[None], mask)
        pred = functional_call(model, {**frozen, **p}, inputs)  # (1, K, act)
        return action_loss(pred, actions[None], mask)

    detached = {name: p.detach() for name, p in params.items()}
    return vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0), chunk_size=chunk)(
        detached, batch.states, batch.actions, batch.returns_to_go, batch.timesteps)


def grads(run_dir: Path, step: int | str = 0, windows: int = 64, seed: int = 0,
          protocol: str = "raydt") -> dict[str, Any]:
    """Takagi's gradient analysis at one checkpoint: per-sample gradient norms before and
    after clipping at the run's ``optim.grad_clip``, gradient confusion (minimum pairwise
    cosine), and each parameter's share of the squared norm of the batch gradient.

    ``protocol``: ``raydt`` takes every trained parameter's gradient, eval mode, before and
    after clipping; ``takagi`` follows his released code: one backward per window in train
    mode (dropout on), the whole gradient clipped at ``optim.grad_clip``, then only the
    transformer blocks' gradients kept (run it with ``--windows 50 --step 2500``)."""
    from raydt.analysis import pairwise_cosines

    if protocol not in ("raydt", "takagi"):
        raise ConfigError(f"--protocol {protocol!r}: use raydt or takagi")
    model, payload = load_model_at(run_dir, step)
    cfg = payload["config"]
    batch = fixed_windows(payload, windows, seed=seed)
    params = trained_parameters(model, cfg)
    if protocol == "takagi":
        per_sample = _takagi_gradients(model, batch, params, float(cfg["optim"]["grad_clip"]), seed)
    else:
        per_sample = per_sample_gradients(model, batch, params)
    flat = torch.cat([g.flatten(1) for g in per_sample.values()], dim=1).double()  # (n, P)
    norms = flat.norm(dim=1)  # (n,)
    clip = float(cfg["optim"]["grad_clip"])
    clipped = norms.clamp(max=clip) if clip > 0 else norms
    # The gradient a training step clips is the batch mean's; with full windows the batch
    # loss is the mean of the windows' losses, so it is the mean of the per-sample gradients.
    batch_grads = {name: g.double().mean(dim=0) for name, g in per_sample.items()}
    batch_sq = sum(float(g.square().sum()) for g in batch_grads.values())
    share = {name: float(g.square().sum()) / batch_sq if batch_sq > 0 else float("nan")
             for name, g in batch_grads.items()}
    cos = pairwise_cosines(flat)  # (n, n)
    off = ~torch.eye(len(flat), dtype=torch.bool)
    return {
        "step": payload["step"], "windows": len(flat), "grad_clip": clip, "parameters": flat.shape[1],
        "protocol": protocol,
        "loss": "action loss of each window (the λ terms are left out)",
        "confusion": float(cos[off].min()), "mean_cosine": float(cos[off].mean()),
        "norm": {"mean": float(norms.mean()), "median": float(norms.median()), "min": float(norms.min()),
                 "max": float(norms.max())},
        "clipped_norm_mean": float(clipped.mean()),
        "fraction_clipped": float((norms > clip).double().mean()) if clip > 0 else 0.0,
        "batch_norm": batch_sq ** 0.5, "batch_norm_clipped": min(batch_sq ** 0.5, clip) if clip > 0 else batch_sq ** 0.5,
        "share": dict(sorted(share.items(), key=lambda kv: -kv[1])),
        "per_sample_norms": norms.tolist(),
    }


def _takagi_gradients(model, batch, params: dict[str, torch.nn.Parameter], clip: float,
                      seed: int) -> dict[str, torch.Tensor]:
    """Per-window gradients as Takagi's code takes them (signal_propagation.py at 200abbe):
    train mode, one backward per window, all gradients clipped together, blocks' kept."""
    from raydt.losses import action_loss

    block_ids = {id(p) for p in model.backbone.blocks.parameters()}
    kept = {name: p for name, p in params.items() if id(p) in block_ids}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in kept}
    model.train()  # his model is never put in eval mode: dropout stays on
    torch.manual_seed(seed)
    for i in range(len(batch.mask)):
        one = [x[i:i + 1] for x in (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)]
        model.zero_grad(set_to_none=True)
        action_loss(model(*one), one[1], one[4]).backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        for name, p in kept.items():
            out[name].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    model.eval()
    return {name: torch.stack(gs) for name, gs in out.items()}  # name → (n, *shape)


def cka(run_dir: Path, pre: int | str = 0, post: int | str = "last", windows: int = 512) -> dict[str, Any]:
    model_a, payload_a = load_model_at(run_dir, pre)
    model_b, payload_b = load_model_at(run_dir, post)
    batch = fixed_windows(payload_b, windows)
    acts_a, acts_b = block_activations(model_a, batch), block_activations(model_b, batch)

    def table(debiased: bool) -> dict[str, dict[str, float]]:
        return {name: {tok: linear_cka(acts_a[name][:, j], acts_b[name][:, j], debiased=debiased)
                       for j, tok in enumerate(TOKENS)} for name in acts_a}

    # Every pre layer against every post layer at the state token: the diagonal is the
    # table above; off the diagonal, unrelated layers show the estimator's floor.
    names = list(acts_a)
    state = TOKENS.index("state")
    cross = {kind: cka_matrix([acts_a[n][:, state] for n in names], [acts_b[n][:, state] for n in names],
                              debiased=kind == "debiased").tolist() for kind in ("debiased", "biased")}
    # Layers of one network are never unrelated (the residual stream carries every earlier
    # layer), so the estimator's own null is measured directly: each layer against the post
    # model's same layer on a fixed shuffle of the windows, which decouples the two feature
    # sets by construction. Debiased CKA is about 0 there; the biased one shows its floor.
    shuffle = torch.randperm(len(batch.mask), generator=torch.Generator().manual_seed(0))
    null = {kind: {n: linear_cka(acts_a[n][:, state], acts_b[n][shuffle, state], debiased=kind == "debiased")
                   for n in names} for kind in ("debiased", "biased")}
    # Debiased, as Takagi's code measures (the biased estimator's width-dependent floor would
    # confound GPT-2 (768) with DT (128)); the biased values are kept beside for comparison.
    return {"pre_step": payload_a["step"], "post_step": payload_b["step"], "windows": len(batch.mask),
            "estimator": "debiased", "layers": table(debiased=True), "layers_biased": table(debiased=False),
            "cross_state_token": {"layers": names, **cross}, "null_state_token": null}


@torch.no_grad()
def attention_maps(model, batch) -> list[torch.Tensor]:
    """Attention weights of every block on ``batch``: a list of (B, H, 3K, 3K)."""
    tokens, token_mask = model.embed(batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    return model.backbone.attention_maps(tokens, token_mask)


def attention(run_dir: Path, steps: list[int | str], windows: int = 64, definition: str = "paper") -> dict[str, Any]:
    """Mean attention distance per block at each step and its gap to the first step.

    ``definition``: ``paper`` (ViT's, which Takagi's paper states: the model's own causal
    attention, Σ_j a_ij·|i − j| averaged over queries and heads) or ``takagi_code`` (what his
    released code computes: :func:`~raydt.analysis.attention_distance_single_head` on each
    block's c_attn queries and keys)."""
    if definition not in ("paper", "takagi_code"):
        raise ConfigError(f"--definition {definition!r}: use paper or takagi_code")
    results, maps = {}, {}
    batch = None
    for step in steps:
        model, payload = load_model_at(run_dir, step)
        batch = batch if batch is not None else fixed_windows(payload, windows)
        attn = attention_maps(model, batch)
        if definition == "paper":
            results[str(payload["step"])] = [float(attention_distance(a).mean()) for a in attn]
        else:
            results[str(payload["step"])] = _single_head_distances(model, batch)
        maps[str(payload["step"])] = [a.mean(dim=(0, 1)).numpy() for a in attn]  # (3K, 3K) each
    first = next(iter(results.values()))
    gaps = {step: [abs(d - d0) for d, d0 in zip(dists, first)] for step, dists in results.items()}
    return {"windows": int(len(batch.mask)), "definition": definition, "distance": results,
            "gap_to_first": gaps, "_maps": maps}


def _single_head_distances(model, batch) -> list[float]:
    """Takagi's code's distance per block, from the q and k slices of each block's c_attn."""
    blocks = model.backbone.blocks
    parts = [model.backbone.sublayers(i).get("attn.c_attn") for i in range(len(blocks))]
    if any(p is None for p in parts):
        raise ConfigError("--definition takagi_code needs GPT-2 blocks (attn.c_attn); use paper")
    qkv = _capture(model, batch, dict(enumerate(parts)), slice(None))
    out = []
    for i in range(len(blocks)):
        q, k, _ = qkv[i].chunk(3, dim=-1)  # 3 × (B, 3K, h)
        out.append(float(attention_distance_single_head(q, k).mean()))
    return out


def summary(what: str, result: dict[str, Any]) -> list[str]:
    """A short table of ``result`` for the terminal."""
    if what == "params":
        rows = sorted(result["parameters"].items(), key=lambda kv: -kv[1]["l2_distance"])[:25]
        return [f"step {result['pre_step']} → {result['post_step']}: parameter tensor, L2 distance, cosine similarity",
                *(f"{name:<48} {v['l2_distance']:10.4f} {v['cosine_similarity']:8.4f}" for name, v in rows)]
    if what == "cka":
        biased = result.get("layers_biased", {})
        cross = result.get("cross_state_token")
        floor = []
        if cross:
            off = [(i, j) for i in range(len(cross["layers"])) for j in range(len(cross["layers"])) if i != j]
            mean_abs = {k: sum(abs(cross[k][i][j]) for i, j in off) / max(len(off), 1) for k in ("debiased", "biased")}
            floor = [f"layer × layer at the state token, off the diagonal: mean |CKA| {mean_abs['debiased']:.3f} "
                     f"debiased, {mean_abs['biased']:.3f} biased (layers of one network share the residual stream)"]
        null = result.get("null_state_token")
        if null:
            mean_null = {k: sum(abs(v) for v in null[k].values()) / max(len(null[k]), 1) for k in ("debiased", "biased")}
            floor.append(f"estimator null (each layer vs the same layer on shuffled windows): mean |CKA| "
                         f"{mean_null['debiased']:.3f} debiased, {mean_null['biased']:.3f} biased")
        return [f"linear CKA (debiased; biased in brackets), step {result['pre_step']} vs {result['post_step']}, "
                f"{result['windows']} windows: layer, return / state / action token",
                *(f"{name:<24} " + "  ".join(f"{v[t]:6.3f} ({biased[name][t]:.3f})" if name in biased else f"{v[t]:6.3f}"
                                          for t in TOKENS) for name, v in result["layers"].items()), *floor]
    if what == "attention":
        first = next(iter(result["distance"]))
        return [f"mean attention distance per block ({result['windows']} windows); gap to step {first}",
                *(f"step {step:>8}: " + "  ".join(f"{d:.2f}" for d in dists) + "   gap " +
                  "  ".join(f"{g:.2f}" for g in result["gap_to_first"][step])
                  for step, dists in result["distance"].items())]
    if what == "mi":
        tokens = result["tokens"]
        lines = [f"MINE at step {result['step']}, {result['windows']} windows (nats): mean over the window's "
                 f"R / s / a tokens, and at the last step's R / s"]
        for depth, v in result["blocks"].items():
            for key in ("I_XT", "I_YT"):
                means = [np.mean([x for x, t in zip(v[key], tokens) if t[0] == kind]) for kind in "Rsa"]
                lines.append(f"{depth:<8} block {v['block']:<3} {MI_LABELS[key]}  " + "  ".join(f"{m:6.3f}" for m in means)
                             + f"   last {v[key][-2]:6.3f} {v[key][-1]:6.3f}")
        return lines
    share = list(result["share"].items())[:5]
    return [
        f"gradients at step {result['step']}, {result['windows']} windows, {result['parameters']:,} parameters",
        f"per-sample norm: mean {result['norm']['mean']:.4f}, median {result['norm']['median']:.4f}, "
        f"max {result['norm']['max']:.4f}; {100 * result['fraction_clipped']:.0f}% above the clip {result['grad_clip']}",
        f"batch gradient norm {result['batch_norm']:.4f} (clipped {result['batch_norm_clipped']:.4f})",
        f"gradient confusion (min pairwise cosine) {result['confusion']:.4f}; mean cosine {result['mean_cosine']:.4f}",
        "largest shares of the squared norm: " + ", ".join(f"{name} {v:.3f}" for name, v in share),
    ]




def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able numbers of a result: figure data (keys starting with _) left out, NaN as null."""
    from raydt.convergence import json_safe

    return json_safe({k: v for k, v in result.items() if not k.startswith("_")})


def save(run_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/analysis/<name>.json`` (keys starting with _ are figures' data, not saved)."""
    path = RunDir(run_dir).analysis_file(name, "json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(public(result), indent=1))
    return path


def _save(fig, run_dir: Path, name: str) -> Path:
    if fig.get_layout_engine() is None:  # a figure with a colour bar lays itself out
        fig.tight_layout()
    return save_figure(fig, RunDir(run_dir).analysis_file(name, "png"))


def plot_params(run_dir: Path, result: dict[str, Any]) -> Path:
    """L2 distance and cosine similarity of every parameter tensor, in model order (Takagi Fig. 3-4)."""
    plt = pyplot()
    names = list(result["parameters"])
    values = list(result["parameters"].values())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.0 + 0.14 * len(names)), sharey=True)
    rows = np.arange(len(names))[::-1]
    left.barh(rows, [v["l2_distance"] for v in values])
    left.set_xlabel(f"L2 distance, step {result['pre_step']} → {result['post_step']}")
    right.barh(rows, [v["cosine_similarity"] for v in values])
    right.set_xlabel("cosine similarity")
    left.set_yticks(rows, names, fontsize=6)
    return _save(fig, run_dir, "params")


def plot_cka(run_dir: Path, result: dict[str, Any]) -> Path:
    """CKA of every hooked layer for the R, s and a tokens, as a heat map (Takagi Fig. 1)."""
    plt = pyplot()
    layers = list(result["layers"])
    grid = np.array([[result["layers"][name][t] for t in TOKENS] for name in layers])  # (layers, 3)
    fig, ax = plt.subplots(figsize=(4.5, 1.0 + 0.22 * len(layers)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(TOKENS)), TOKENS)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_title(f"linear CKA ({result.get('estimator', 'biased')}), step {result['pre_step']} vs "
                 f"{result['post_step']}", fontsize=9)
    fig.colorbar(image, ax=ax)
    return _save(fig, run_dir, "cka")


def plot_grads(run_dir: Path, result: dict[str, Any]) -> Path:
    """Per-sample gradient norms with the clipping threshold (Takagi Fig. 6) and the largest
    parameter shares of the batch gradient (Fig. 7)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.hist(result["per_sample_norms"], bins=30)
    if result["grad_clip"] > 0:
        left.axvline(result["grad_clip"], color="k", linestyle="--", label=f"clip {result['grad_clip']}")
        left.legend(fontsize=8)
    left.set_xlabel("per-sample gradient norm")
    left.set_title(f"step {result['step']}: confusion {result['confusion']:.3f}", fontsize=9)
    top = list(result["share"].items())[:10]
    right.barh([name for name, _ in top][::-1], [v for _, v in top][::-1])
    right.set_xlabel("share of the squared batch-gradient norm")
    right.tick_params(axis="y", labelsize=7)
    return _save(fig, run_dir, "grads")


def plot_mi(run_dir: Path, result: dict[str, Any]) -> Path:
    """I(X;T) and I(Y;T) against the token's time step, R/s/a as triangle/circle/cross
    (Takagi Fig. 2), one row per depth."""
    plt = pyplot()
    depths = result["blocks"]
    tokens = result["tokens"]
    fig, axes = plt.subplots(len(depths), 2, figsize=(9, 2.8 * len(depths)), squeeze=False)
    for r, (depth, values) in enumerate(depths.items()):
        for c, key in enumerate(("I_XT", "I_YT")):
            ax = axes[r][c]
            for kind, marker in zip("Rsa", "^ox"):
                idx = [i for i, name in enumerate(tokens) if name[0] == kind]
                ax.plot([int(tokens[i][1:]) for i in idx], [values[key][i] for i in idx],
                        marker=marker, linestyle="none", label=kind)
            ax.set_title(f"{MI_LABELS[key]}, {depth} block {values['block']}", fontsize=9)
            ax.set_xlabel("time step in window")
            ax.set_ylabel("nats")
            ax.legend(fontsize=8)
    return _save(fig, run_dir, "mi")


def plot_attention(run_dir: Path, result: dict[str, Any]) -> Path:
    """Attention maps of the first, middle and last blocks at each step (Reid Fig. 2)."""
    return _save(attention_figure(result), run_dir, "attention")


TOKEN_KINDS = ("R", "s", "a")
"""The tokens of each step of a window, in order: return-to-go, state, action."""


def attention_figure(result: dict[str, Any]):
    """The figure of :func:`plot_attention`: query tokens down, key tokens across, each tick
    named R/s/a (return-to-go, state, action) with its step, one colour scale per figure.

    The first key takes most of the weight in many heads (an attention sink); a scale up to
    it would leave every other weight near black. The scale stops at the 99th percentile of
    the causal weights (on and below the diagonal) of the other keys; the first key's,
    above it, show at the top colour, and the colour bar says so."""
    from matplotlib.colors import Normalize

    plt = pyplot()
    maps = result["_maps"]
    steps = list(maps)
    n_blocks = len(next(iter(maps.values())))
    picks = sorted({0, n_blocks // 2, n_blocks - 1})
    panels = [np.asarray(maps[step][block]) for step in steps for block in picks]
    t = panels[0].shape[0]
    rows, cols = np.tril_indices(t)
    others = cols > 0  # every key but the first
    weights = np.concatenate([m[rows[others], cols[others]] for m in panels]) if t > 1 else panels[0].ravel()
    norm = Normalize(vmin=0.0, vmax=float(max(np.percentile(weights, 99), 1e-6)))
    names = [f"{TOKEN_KINDS[i % 3]}{i // 3 + 1}" for i in range(t)]
    every = max(1, t // 15)  # at most ~15 labelled ticks per axis
    fig, axes = plt.subplots(len(steps), len(picks), figsize=(3.6 * len(picks) + 1.0, 3.4 * len(steps)),
                             squeeze=False, constrained_layout=True)
    image = None
    for r, step in enumerate(steps):
        for c, block in enumerate(picks):
            ax = axes[r][c]
            image = ax.imshow(np.asarray(maps[step][block]), cmap="viridis", norm=norm, interpolation="nearest")
            ax.set_title(f"step {step}, block {block}", fontsize=9)
            ticks = list(range(0, t, every))
            ax.set_xticks(ticks, [names[i] for i in ticks], fontsize=6, rotation=90)
            ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=6)
            ax.set_xlabel("key token", fontsize=8)
            ax.set_ylabel("query token", fontsize=8)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, extend="max")
    bar.set_label("attention weight (scale: 99th percentile of keys after the first)", fontsize=8)
    fig.suptitle(f"attention, mean over heads and {result.get('windows', '?')} windows "
                 "(R return-to-go, s state, a action)", fontsize=10)
    return fig
