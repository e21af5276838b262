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

from raydt.analysis import attention_distance, linear_cka, parameter_change
from raydt.errors import RaydtError
from raydt.fsutil import atomic_write_text
from raydt.model.backbone import strip_prefixes
from raydt.train.checkpoint import LAST, kept_name, load_checkpoint

TOKENS = ("return", "state", "action")
"""The last time step's three tokens, in window order."""


def checkpoint_path(run_dir: Path, step: int | str) -> Path:
    """The kept checkpoint of ``step`` ("last" for the final one), or a clear error."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / (LAST if step == "last" else kept_name(int(step)))
    if not path.is_file():
        kept = sorted(int(p.stem.split("_")[1]) for p in folder.glob("step_*.pt")) if folder.is_dir() else []
        raise RaydtError(
            f"{path} not found; this run kept steps {kept or 'none'} and 'last'. Keep more with "
            "train.keep_checkpoints: [0, ...] (0 = before fine-tuning) and train again"
        )
    return path


def load_model_at(run_dir: Path, step: int | str):
    from raydt.model.build import rebuild_model
    from raydt.model.dt import ModelArgs

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
def block_activations(model, batch) -> dict[str, torch.Tensor]:
    """Outputs of every block's sub-layers (ln_1, attn, ln_2, mlp where present) and of the
    block, at the last time step's R, s and a tokens: name → (B, 3, h)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            captured[name] = out[:, -3:].detach().float()  # (B, 3, h): R_K, s_K, a_K
        return hook

    for i, block in enumerate(model.backbone.blocks):
        for child in ("ln_1", "attn", "ln_2", "mlp"):
            if hasattr(block, child):
                hooks.append(getattr(block, child).register_forward_hook(keep(f"block{i}.{child}")))
        hooks.append(block.register_forward_hook(keep(f"block{i}.output")))
    try:
        model(batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    finally:
        for h in hooks:
            h.remove()
    return captured


def cka(run_dir: Path, pre: int | str = 0, post: int | str = "last", windows: int = 512) -> dict[str, Any]:
    model_a, payload_a = load_model_at(run_dir, pre)
    model_b, payload_b = load_model_at(run_dir, post)
    batch = fixed_windows(payload_b, windows)
    acts_a, acts_b = block_activations(model_a, batch), block_activations(model_b, batch)
    layers = {name: {tok: linear_cka(acts_a[name][:, j], acts_b[name][:, j]) for j, tok in enumerate(TOKENS)}
              for name in acts_a}
    return {"pre_step": payload_a["step"], "post_step": payload_b["step"], "windows": len(batch.mask), "layers": layers}


@torch.no_grad()
def attention_maps(model, batch) -> list[torch.Tensor]:
    """Attention weights of every block on ``batch``: a list of (B, H, 3K, 3K)."""
    hf = model.backbone.hf
    hf.config._attn_implementation = "eager"  # SDPA does not return its weights
    tokens, token_mask = model.embed(batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    out = hf(inputs_embeds=tokens, attention_mask=token_mask.long(), output_attentions=True)
    return [a.float() for a in out.attentions]


def attention(run_dir: Path, steps: list[int | str], windows: int = 64) -> dict[str, Any]:
    """Mean attention distance per block at each step and its gap to the first step."""
    results, maps = {}, {}
    batch = None
    for step in steps:
        model, payload = load_model_at(run_dir, step)
        batch = batch if batch is not None else fixed_windows(payload, windows)
        attn = attention_maps(model, batch)
        results[str(payload["step"])] = [float(attention_distance(a).mean()) for a in attn]
        maps[str(payload["step"])] = [a.mean(dim=(0, 1)).numpy() for a in attn]  # (3K, 3K) each
    first = next(iter(results.values()))
    gaps = {step: [abs(d - d0) for d, d0 in zip(dists, first)] for step, dists in results.items()}
    return {"windows": int(len(batch.mask)), "distance": results, "gap_to_first": gaps, "_maps": maps}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able numbers of a result: figure data (keys starting with _) left out, NaN as null."""
    from raydt.convergence import json_safe

    return json_safe({k: v for k, v in result.items() if not k.startswith("_")})


def save(run_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/analysis/<name>.json`` (keys starting with _ are figures' data, not saved)."""
    folder = Path(run_dir) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(public(result), indent=1))
    return path


def plot_attention(run_dir: Path, result: dict[str, Any]) -> Path:
    """Attention maps of the first, middle and last blocks at each step (Reid Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = result["_maps"]
    steps = list(maps)
    n_blocks = len(next(iter(maps.values())))
    picks = sorted({0, n_blocks // 2, n_blocks - 1})
    fig, axes = plt.subplots(len(steps), len(picks), figsize=(3.2 * len(picks), 3.2 * len(steps)), squeeze=False)
    for r, step in enumerate(steps):
        for c, block in enumerate(picks):
            axes[r][c].imshow(np.asarray(maps[step][block]), cmap="viridis")
            axes[r][c].set_title(f"step {step}, block {block}", fontsize=9)
            axes[r][c].axis("off")
    fig.tight_layout()
    out = Path(run_dir) / "analysis" / "attention.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
