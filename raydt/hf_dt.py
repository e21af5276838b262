"""Hugging Face interop: raydt runs as transformers' ``DecisionTransformerModel`` and back.

transformers' class is the original DT (Chen et al.) over its own GPT-2: linear return,
state and action embeddings plus a timestep table, LN(token + timestep), GPT-2 blocks whose
position table is added at position 0 for every token (``position_ids`` are all zeros, a
constant bias), and ``tanh(Linear)`` on each state token's hidden state for the action. A
raydt run with a GPT-2 backbone of any size, ``ln_order: time_then_ln`` and the untied
``linear`` action head is the same function; export writes it with the position row zero,
import folds HF's row 0 into raydt's (frozen) position table.

What HF's config has no field for (state normalisation, reward scale, environment, target
returns, context length) travels in ``raydt_eval.json`` beside the weights.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydt.errors import ConfigError, RaydtError
from raydt.model.dt import DecisionTransformer, ModelArgs

SIDECAR = "raydt_eval.json"
"""Beside an exported model: what evaluating it needs that HF's config does not hold."""
SCHEME = "hf-dt:"
"""``hf-dt:ORG/NAME`` or ``hf-dt:/path``: a DecisionTransformerModel as a backbone or for eval."""
DEFAULT_CONTEXT = 20
"""Window length assumed for an imported model without a sidecar (the original DT's K)."""


def expressible(args: ModelArgs) -> None:
    """Refuse, naming the setting, a model that DecisionTransformerModel cannot express."""
    reasons = []
    if args.backbone_kind != "gpt2":
        reasons.append(f"model.backbone is a {args.backbone_kind} model (DecisionTransformerModel is GPT-2)")
    if args.discrete_actions or args.frame_stack:
        reasons.append("the run is an Atari run (image states, discrete actions)")
    if args.ln_order != "time_then_ln":
        reasons.append(f"model.ln_order={args.ln_order} (HF normalises token + timestep: time_then_ln)")
    if args.action_head != "linear":
        reasons.append(f"model.action_head={args.action_head} (HF's head is its own Linear + tanh: linear)")
    if args.time_embedding != "per_step":
        reasons.append(f"model.time_embedding={args.time_embedding} (HF: per_step)")
    if args.embed_tanh or not args.embed_ln:
        reasons.append("model.embed_tanh / model.embed_ln differ from the original DT's (false / true)")
    if reasons:
        raise ConfigError("cannot export as a DecisionTransformerModel: " + "; ".join(reasons))


def to_hf(model: DecisionTransformer):
    """The ``DecisionTransformerModel`` computing the same actions as ``model``."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    args = model.args
    expressible(args)
    gpt2 = args.backbone_config
    config = DecisionTransformerConfig(
        state_dim=args.obs_dim, act_dim=args.act_dim, hidden_size=args.n_embd, max_ep_len=args.max_timestep,
        action_tanh=True, vocab_size=1, n_positions=max(int(gpt2.get("n_positions", 1024)), 3 * args.context_length),
        n_layer=gpt2["n_layer"], n_head=gpt2["n_head"], n_inner=gpt2.get("n_inner"),
        activation_function=gpt2.get("activation_function", "relu"),
        resid_pdrop=gpt2.get("resid_pdrop", 0.1), embd_pdrop=gpt2.get("embd_pdrop", 0.1),
        attn_pdrop=gpt2.get("attn_pdrop", 0.1), layer_norm_epsilon=gpt2.get("layer_norm_epsilon", 1e-5),
    )
    hf = DecisionTransformerModel(config)
    state = hf.state_dict()
    ours = model.state_dict()
    for name, value in ours.items():
        if name.startswith("backbone.hf.h.") or name.startswith("backbone.hf.ln_f."):
            state["encoder." + name[len("backbone.hf."):]] = value
        elif name.startswith(("embed_", "predict_action.")):
            state[name] = value
    state["encoder.wpe.weight"] = torch.zeros_like(state["encoder.wpe.weight"])  # raydt has no positions
    hf.load_state_dict(state)
    return hf.eval()


def is_hf_dt(source: str) -> bool:
    """Whether ``source`` names a DecisionTransformerModel (``hf-dt:`` or a directory whose
    config says so)."""
    if source.startswith(SCHEME):
        return True
    config = Path(source).expanduser() / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("model_type") == "decision_transformer"
        except (OSError, json.JSONDecodeError):
            return False
    return False


def _location(source: str) -> str:
    source = source[len(SCHEME):] if source.startswith(SCHEME) else source
    local = Path(source).expanduser()
    return str(local) if local.exists() else source


def read_sidecar(source: str) -> dict[str, Any] | None:
    """The ``raydt_eval.json`` beside a model (a directory or a hub repository), or None."""
    location = _location(source)
    path = Path(location) / SIDECAR
    if path.is_file():
        return json.loads(path.read_text())
    if Path(location).exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(location, SIDECAR)).read_text())
    except Exception:  # not published with one: the caller says where statistics came from
        return None


def from_hf(source: str, context_length: int | None = None, max_timestep: int | None = None,
            dropout: Any = None) -> tuple[DecisionTransformer, dict[str, Any] | None]:
    """A raydt model computing what the DecisionTransformerModel at ``source`` computes, and
    its sidecar (None when it has none). ``context_length``: the window (default: the
    sidecar's, else 20); ``max_timestep``: the timestep table size (default: max_ep_len)."""
    from transformers import DecisionTransformerModel, GPT2Config

    location = _location(source)
    try:
        hf = DecisionTransformerModel.from_pretrained(location).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: not a loadable DecisionTransformerModel ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0]})") from None
    config = hf.config
    if not getattr(config, "action_tanh", True):
        raise ConfigError(f"{source}: action_tanh=false; raydt's continuous action head is tanh(Linear)")
    sidecar = read_sidecar(source)
    k = int(context_length or (sidecar or {}).get("context_length") or DEFAULT_CONTEXT)
    gpt2 = GPT2Config(
        n_embd=config.hidden_size, n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
        activation_function=config.activation_function, resid_pdrop=config.resid_pdrop,
        embd_pdrop=config.embd_pdrop, attn_pdrop=config.attn_pdrop, layer_norm_epsilon=config.layer_norm_epsilon,
        n_positions=config.n_positions, vocab_size=1,
    )
    if dropout is not None:  # fine-tuning: the run's dropout rates, not the ones it was trained with
        from raydt.model.backbone import Dropouts

        rates = Dropouts.of(dropout)
        gpt2.resid_pdrop, gpt2.attn_pdrop, gpt2.embd_pdrop = rates.resid, rates.attn, rates.embd
    args = ModelArgs(obs_dim=config.state_dim, act_dim=config.act_dim, n_embd=config.hidden_size,
                     context_length=k, max_timestep=int(max_timestep or config.max_ep_len),
                     backbone_source=f"{SCHEME}{location}" if not source.startswith(SCHEME) else source,
                     backbone_config=gpt2.to_dict(), backbone_kind="gpt2")
    from raydt.model.dt import rebuild_model

    model = rebuild_model(args)
    load_hf_weights(model, hf)
    return model.eval(), sidecar


def load_hf_weights(model: DecisionTransformer, hf) -> None:
    """Copy a DecisionTransformerModel's weights into a raydt model of the same shape."""
    theirs = hf.state_dict()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("backbone.hf.h.") or name.startswith("backbone.hf.ln_f."):
                key = "encoder." + name[len("backbone.hf."):]
            elif name.startswith(("embed_", "predict_action.")):
                key = name
            else:
                continue
            if name == "embed_timestep.weight" and param.shape[0] != theirs[key].shape[0]:
                from raydt.model.dt import extend_table

                param.copy_(extend_table(theirs[key], param.shape[0]))
                continue
            if theirs[key].shape != param.shape:
                raise ConfigError(f"{name}: the DecisionTransformerModel has shape {tuple(theirs[key].shape)}, "
                                  f"this run needs {tuple(param.shape)} (state or action size differ)")
            param.copy_(theirs[key])
        # HF adds its position row 0 to every token (position_ids are zeros): a constant
        # bias, which raydt's own (frozen, otherwise zero) position table carries instead.
        wpe = model.backbone.hf.wpe.weight
        wpe.copy_(theirs["encoder.wpe.weight"][0].expand_as(wpe))


EXPORT_FILES = re.compile(r"(generation_)?config\.json|model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?|"
                          rf"{re.escape(SIDECAR)}|README\.md")
"""What an export holds (transformers' files, the sidecar and the card): a folder of only
these, sidecar included, is an earlier export, which a new one may replace."""


def is_export(folder: Path) -> bool:
    names = [p.name for p in Path(folder).iterdir()]
    return SIDECAR in names and all(EXPORT_FILES.fullmatch(n) for n in names)


def check_out(out: Path, run_dir: Path, overwrite: bool = False) -> None:
    """Refuse, before anything is built, an ``--out`` that an export must not replace: a file,
    the folder holding the run, or a user's folder (not empty, not an earlier export)
    unless ``overwrite``."""
    from raydt.fsutil import writable_dir

    if out.exists() and not out.is_dir():
        raise RaydtError(f"--out {out} is a file; give a directory (it is made if missing)")
    target = out.resolve()
    # Where the export is staged (raydt.fsutil.atomic_dir): beside out, or in it if it is a mount point.
    writable_dir(target if os.path.ismount(target) else target.parent, f"--out {out}: the folder")
    if not out.is_dir() or not any(out.iterdir()) or is_export(out):
        return
    if Path(run_dir).resolve().is_relative_to(out.resolve()):
        raise RaydtError(f"--out {out} holds the run being exported ({run_dir}); give another folder")
    if not overwrite:
        raise RaydtError(f"--out {out} is not empty and is not an earlier raydt export; give a new or empty "
                         "folder, or add --overwrite to replace it and everything in it")


def export_run(run_dir: Path, out: Path, command: str | None = None, log: Callable[[str], None] = print,
               overwrite: bool = False) -> Path:
    """Write ``run_dir``'s last checkpoint as a DecisionTransformerModel directory: weights in
    safetensors, ``raydt_eval.json`` and a model card (README.md). The export is written
    beside ``out`` and takes its place once complete; ``out`` may be new, empty or an
    earlier export, or anything with ``overwrite`` (:func:`check_out`)."""
    from raydt.fsutil import atomic_dir
    from raydt.model.dt import rebuild_model
    from raydt.rundir import RunDir
    from raydt.train.checkpoint import load_checkpoint

    payload = load_checkpoint(Path(run_dir))
    model = rebuild_model(ModelArgs(**payload["model_args"]))
    model.load_state_dict(payload["model"])
    expressible(model.args)
    out = Path(out).expanduser()
    check_out(out, Path(run_dir), overwrite)
    hf = to_hf(model)
    sidecar = sidecar_of(payload)
    scores = _scores(RunDir(run_dir))
    command = command or shlex.join(["raydt", "export", str(run_dir), "--format", "hf", "--out", str(out)])
    with atomic_dir(out) as staged:
        hf.save_pretrained(staged)
        (staged / SIDECAR).write_text(json.dumps(sidecar, indent=1))
        (staged / "README.md").write_text(model_card(payload, sidecar, scores, command))
    log(f"exported step {payload['step']} of {run_dir} to {out} (DecisionTransformerModel, safetensors)")
    return out


def sidecar_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    cfg = payload.get("config") or {}
    return {
        "env_id": payload["env_id"], "target_returns": [float(t) for t in payload["target_returns"]],
        "state_mean": np.asarray(payload["state_mean"]).tolist(), "state_std": np.asarray(payload["state_std"]).tolist(),
        "reward_scale": float(payload["reward_scale"]), "context_length": int(payload["model_args"]["context_length"]),
        "max_steps": (cfg.get("eval") or {}).get("max_steps"), "dataset": (cfg.get("data") or {}).get("dataset"),
        "seed": (cfg.get("train") or {}).get("seed"), "step": int(payload["step"]),
    }


def _scores(run: Any) -> dict[str, float]:
    rows = [r for r in run.read_metrics() if "eval/normalized_score" in r or "eval/return_mean" in r]
    if not rows:
        return {}
    last = rows[-1]
    keys = [k for k in last if k.startswith("eval/") and ("normalized_score" in k or "return_mean" in k)]
    return {k: float(last[k]) for k in sorted(keys)} | {"step": int(last["step"])}


def model_card(payload: Mapping[str, Any], sidecar: Mapping[str, Any], scores: Mapping[str, float],
               command: str) -> str:
    import yaml

    args = payload["model_args"]
    gpt2 = args["backbone_config"]
    score_rows = "\n".join(f"| `{k}` | {v:.2f} |" for k, v in scores.items() if k != "step") or "| - | - |"
    return f"""---
library_name: transformers
tags: [decision-transformer, offline-rl, raydt]
---

# Decision Transformer for {sidecar['env_id']}

A `DecisionTransformerModel` (transformers) fine-tuned with raydt on `{sidecar['dataset']}`
(seed {sidecar['seed']}, step {sidecar['step']}): {gpt2['n_layer']} layers, {gpt2['n_head']} heads,
{args['n_embd']} dimensions, context {sidecar['context_length']}, initialised from
`{args['backbone_source']}`.

## Evaluation at step {scores.get('step', sidecar['step'])}

| metric | value |
|---|---|
{score_rows}

Normalized scores are D4RL's scale (0 = random, 100 = expert). `raydt_eval.json` holds what
evaluating it needs: state mean and std (states are normalised before embedding), the
reward scale applied to returns-to-go, the environment, the target returns and the window.

```bash
raydt eval hf-dt:<this repository or folder> --episodes 10
```

## Made with

```bash
{command}
```

<details><summary>Resolved spec</summary>

```yaml
{yaml.safe_dump(payload.get('config') or {}, sort_keys=False).rstrip()}
```
</details>
"""


def check_push(repo_id: str) -> None:
    """Fail with one line, before an export writes anything, when uploading cannot work:
    offline, a malformed repository id, or no usable token."""
    from raydt.offline import is_offline

    if is_offline():
        raise RaydtError(f"--push-to-hub {repo_id}: uploads are off (RAYDT_OFFLINE); unset it or export without "
                         "--push-to-hub and upload the folder later")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise RaydtError(f"--push-to-hub {repo_id!r}: give ORG/NAME")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    except Exception as exc:  # no token, or no network: say which, in one line
        raise RaydtError(f"--push-to-hub {repo_id}: the hub cannot be reached as a logged-in user "
                         f"({exc.__class__.__name__}); set HF_TOKEN or run `hf auth login`") from None


def push(out: Path, repo_id: str) -> str:
    """Upload an exported folder to the hub (token from HF_TOKEN or `hf auth login`; raydt
    never writes it anywhere)."""
    from raydt.offline import is_offline

    if is_offline():
        raise RaydtError(f"--push-to-hub {repo_id}: downloads and uploads are off (RAYDT_OFFLINE); unset it")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo_id)
    return f"https://huggingface.co/{repo_id}"
