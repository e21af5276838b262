"""Causal transformer backbones, loaded in one place with a report of what was loaded.

A backbone is a Hugging Face ``GPT2Model`` driven through ``inputs_embeds``: either a fresh
one of a size preset, or a pre-trained one from the hub (``gpt2``) or a local directory.
The Decision Transformer supplies its own timestep embedding, so the backbone's
absolute-position table is switched off (zeroed and frozen): Chen et al.'s DT does the
same by removing it from its copy of GPT-2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from raydt.errors import ConfigError


@dataclass
class LoadReport:
    """What happened to each weight when a pre-trained backbone was loaded."""

    source: str
    """Hub id or directory the weights came from ('random' for a fresh init)."""
    loaded: list[str] = field(default_factory=list)
    """Backbone tensors whose values came from the checkpoint."""
    new: list[str] = field(default_factory=list)
    """Backbone tensors the checkpoint lacked (freshly initialised)."""
    ignored: list[str] = field(default_factory=list)
    """Checkpoint tensors the backbone has no place for."""
    disabled: list[str] = field(default_factory=list)
    """Loaded tensors raydt switches off (the absolute-position table)."""

    def summary(self) -> str:
        return (
            f"backbone {self.source}: {len(self.loaded)} tensors loaded, {len(self.new)} new, "
            f"{len(self.ignored)} ignored, {len(self.disabled)} disabled"
            + (f"; new: {', '.join(self.new[:8])}" if self.new else "")
            + (f"; ignored: {', '.join(self.ignored[:8])}" if self.ignored else "")
        )


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrappers' prefixes: DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.``."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key.replace("._orig_mod.", ".").replace(".module.", ".")] = value
    return out


def random_gpt2(n_embd: int, n_head: int, n_layer: int, dropout: float, activation: str,
                n_positions: int = 1024):
    """A freshly initialised GPT-2 of the given shape (no token vocabulary to speak of)."""
    from transformers import GPT2Config, GPT2Model

    if n_embd % n_head:
        raise ConfigError(f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}")
    config = GPT2Config(
        n_embd=n_embd, n_head=n_head, n_layer=n_layer, n_inner=4 * n_embd,
        n_positions=n_positions, vocab_size=1, bos_token_id=0, eos_token_id=0,
        activation_function=activation,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    return GPT2Model._from_config(config, attn_implementation="sdpa")


def pretrained_gpt2(name_or_path: str, dropout: float):
    """Load a pre-trained GPT-2 (hub id or directory) and report its weights."""
    from transformers import GPT2Model

    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(
            f"model.backbone={name_or_path!r}: {local} has no config.json; give a directory "
            "written by save_pretrained or a hub id such as 'gpt2'"
        )
    try:
        model, info = GPT2Model.from_pretrained(
            str(local) if local.exists() else name_or_path,
            output_loading_info=True,
            attn_implementation="sdpa",
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        )
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("RAYDT_OFFLINE")
        raise ConfigError(
            f"model.backbone={name_or_path!r} could not be loaded ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); give a local directory written by save_pretrained"
            + (" (downloads are off: HF_HUB_OFFLINE/RAYDT_OFFLINE)" if offline else "")
        ) from None
    names = [n for n, _ in model.named_parameters()]
    missing = set(info.get("missing_keys", []))
    report = LoadReport(
        source=name_or_path,
        loaded=[n for n in names if n not in missing],
        new=sorted(missing),
        ignored=sorted(info.get("unexpected_keys", [])),
    )
    return model, report


def disable_position_table(backbone: nn.Module, report: LoadReport) -> None:
    """Zero and freeze GPT-2's absolute positions: DT's timestep embedding replaces them."""
    wpe = backbone.wpe
    with torch.no_grad():
        wpe.weight.zero_()
    wpe.weight.requires_grad_(False)
    report.disabled.append("wpe.weight")


def build_backbone(size_dims: tuple[int, int, int], backbone: str, dropout: float,
                   activation: str, n_tokens: int) -> tuple[nn.Module, LoadReport]:
    """The backbone a model config asks for (attending over ``n_tokens``), with its load report."""
    if backbone == "random":
        model = random_gpt2(*size_dims, dropout=dropout, activation=activation,
                            n_positions=max(1024, n_tokens))
        report = LoadReport("random", new=[n for n, _ in model.named_parameters()])
    else:
        model, report = pretrained_gpt2(backbone, dropout)
        if model.config.n_positions < n_tokens:
            raise ConfigError(
                f"model.backbone={backbone!r} attends over at most {model.config.n_positions} "
                f"tokens, but a context of {n_tokens // 3} steps needs {n_tokens}; "
                "lower data.context_length"
            )
    disable_position_table(model, report)
    # The token table serves text only (λ2 co-training); DT feeds inputs_embeds.
    model.wte.weight.requires_grad_(False)
    return model, report
